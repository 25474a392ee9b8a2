"""`convopt optimize` from the command line on ddddocr-ocr.onnx with text lines of different widths: a folder
of PNGs with --preprocess/--resize and the same samples as a keyed .npz, judged by the OCR string-match metric.
The progress, the JSON report and the Markdown report say that the samples ran one at a time."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from convopt.cli import app
from convopt.measure.ort import OrtSettings, make_session
from convopt.measure.samples import RUN_NOTE
from tests.helpers import EXAMPLES, NO_SHARED, SHARED_MODELS, example_script

pytestmark = pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)

OCR = SHARED_MODELS / "ddddocr-ocr.onnx"
N = 8


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> Path:
    """N generated text lines, 64 px high and as wide as their text, with the original's readings as labels."""
    module = example_script("make_ocr_data")
    out = tmp_path_factory.mktemp("ocr_cli")
    assert module.main(["--ragged", "--n", str(N), "--seed", "3", "--out", str(out)]) == 0
    return out


def _optimize(data: list[str], lines: Path, tmp: Path) -> tuple[str, dict]:
    res = CliRunner().invoke(app, [
        "optimize", str(OCR), *data, "--labels", str(lines / "ocr_ragged_labels.npz"),
        "--metric", f"{EXAMPLES / 'metrics' / 'ocr.py'}:string_match", "--strategy", "uniform",
        "--passes", "lowrank", "--no-budget", "--keep-slower", "--threads", "1", "--warmup", "1", "--repeats", "3",
        "-o", str(tmp / "o.onnx"), "--report", str(tmp / "r.json")])
    assert res.exit_code == 0, res.output
    return res.output, json.loads((tmp / "r.json").read_text())


@pytest.mark.parametrize("form", ["folder", "keyed"])
def test_cli_on_ocr_lines_of_different_widths(form: str, lines: Path, tmp_path: Path) -> None:
    data = (["--data", str(lines / "ocr_ragged"), "--preprocess", "unit", "--resize", "height=64"] if form == "folder"
            else ["--data", str(lines / "ocr_ragged.npz")])
    output, report = _optimize(data, lines, tmp_path)
    assert f"run {RUN_NOTE}" in output  # the progress line says how the samples ran
    ragged = report["settings"]["ragged"]
    assert ragged["run"] == RUN_NOTE and 1 < ragged["shapes"] <= N and "input1 1x1x64x" in ragged["latency_sample"]
    base, final = report["baseline"], report["final"]
    assert base["accuracy"]["metric"] == final["accuracy"]["metric"] == "string_match"
    assert base["accuracy"]["metric_score"] == 1.0  # the labels are the original's own readings
    assert final["samples"] == N // 2
    md = CliRunner().invoke(app, ["report", str(tmp_path / "r.json"), "--format", "md"])
    assert md.exit_code == 0, md.output
    assert RUN_NOTE in md.output  # the shared report says it too
    sess = make_session(onnx.load(str(tmp_path / "o.onnx")), OrtSettings(threads=1))
    x = np.zeros((1, 1, 64, 120), np.float32)  # the model written still takes any width
    assert sess.run(None, {"input1": x})[0].shape == (15, 1, 8210)
