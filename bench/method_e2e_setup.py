"""The trained models of bench/method_e2e.py and their data: a fit set and a held-out set per model (disjoint),
and how each model is judged (labelled top-1, or relative output error and a task metric).

Classifiers (SqueezeNet 1.1, vgg-digits, the built-in example) split their labelled samples in two halves by a
seeded permutation (``convopt.auto.split_eval_data``, as auto mode splits). The ddddocr models are judged on
the data of ``examples/data`` (the original model's own readings as labels: box F1 at IoU 0.5, exact string)
and fitted on fresh pictures of the same kind drawn with another seed by the scripts that made that data.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from convopt.auto import split_eval_data
from convopt.measure.data import EvalData, load_eval_data
from convopt.measure.plugin import TaskMetric

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT.parent / "examples"
SHARED = ROOT.parent.parent / "shared"
IMAGENET = SHARED / "data" / "imagenet-sample"
FIT_SEED = 1  # the seed of the generated ddddocr fit pictures (examples/data was drawn with seed 0)


@dataclass(frozen=True)
class Task:
    """One model to rewrite: ``fit`` (moments, refits) and ``test`` (held out: every figure) samples;
    ``shapes``: input shapes when the model's are not static; ``metric``: the task metric judged on ``test``
    (its labels are the sample ids); ``figure``: the figure the verdict reads ("top1" or "rel_err");
    ``forms``: the passes to compare."""

    name: str
    model: onnx.ModelProto
    fit: EvalData
    test: EvalData
    figure: str
    forms: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]] | None = None
    metric: TaskMetric | None = None


def _halves(data: EvalData, seed: int, fit: int | None, test: int | None) -> tuple[EvalData, EvalData]:
    """The two halves of ``data`` (seeded permutation), each cut to its first ``fit`` / ``test`` samples."""
    a, b = split_eval_data(data, calib_fraction=0.5, seed=seed)
    cut = lambda d, n: d if n is None or n >= d.n else d.subset(np.arange(n), f"first {n}")  # noqa: E731
    return cut(a, fit), cut(b, test)


def squeezenet(seed: int, fit: int | None, test: int | None) -> Task:
    m = onnx.load(str(SHARED / "models" / "squeezenet1.1.onnx"))
    d = load_eval_data(m, IMAGENET, preprocess="caffe", labels=IMAGENET / "labels.csv")
    f, t = _halves(d, seed, fit, test)
    return Task("squeezenet", m, f, t, "top1", ("factorize", "bottleneck", "lowrank"))


def vgg_digits(seed: int, fit: int | None, test: int | None) -> Task:
    from vgg_digits import EVAL_PATH, load  # bench/vgg_digits.py (bench/ is on sys.path)

    m, x, y = load()
    f, t = _halves(EvalData({"input": x}, y, str(EVAL_PATH.relative_to(ROOT.parent))), seed, fit, test)
    return Task("vgg-digits", m, f, t, "top1", ("factorize", "bottleneck"))


def example(seed: int, fit: int | None, test: int | None) -> Task:
    from convopt.models.example import example_data_path, load_example, load_example_data

    m = load_example()
    x, y = load_example_data()
    inits = {i.name for i in m.graph.initializer}
    name = next(i.name for i in m.graph.input if i.name not in inits)
    f, t = _halves(EvalData({name: x}, y, f"convopt/models/data/{example_data_path().name}"), seed, fit, test)
    return Task("example", m, f, t, "top1", ("factorize", "bottleneck", "lowrank"))


def _examples_module(name: str):
    """A script of examples/ imported as a module (they put examples/ on sys.path for ``metrics``)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return __import__(name)


def _metric(fn: Callable, name: str) -> TaskMetric:
    """``fn(outputs, sample ids, inputs)`` as a TaskMetric (the held-out data's labels are its sample ids)."""
    return TaskMetric.from_callable(fn, name)


def ddddocr_det(seed: int, fit: int | None, test: int | None) -> Task:
    mdl = _examples_module("make_det_labels")
    from metrics.detect import box_agreement  # examples/metrics/detect.py

    m = onnx.load(str(SHARED / "models" / "ddddocr-det.onnx"))
    with np.load(EXAMPLES / "data" / "det_inputs.npz") as z:
        x = z["images"].astype(np.float32)[:test]
    with np.load(EXAMPLES / "data" / "det_labels.npz") as z:
        table = z["labels"]

    def agreement(outputs, ids, inputs):  # box_agreement on the label rows of these images, renumbered
        rows = [np.concatenate([np.full((int(np.sum(table[:, 0] == i)), 1), k), table[table[:, 0] == i, 1:]], 1)
                for k, i in enumerate(ids)]
        return box_agreement(outputs, np.concatenate(rows).astype(np.float32), inputs)

    n_fit = fit or 16
    fx = mdl.make_images(n_fit, FIT_SEED).astype(np.float32)
    f = EvalData({"images": fx}, None, f"{n_fit} pictures by examples/make_det_labels.py --seed {FIT_SEED}")
    t = EvalData({"images": x}, np.arange(len(x)), f"examples/data/det_inputs.npz ({len(x)} images)")
    return Task("ddddocr-det", m, f, t, "rel_err", ("factorize", "bottleneck"), None,
                _metric(agreement, "box_agreement"))


def ddddocr_ocr(seed: int, fit: int | None, test: int | None) -> Task:
    mod = _examples_module("make_ocr_data")
    from metrics.ocr import string_match  # examples/metrics/ocr.py

    m = onnx.load(str(SHARED / "models" / "ddddocr-ocr.onnx"))
    with np.load(EXAMPLES / "data" / "ocr_inputs.npz") as z:
        x = z["input1"].astype(np.float32)[:test]
    with np.load(EXAMPLES / "data" / "ocr_labels.npz") as z:
        labels = z["labels"]

    def match(outputs, ids, inputs):
        return string_match(outputs, labels[np.asarray(ids)], inputs)

    n_fit = fit or 32
    pixels, _ = mod.make_images(n_fit, x.shape[3], FIT_SEED)
    f = EvalData({"input1": (pixels.astype(np.float32) / 255.0)[:, None]}, None,
                 f"{n_fit} strings by examples/make_ocr_data.py --seed {FIT_SEED}")
    t = EvalData({"input1": x}, np.arange(len(x)), f"examples/data/ocr_inputs.npz ({len(x)} strings)")
    return Task("ddddocr-ocr", m, f, t, "rel_err", ("factorize", "bottleneck", "lowrank"),
                {"input1": (1, 1, 64, x.shape[3])}, _metric(match, "string_match"))


SETUPS: dict[str, Callable[[int, int | None, int | None], Task]] = {
    "squeezenet": squeezenet, "vgg-digits": vgg_digits, "example": example, "ddddocr-det": ddddocr_det,
    "ddddocr-ocr": ddddocr_ocr}
