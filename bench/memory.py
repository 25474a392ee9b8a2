"""Peak memory of `convopt optimize`, as a multiple of the model's size.

Each configuration runs in a fresh Python process that imports everything convopt needs (numpy, onnx,
onnxruntime, the CLI), records its resident-set high-water mark (the fixed cost of the libraries), then runs
`convopt optimize` in-process and records the high-water mark again. Reported per configuration:

  peak     the process's peak RSS (VmHWM / ru_maxrss)
  base     peak RSS after the imports, before the model is opened
  work     peak - base: what optimizing this model cost
  ratios   work / model size and peak / model size

Usage:  python bench/memory.py [MODEL.onnx] [--json] [--only CONFIG-PREFIX] [--latency-cache FILE] [--fixed]
        (default: the largest model in ../shared/models beside the repo)

``--fixed`` measures the part of a run that does not grow with the model: each configuration run on a
stand-in of negligible size (two small Convs, 8 channels) that takes the same inputs as MODEL, with data of
the same shapes: the libraries' pages touched, ORT's runtime, reading and splitting the data.

``--latency-cache FILE`` gives auto mode that latency cache (convopt's ``--latency-cache``). Auto's search
follows its timings, so its peak moves by about ±10 MiB from run to run; with a cache a first run filled, every
later run (of any commit that keys the cache alike) prices the candidates alike, takes the same path, and its
peak is the code's alone: for comparing two commits. The windows are then not timed, so the fitting phase
holds no window sessions: a cached figure is not the headline figure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"

CONFIGS: dict[str, list[str]] = {
    "no-eval": ["--no-eval"],
    "no-eval, full rank": ["--no-eval", "--full-rank"],
    "uniform (random data, 8 + 8 samples)": ["--warmup", "2", "--repeats", "10"],
    "uniform, all four passes": ["--warmup", "2", "--repeats", "10",
                                 "--passes", "bottleneck,split5x5,factorize,depthwise"],
    "auto (16 calibration + 8 report samples)": ["--warmup", "2", "--repeats", "10", "--threads", "2",
                                                 "--calib", "{calib}", "--data", "{data}"],
}

DRIVER = r"""
import json, resource, sys
def hwm():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import numpy, onnx, onnxruntime  # noqa: F401  the fixed cost
import convopt.cli, convopt.api, convopt.auto, convopt.measure.evaluator  # noqa: F401
base = hwm()
code = 0
try:
    code = convopt.cli.app(sys.argv[1:], standalone_mode=False) or 0
except SystemExit as e:
    code = e.code or 0
print(json.dumps({"base": base, "peak": hwm(), "code": code}))
"""


def _random_npz(model: Path, folder: Path, name: str, n: int, seed: int) -> Path:
    """Random inputs of the model's shapes (memory does not depend on the values)."""
    import numpy as np
    import onnx

    from convopt.measure.data import random_eval_data, resolve_input_shapes

    m = onnx.load(str(model), load_external_data=False)
    d = random_eval_data(m, resolve_input_shapes(m, None), seed=seed, samples=n)
    path = folder / f"{name}.npz"
    np.savez(path, **d.inputs)
    return path


def measure(model: Path, extra: list[str], cache: Path | None = None) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as d:
        if any("{calib}" in a for a in extra):
            files = {"calib": _random_npz(model, Path(d), "calib", 16, 0),
                     "data": _random_npz(model, Path(d), "data", 8, 1)}
            extra = [a.format(**{k: str(v) for k, v in files.items()}) for a in extra]
            extra += [] if cache is None else ["--latency-cache", str(cache)]
        args = ["optimize", str(model), "-o", str(Path(d) / "out.onnx"), "-q", *extra]
        r = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, cwd=d,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    out = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
    if r.returncode != 0 or out.get("code"):
        raise SystemExit(f"measurement failed ({r.returncode or out.get('code')}): {r.stderr.strip()[-2000:]}")
    return out


def standin(model: Path, folder: Path) -> Path:
    """A model of negligible size with MODEL's (single, image-like) input: Conv 3×3 stride 2 to 8 channels,
    Relu, Conv 3×3, global average pool, flatten."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from convopt.measure.data import resolve_input_shapes

    m = onnx.load(str(model), load_external_data=False)
    shapes = resolve_input_shapes(m, None)
    if len(shapes) != 1:
        raise SystemExit(f"--fixed needs a model of one input, {model.name} has {len(shapes)}")
    (name, shape), = shapes.items()
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((8, shape[1], 3, 3)) * 0.2).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", [name, "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["d"]), helper.make_node("Flatten", ["d"], ["out"])]
    graph = helper.make_graph(nodes, "standin", [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [shape[0], 8])], [w1, w2])
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out.ir_version = 8
    path = folder / f"standin-{model.name}"
    onnx.save(out, str(path))
    return path


def largest_model() -> Path:
    models = sorted(SHARED_MODELS.glob("*.onnx"), key=lambda p: p.stat().st_size)
    if not models:
        raise SystemExit(f"no models in {SHARED_MODELS}; pass a model path")
    return models[-1]


def main() -> None:
    argv = [a for a in sys.argv[1:] if a != "--json"]
    only = argv[argv.index("--only") + 1] if "--only" in argv else ""
    cache = Path(argv[argv.index("--latency-cache") + 1]).resolve() if "--latency-cache" in argv else None
    for flag in ("--only", "--latency-cache"):
        argv = [a for i, a in enumerate(argv) if a != flag and (i == 0 or argv[i - 1] != flag)]
    fixed = "--fixed" in argv
    argv = [a for a in argv if a != "--fixed"]
    model = Path(argv[0]).resolve() if argv else largest_model()  # the runs start in a temporary folder
    original = model
    if fixed:
        keep = tempfile.TemporaryDirectory()
        model = standin(model, Path(keep.name))
    size = model.stat().st_size
    rows = []
    for name, extra in CONFIGS.items():
        if not name.startswith(only):
            continue
        m = measure(model, extra, cache)
        work = m["peak"] - m["base"]
        rows.append({"config": name, "model_bytes": size, "base_bytes": m["base"], "peak_bytes": m["peak"],
                     "work_bytes": work, "work_ratio": round(work / size, 2), "peak_ratio": round(m["peak"] / size, 2),
                     "exit_code": m["code"]})
    if "--json" in sys.argv:
        print(json.dumps({"model": str(model), **({"standin_of": str(original)} if fixed else {}), "results": rows},
                         indent=2))
        return
    mb = 1 / 2**20
    print(f"{model.name}: {size * mb:.1f} MiB" + (f" (stand-in of {original.name})" if fixed else ""))
    print(f"{'config':32s} {'base MiB':>9s} {'peak MiB':>9s} {'work MiB':>9s} {'work/model':>11s} {'peak/model':>11s}")
    for r in rows:
        print(f"{r['config']:32s} {r['base_bytes'] * mb:9.1f} {r['peak_bytes'] * mb:9.1f} {r['work_bytes'] * mb:9.1f} "
              f"{r['work_ratio']:10.1f}x {r['peak_ratio']:10.1f}x")


if __name__ == "__main__":
    main()
