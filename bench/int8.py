"""Benchmark: SqueezeNet 1.1 FP32 against INT8 (convopt.quantize.quantize_int8), timed interleaved in one run.

Calibration on the first --calib images of a seeded permutation of ../shared/data/imagenet-sample (Caffe
preprocessing), top-1 on the next --test images, which calibration never saw. Latency: one image per run,
FP32 original, FP32 upgraded to opset 13 (the model INT8 starts from) and INT8, interleaved, at 1 thread and
then at 2.

    python bench/int8.py [--calib 200] [--test 300] [--repeats 200] [--seed 0]

Writes bench/results/int8.md (the command at its top) and prints the same table.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import version_converter

from convopt.measure.data import EvalData, load_eval_data
from convopt.measure.latency import LatencyStats, measure_latency
from convopt.measure.ort import OrtSettings, make_session, run_model
from convopt.quantize import Int8Settings, QuantizedModel, cpu_int8_path, int8_supported, quantize_int8

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "squeezenet1.1.onnx"
IMAGES = SHARED / "data" / "imagenet-sample"
OUT = ROOT / "bench" / "results" / "int8.md"
# other settings ORT's quantizer offers, against the default (ORT's advice for x86 with VNNI)
VARIANTS = {
    "per-tensor weights": Int8Settings(per_channel=False),
    "reduce_range (7-bit weights)": Int8Settings(reduce_range=True),
    "int8 activations (S8S8)": Int8Settings(activation_type="int8"),
    "no ORT pre-processing": Int8Settings(preprocess=False),
}


def split(data: EvalData, n_calib: int, n_test: int, seed: int) -> tuple[EvalData, EvalData]:
    """Disjoint calibration and test sets from one seeded permutation."""
    if n_calib + n_test > data.n:
        raise SystemExit(f"--calib {n_calib} + --test {n_test} exceed the {data.n} images")
    order = np.random.default_rng(seed).permutation(data.n)
    cal, test = order[:n_calib], order[n_calib:n_calib + n_test]
    assert data.labels is not None
    pick = lambda idx, what: EvalData({k: v[idx] for k, v in data.inputs.items()}, data.labels[idx], what)  # noqa: E731
    return pick(cal, f"{n_calib} calibration images"), pick(test, f"{n_test} test images")


def top1(model: onnx.ModelProto, data: EvalData) -> np.ndarray:
    """Predicted class per sample."""
    s = OrtSettings(threads=2)
    return run_model(make_session(model, s), data, s)[0].reshape(data.n, -1).argmax(1)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a proportion k / n."""
    p = k / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    return centre - half / (1 + z * z / n), centre + half / (1 + z * z / n)


def time_all(models: list[onnx.ModelProto], data: EvalData, threads: int, repeats: int) -> list[LatencyStats]:
    feeds = {k: v[:1] for k, v in data.inputs.items()}
    return measure_latency(models, feeds, OrtSettings(threads=threads, warmup=10, repeats=repeats))


def accuracy_rows(labels: np.ndarray, preds: dict[str, np.ndarray]) -> list[str]:
    fp = preds["FP32"]
    rows = []
    for name, p in preds.items():
        k = int((p == labels).sum())
        lo, hi = wilson(k, labels.size)
        right_wrong = int(((fp == labels) & (p != labels)).sum())
        wrong_right = int(((fp != labels) & (p == labels)).sum())
        rows.append(f"| {name} | {100 * k / labels.size:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] | "
                    f"{100 * (p == fp).mean():.1f} % | {right_wrong} / {wrong_right} |")
    return rows


def latency_rows(names: list[str], stats: dict[int, list[LatencyStats]]) -> list[str]:
    rows = []
    for i, name in enumerate(names):
        cells = []
        for t, st in stats.items():
            s, base = st[i], st[0]
            cells.append(f"{s.median_ms:.2f} ({s.q1_ms:.2f}–{s.q3_ms:.2f}) | {base.median_ms / s.median_ms:.2f}×")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def variant_rows(model: onnx.ModelProto, q: QuantizedModel, calib: EvalData, test: EvalData,
                 repeats: int) -> list[str]:
    """Each variant's speedup at 1 thread (interleaved with FP32 and the default INT8) and its agreement."""
    models = [model, q.model] + [quantize_int8(model, calib, s).model for s in VARIANTS.values()]
    st = time_all(models, test, 1, repeats)
    fp = top1(model, test)
    rows = []
    for name, m, s in zip(["default (uint8 activations, per-channel)", *VARIANTS], models[1:], st[1:]):
        rows.append(f"| {name} | {st[0].median_ms / s.median_ms:.2f}× | {100 * (top1(m, test) == fp).mean():.1f} % |")
    return rows


def report(args: argparse.Namespace, q: QuantizedModel, acc: list[str], lat: list[str], var: list[str],
           reason: str | None, calib: EvalData, test: EvalData) -> str:
    cpu = cpu_int8_path()
    cmd = "python bench/int8.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items())
    return "\n".join([
        f"`{cmd}`", "",
        f"SqueezeNet 1.1 (`../shared/models/squeezenet1.1.onnx`), onnxruntime {onnxruntime.__version__}, "
        f"{platform.machine()} with {cpu.isa}, 2 shared vCPUs, {time.strftime('%Y-%m-%d')}.", "",
        f"INT8: ORT static quantization, QDQ, {q.settings.activation_type} activations, {q.settings.weight_type} "
        f"weights per channel ({q.per_channel_weights} conv weights), reduce_range={q.settings.reduce_range}, "
        f"{q.settings.calibrate_method} calibration on {calib.n} images ({q.seconds:.1f} s). Changes: "
        + "; ".join(q.changes) + ".", "",
        f"`int8_supported()`: {reason or 'None (INT8 is faster here)'}", "",
        f"## Top-1 on {test.n} images calibration never saw (Caffe preprocessing, seed {args.seed})", "",
        "| model | top-1 [95 % Wilson] | agreement with FP32 | right→wrong / wrong→right vs FP32 |",
        "|---|---|---|---|", *acc, "",
        f"## Latency, one image per run, interleaved ({args.repeats} rounds after 10 warm-ups)", "",
        "median ms (IQR) and speedup against the FP32 original, at each thread count", "",
        "| model | 1 thread | speedup | 2 threads | speedup |", "|---|---|---|---|---|", *lat, "",
        "## Other quantizer settings (1 thread, timed interleaved in a separate run)", "",
        "| INT8 variant | speedup vs FP32 | agreement with FP32 |", "|---|---|---|", *var, "",
    ])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=200)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = onnx.load(str(MODEL))
    data = load_eval_data(model, IMAGES, preprocess="caffe", labels=IMAGES / "labels.csv")
    calib, test = split(data, args.calib, args.test, args.seed)
    q = quantize_int8(model, calib)
    fp13 = version_converter.convert_version(model, 13)
    names, models = ["FP32", "FP32 opset 13", "INT8"], [model, fp13, q.model]
    preds = {n: top1(m, test) for n, m in zip(names, models)}
    reason = int8_supported()
    stats = {t: time_all(models, test, t, args.repeats) for t in (1, 2)}
    var = variant_rows(model, q, calib, test, args.repeats // 2)
    text = report(args, q, accuracy_rows(test.labels, preds), latency_rows(names, stats), var, reason, calib, test)
    OUT.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
