"""Score models with a task metric, with the library alone (until ``convopt optimize --metric`` is wired in).

    python examples/score.py MODEL.onnx [MODEL2.onnx ...] --data INPUTS.npz --labels LABELS.npz
        --metric examples/metrics/ocr.py:string_match [--input-shape input1:1x1x64x256] [--int8 CALIB.npz]

Prints the mean score of each model (and, with ``--int8``, of each model quantized to INT8 with
``convopt.quantize.quantize_int8``, calibrated on CALIB.npz) with the number of samples scoring below 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

from convopt.measure.data import load_eval_data, parse_input_shape
from convopt.measure.ort import OrtSettings, make_session, run_model
from convopt.measure.plugin import TaskMetric, load_metric
from convopt.quantize import quantize_int8


def score(model: onnx.ModelProto, data_path: Path, labels: object, metric: TaskMetric,
          shapes: dict[str, tuple[int, ...]]) -> np.ndarray:
    """Per-sample scores of ``model`` on the data."""
    data = load_eval_data(model, data_path, input_shapes=shapes)
    settings = OrtSettings(threads=2)
    sess = make_session(model, settings)
    outputs = dict(zip([o.name for o in sess.get_outputs()], run_model(sess, data, settings)))
    return metric.score(outputs, labels, data.inputs)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--metric", required=True)
    ap.add_argument("--input-shape", action="append", default=[])
    ap.add_argument("--int8", type=Path, help="calibration .npz: also score each model quantized to INT8")
    args = ap.parse_args(argv)
    metric = load_metric(args.metric)
    labels = dict(np.load(args.labels))
    shapes = dict(parse_input_shape(s) for s in args.input_shape)
    for path in args.models:
        model = onnx.load(str(path))
        variants = [("FP32", model)]
        if args.int8:
            calib = load_eval_data(model, args.int8, input_shapes=shapes)
            variants.append(("INT8", quantize_int8(model, calib).model))
        for kind, m in variants:
            s = score(m, args.data, labels, metric, shapes)
            print(f"{path.name} {kind}: {metric.name} = {s.mean():.4f} on {s.size} samples "
                  f"({int((s < 1).sum())} below 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
