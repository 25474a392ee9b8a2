"""More speed per point of accuracy: auto mode on real trained models (and seed networks), against the previous
version of convopt in the same run.

For every model: `convopt optimize` in auto mode tuned at 1 thread and at 2 threads (each in its own process:
its wall time and peak memory are recorded), the previous version's auto mode on the same data (a git
worktree of ``--previous``, run with the same command), then the original and all optimized models timed
interleaved in one run at 1 and at 2 threads. Accuracy: each new model's report figure (measured once on its
report split, never used to decide) with its 95 % interval, and every model measured on that same split.

    python bench/speed.py                                # every case (an hour or more on 2 cores)
    python bench/speed.py squeezenet vgg-digits --previous c5f8f3d
    python bench/speed.py squeezenet-int8                # factorization + INT8 against INT8 alone
    python bench/speed.py --render                       # rewrite speed.md from speed.json

The ``-int8`` cases run `convopt optimize --quantize int8` at 1 and 2 threads and keep convopt's own
four-model table (original / optimized × FP32 / INT8, timed interleaved in one run). Each invocation merges
its cases into bench/results/speed.json (other cases stay) and rewrites bench/results/speed.md with every
command that made it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

DRIVER = r"""
import json, sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
import numpy, onnx, onnxruntime  # noqa: F401
import convopt.cli
base, t0 = hwm(), time.time()
try:
    code = convopt.cli.app(sys.argv[1:], standalone_mode=False) or 0
except SystemExit as e:
    code = e.code or 0
print(json.dumps({"base_mib": base, "peak_mib": hwm(), "seconds": round(time.time() - t0, 1), "code": code}))
"""


@dataclass
class Case:
    name: str
    model: Path
    data: list[str]  # the data options, as given to `convopt optimize`
    budget: list[str]
    note: str
    prev_data: list[str] = field(default_factory=list)  # the previous version's data options (default: data)
    int8: bool = False  # deploy INT8: convopt's own four-model precision table (original/optimized x FP32/INT8)


def _npz(tmp: Path, name: str, **arrays: np.ndarray) -> Path:
    p = tmp / f"{name}.npz"
    np.savez(p, **arrays)
    return p


def cases(tmp: Path) -> dict[str, Case]:
    from convopt.models.example import example_data_path, example_model_path
    from vgg_digits import EVAL_PATH, MODEL_PATH

    images = SHARED / "data" / "imagenet-sample"
    out = {
        "squeezenet": Case("squeezenet", SHARED / "models" / "squeezenet1.1.onnx",
                           ["--data", str(images), "--preprocess", "caffe", "--labels", str(images / "labels.csv")],
                           ["--max-accuracy-drop", "2"], "1000 labelled ImageNet-sample images"),
        "vgg-digits": Case("vgg-digits", MODEL_PATH, ["--data", str(EVAL_PATH)], ["--max-accuracy-drop", "2"],
                           "trained VGG-style stack, 600 held-out digits"),
        "example": Case("example", example_model_path(), ["--data", str(example_data_path())],
                        ["--max-accuracy-drop", "3"], "the built-in example, 360 held-out digits"),
        "mnist": Case("mnist", SHARED / "models" / "mnist-cntk.onnx", ["--data", str(SHARED / "data" / "digits28.npz")],
                      ["--max-accuracy-drop", "1"], "mnist-cntk on 1797 labelled digits"),
    }
    det = _det_data(tmp)
    out["ddddocr-det"] = Case("ddddocr-det", SHARED / "models" / "ddddocr-det.onnx",
                              ["--calib", str(det[0]), "--data", str(det[1])], ["--max-rel-error", "0.05"],
                              "YOLOX detector, 48 letterboxed photos to fit and select, 24 to report",
                              ["--calib", str(det[0]), "--data", str(det[1])])
    for seed_model in ("resnet50", "vgg16"):
        path = tmp / f"{seed_model}.onnx"
        subprocess.run([sys.executable, "-m", "convopt.cli", "models", "export", seed_model, "-o", str(path),
                        "--overwrite"], check=True, capture_output=True, cwd=ROOT)
        out[seed_model] = Case(seed_model, path, ["--data", str(_random_npz(tmp, path, 48))],
                               ["--max-rel-error", "0.05"], f"{seed_model} seed network, random weights, 48 random inputs")
    for name in ("squeezenet", "ddddocr-det"):
        c = out[name]
        out[f"{name}-int8"] = Case(f"{name}-int8", c.model, c.data, c.budget, c.note + ", deployed as INT8",
                                   int8=True)
    return out


def _random_npz(tmp: Path, model_path: Path, n: int) -> Path:
    from convopt.measure.data import random_eval_data, resolve_input_shapes

    model = onnx.load(str(model_path))
    d = random_eval_data(model, resolve_input_shapes(model, None), seed=0, samples=n)
    return _npz(tmp, model_path.stem + "_random", **d.inputs)


def _det_data(tmp: Path) -> tuple[Path, Path]:
    from PIL import Image

    files = sorted((SHARED / "data" / "imagenet-sample").glob("*.jpg"))[:72]
    x = np.stack([_letterbox(Image.open(p).convert("RGB"), 416) for p in files])
    return _npz(tmp, "det_calib", images=x[:48]), _npz(tmp, "det_report", images=x[48:])


def _letterbox(im, size: int) -> np.ndarray:
    from PIL import Image

    s = size / max(im.size)
    im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    a = np.asarray(im)
    canvas[:a.shape[0], :a.shape[1]] = a
    return canvas[..., ::-1].transpose(2, 0, 1).astype(np.float32)


def optimize(case: Case, out: Path, threads: int, tmp: Path, pythonpath: Path, data: list[str]) -> dict:
    report = out.with_suffix(".json")
    args = ["optimize", str(case.model), "-o", str(out), *data, *case.budget, "--threads", str(threads), "-q",
            "--report", str(report)]
    if case.int8:
        args += ["--quantize", "int8", "--repeats", "100"]
    r = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, cwd=tmp,
                       env={**os.environ, "PYTHONPATH": str(pythonpath)})
    if r.returncode != 0 or not r.stdout.strip():
        raise SystemExit(f"{case.name}: {pythonpath.name} failed: {r.stderr.strip()[-1500:]}")
    run = json.loads(r.stdout.strip().splitlines()[-1])
    run["report"] = json.loads(report.read_text()) if report.is_file() else None
    return run


def report_split(case: Case, run: dict):
    """The report split of a new run, rebuilt from its settings (the same seed and sizes)."""
    from convopt.api import load_roles
    from convopt.io import load_model
    from convopt.options import DataOptions, OptimizeOptions

    d = dict(zip(case.data[::2], case.data[1::2]))
    opts = OptimizeOptions(model=case.model, data=DataOptions(
        data=Path(d["--data"]) if "--data" in d else None, calib=Path(d["--calib"]) if "--calib" in d else None,
        labels=Path(d["--labels"]) if "--labels" in d else None, preprocess=d.get("--preprocess")))
    return load_roles(load_model(case.model), opts, "auto").report


def measure(case: Case, models: dict[str, Path], runs: dict[str, dict]) -> dict:
    from convopt.measure.evaluator import Evaluator
    from convopt.measure.latency import measure_latency
    from convopt.measure.ort import OrtSettings, batch_feeds, make_session

    original = onnx.load(str(case.model))
    split = report_split(case, runs["auto@1thr"])
    names = list(models)
    loaded = [onnx.load(str(models[n])) for n in names]
    out: dict = {"latency": {}, "accuracy": {}}
    for threads in (1, 2):
        settings = OrtSettings(threads=threads, warmup=5, repeats=100)
        sess = make_session(original, settings)
        feeds = batch_feeds(sess, split, 0, 1)
        stats = measure_latency([original, *loaded], feeds, settings)
        out["latency"][threads] = {n: stats[0].median_ms / s.median_ms for n, s in zip(names, stats[1:])}
        out["latency"][threads]["original_ms"] = stats[0].median_ms
    ev = Evaluator(original, split, OrtSettings(threads=2), measure_latency=False)
    for n, m in zip(names, loaded):
        a = ev.measure(m, n, timed=False).accuracy
        out["accuracy"][n] = {"top1_drop": a.top1_drop, "top1_drop_interval": a.top1_drop_interval,
                              "rel_l2_error": a.rel_l2_error, "rel_l2_error_interval": a.rel_l2_error_interval,
                              "labelled": a.labelled}
    return out


def run_int8_case(case: Case, tmp: Path) -> dict:
    """Factorization + INT8 against INT8 alone: convopt's own precision table (the original and the optimized
    model at FP32 and INT8, measured on the report split and timed interleaved in one run), at 1 and 2 threads."""
    out: dict = {"case": case.name, "note": case.note, "budget": case.budget, "int8": {}}
    for threads in (1, 2):
        run = optimize(case, tmp / f"{case.name}.{threads}.onnx", threads, tmp, ROOT, case.data)
        print(f"  int8@{threads}thr: {run['seconds']} s, peak {run['peak_mib']} MiB", flush=True)
        rows = []
        for p in (run["report"] or {}).get("precisions") or []:
            m = p["measurement"]
            rows.append({"model": p["model"], "precision": p["precision"], "speedup": m["latency"]["speedup"],
                         "median_ms": m["latency"]["candidate"]["median_ms"], "samples": m["samples"],
                         **{k: m["accuracy"][k] for k in ("top1_drop", "top1_drop_interval", "rel_l2_error",
                                                          "rel_l2_error_interval", "top1_agreement")}})
        out["int8"][threads] = {"seconds": run["seconds"], "peak_mib": run["peak_mib"], "rows": rows,
                                "macs_ratio": _macs(run["report"]),
                                "written": (run["report"] or {}).get("output")}
    return out


def run_case(case: Case, tmp: Path, previous: Path | None) -> dict:
    if case.int8:
        return run_int8_case(case, tmp)
    models, runs = {}, {}
    for threads in (1, 2):
        key = f"auto@{threads}thr"
        models[key] = tmp / f"{case.name}.{threads}.onnx"
        runs[key] = optimize(case, models[key], threads, tmp, ROOT, case.data)
        print(f"  {key}: {runs[key]['seconds']} s, peak {runs[key]['peak_mib']} MiB", flush=True)
    if previous is not None:
        models["previous"] = tmp / f"{case.name}.prev.onnx"
        runs["previous"] = optimize(case, models["previous"], 1, tmp, previous, case.prev_data or case.data)
        print(f"  previous: {runs['previous']['seconds']} s", flush=True)
    return {"case": case.name, "note": case.note, "budget": case.budget, "runs": {
        k: {key: v[key] for key in ("seconds", "peak_mib", "base_mib")} | {
            "budget": (v["report"] or {}).get("budget"), "macs_ratio": _macs(v["report"])}
        for k, v in runs.items()}, **measure(case, models, runs)}


def _macs(report: dict | None) -> float | None:
    if not report or not report.get("macs_before") or report.get("macs_after") is None:
        return None
    return report["macs_after"] / report["macs_before"]


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"# Auto mode against the previous version\n\n`{command}`\n",
             "Speedup = original / optimized median, all models of a row timed interleaved in one run; accuracy on "
             "the report split of the new 1-thread run (never used to decide), 95 % interval.\n",
             "| model | variant | MACs | speedup 1 thr | speedup 2 thr | accuracy change | certified (bound) | "
             "optimizer time | peak memory |", "|" + "---|" * 9]
    for r in rows:
        if "int8" in r:
            continue
        for k, run in r["runs"].items():
            acc = r["accuracy"][k]
            if acc["labelled"] or acc["top1_drop"] is not None:
                lo, hi = acc["top1_drop_interval"] or (float("nan"), float("nan"))
                a = f"{-acc['top1_drop']:+.2f} pt [{-hi:+.2f}, {-lo:+.2f}]"
            else:
                lo, hi = acc["rel_l2_error_interval"] or (float("nan"), float("nan"))
                a = f"rel err {acc['rel_l2_error']:.3f} [{lo:.3f}, {hi:.3f}]"
            b = run["budget"] or {}
            bound = b.get("bound") or {}
            cert = "–" if not b else f"{'yes' if b.get('certified') else 'no'} ({', '.join(f'{v:.3g}' for v in bound.values()) or '–'})"
            macs = "?" if run["macs_ratio"] is None else f"{run['macs_ratio']:.2f}"
            lines.append(f"| {r['case']} | {k} | {macs} | {r['latency'][1][k]:.2f}× | {r['latency'][2][k]:.2f}× | "
                         f"{a} | {cert} | {run['seconds']:.0f} s | {run['peak_mib']} MiB |")
    return "\n".join(lines) + "\n" + int8_markdown([r for r in rows if "int8" in r])


def _acc(row: dict) -> str:
    if row["top1_drop"] is not None:
        lo, hi = row["top1_drop_interval"] or (float("nan"), float("nan"))
        return f"{-row['top1_drop']:+.2f} pt [{-hi:+.2f}, {-lo:+.2f}]"
    lo, hi = row["rel_l2_error_interval"] or (float("nan"), float("nan"))
    return f"rel err {row['rel_l2_error']:.3f} [{lo:.3f}, {hi:.3f}]"


def int8_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["\n## Factorization + INT8 against INT8 alone\n",
             "convopt's own precision table (`--quantize int8 --repeats 100`): the four models measured on the report "
             "split and timed interleaved in one run; speedup against the original at FP32; auto tuned and timed at "
             "the thread count of the column's run.\n",
             "| model | threads | variant | speedup | accuracy change vs original FP32 [95 %] | optimizer time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for threads, run in r["int8"].items():
            for row in run["rows"]:
                lines.append(f"| {r['case']} | {threads} | {row['model']} {row['precision'].upper()} | "
                             f"{row['speedup']:.2f}× | {_acc(row)} | {run['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="*")
    ap.add_argument("--previous", default=None, help="a git revision of convopt to compare with (a worktree)")
    ap.add_argument("--render", action="store_true", help="only rewrite speed.md from speed.json")
    a = ap.parse_args()
    if a.render:
        saved = json.loads((RESULTS / "speed.json").read_text())
        _write_md([_int_keys(r) for r in saved["rows"]], saved["commands"])
        return
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        prev = None
        if a.previous:
            prev = tmp / "convopt-previous"
            subprocess.run(["git", "worktree", "add", "--detach", str(prev), a.previous], cwd=ROOT, check=True,
                           capture_output=True)
        try:
            all_cases = cases(tmp)
            for name in a.cases or list(all_cases):
                print(name, flush=True)
                rows.append(run_case(all_cases[name], tmp, prev))
        finally:
            if prev is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(prev)], cwd=ROOT, capture_output=True)
    command = "python bench/speed.py " + " ".join(a.cases) + (f" --previous {a.previous}" if a.previous else "")
    rows, commands = _merged(rows, command)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps({"commands": commands, "rows": rows}, indent=1, default=str))
    _write_md(rows, commands)
    print(markdown(rows, command))


def _write_md(rows: list[dict], commands: list[str]) -> None:
    (RESULTS / "speed.md").write_text(markdown(rows, "`, `".join(commands)))


def _int_keys(row: dict) -> dict:
    """A row read back from JSON: its thread counts are int keys again."""
    for key in ("latency", "int8"):
        if key in row:
            row[key] = {int(k) if k.isdigit() else k: v for k, v in row[key].items()}
    return row


def _merged(rows: list[dict], command: str) -> tuple[list[dict], list[str]]:
    """This run's rows replace the same cases of the results file; the other cases (and their commands) stay,
    so that the cases can be run one invocation at a time."""
    path = RESULTS / "speed.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    new = {r["case"] for r in rows}
    kept = [_int_keys(r) for r in old.get("rows", []) if r["case"] not in new]
    return kept + rows, [*old.get("commands", []), command]


if __name__ == "__main__":
    main()
