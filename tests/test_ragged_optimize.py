"""`convopt optimize` on samples of different shapes: auto mode end to end on a small dynamic-width net built
here (keyed .npz), and ddddocr-ocr.onnx on generated text lines of different widths (folder with --resize,
keyed .npz, the OCR string-match metric)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from convopt import api
from convopt.cli import app
from convopt.measure.data import load_eval_data
from convopt.measure.ort import OrtSettings, make_session
from convopt.options import DataOptions, OptimizeOptions
from tests.helpers import EXAMPLES, NO_SHARED, SHARED_MODELS, example_script
from tests.ragged_helpers import ctc_like_model, ragged_samples, save_keyed

OCR = SHARED_MODELS / "ddddocr-ocr.onnx"
FAST = OrtSettings(warmup=1, repeats=5, threads=1)


METRIC = """
import numpy as np

def reads(outputs, labels, inputs):
    \"\"\"1.0 when a sample's columns read the label's classes (one array per sample: lists).\"\"\"
    return np.array([float(np.array_equal(o[:, 0].argmax(-1), y[y >= 0])) for o, y in zip(outputs["logits"], labels)])
"""


def test_auto_on_ragged_data_with_a_metric_end_to_end(tmp_path: Path) -> None:
    model = ctc_like_model(channels=96, classes=40)
    onnx.save(model, tmp_path / "m.onnx")
    samples = ragged_samples(40)
    sess = make_session(model, FAST)
    reads = [sess.run(None, {"x": x})[0][:, 0].argmax(-1) for x in samples]
    labels = np.full((40, max(map(len, reads))), -1)
    for i, r in enumerate(reads):
        labels[i, :len(r)] = r
    save_keyed(tmp_path / "d.npz", samples, labels=labels)  # per-sample sequences: a metric's labels
    (tmp_path / "metric.py").write_text(METRIC)
    res = CliRunner().invoke(app, ["optimize", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                                   "--metric", f"{tmp_path / 'metric.py'}:reads", "--max-metric-drop", "1",  # plumbing, not quality
                                   "--threads", "1", "--repeats", "5",
                                   "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "run one sample at a time (samples differ in shape); latency timed on x 1x1x8x" in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    ragged = report["settings"]["ragged"]
    assert ragged["shapes"] == len({s.shape for s in samples}) and "the median size" in ragged["latency_sample"]
    assert report["baseline"]["accuracy"]["metric_score"] == 1.0  # the labels are the original's readings
    assert report["final"]["samples"] == 15 and report["final"]["accuracy"]["metric"] == "reads"
    assert any(p["status"] == "kept" and p["rewritten"] for p in report["passes"])  # auto rewrote something
    sess = make_session(onnx.load(str(tmp_path / "o.onnx")), FAST)
    for x in samples[:3]:  # the model written runs on every width
        assert sess.run(None, {"x": x})[0].shape == (x.shape[3], 1, 40)


@pytest.fixture(scope="module")
def ocr_lines(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ocr")
    assert example_script("make_ocr_data").main(["--ragged", "--n", "8", "--out", str(out)]) == 0
    return out


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_ocr_folder_and_keyed_npz_give_the_same_samples(ocr_lines: Path) -> None:
    model = onnx.load(str(OCR))
    folder = load_eval_data(model, ocr_lines / "ocr_ragged", preprocess="unit", resize="height=64")
    keyed = load_eval_data(model, ocr_lines / "ocr_ragged.npz")
    assert folder.ragged and keyed.ragged and folder.n == keyed.n == 8
    assert len({x.shape for x in keyed.inputs["input1"]}) > 1  # the widths differ
    for a, b in zip(folder.inputs["input1"], keyed.inputs["input1"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    assert folder.timing.feeds["input1"].shape == keyed.timing.feeds["input1"].shape


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_ocr_string_match_on_lines_of_different_widths(ocr_lines: Path, tmp_path: Path) -> None:
    """A lowrank rewrite of the OCR model's 1×1 convs and its classifier Gemm (rows = time steps, which vary
    with the width), kept whatever it measures, judged by string_match on the report samples."""
    opts = OptimizeOptions(
        model=OCR, output=tmp_path / "o.onnx", report=tmp_path / "r.json", strategy="uniform", passes=("lowrank",),
        data=DataOptions(ocr_lines / "ocr_ragged", labels=ocr_lines / "ocr_ragged_labels.npz", preprocess="unit",
                         resize="height=64"),
        metric=f"{EXAMPLES / 'metrics' / 'ocr.py'}:string_match", no_budget=True, require_faster=False,
        ort=FAST)
    said: list[str] = []
    result = api.run(opts, say=said.append)
    assert any(s.startswith("data: samples of 8 shapes, run one sample at a time") for s in said)
    final, original = result.report.final, result.report.baseline
    assert original is not None and original.accuracy.metric_score == 1.0  # the labels are its own readings
    assert final is not None and final.accuracy.metric == "string_match" and final.samples == 4
    assert final.outcomes is not None and final.outcomes.agree is not None and len(final.outcomes.agree) == 4
    (lowrank,) = [p for p in result.report.passes if p.name == "lowrank"]
    assert lowrank.status == "kept" and "Gemm_97" in {r.node for r in lowrank.rewritten}
    sess = make_session(onnx.load(str(tmp_path / "o.onnx")), FAST)
    for x in load_eval_data(onnx.load(str(OCR)), ocr_lines / "ocr_ragged.npz").inputs["input1"][:2]:
        assert sess.run(None, {"input1": x})[0].shape == (-(-x.shape[3] // 8), 1, 8210)  # T = ⌈W/8⌉ steps
