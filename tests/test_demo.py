"""`convopt demo` (and `convopt optimize` with no model) run the whole pipeline on the bundled example:
auto mode, calibrated on one half of the bundled labelled set and evaluated on the other."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from convopt.auto import split_eval_data
from convopt.cli import app
from convopt.io import load_model
from convopt.measure.data import load_eval_data
from convopt.models.example import example_data_path, example_model_path

from tests.helpers import run

runner = CliRunner()


@pytest.fixture()
def in_tmp(tmp_path: Path):
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def _heldout_top1() -> float:
    """Top-1 of the original example on the evaluation half the CLI uses (seed 0), computed here with ORT."""
    model = load_model(example_model_path())
    _, held = split_eval_data(load_eval_data(model, example_data_path()), 0.5, seed=0)
    x = held.inputs["input"]
    preds = np.array([run(model, {"input": x[i:i + 1]})[0].argmax() for i in range(held.n)])
    return float((preds == held.labels).mean() * 100)


def test_demo_runs_auto_mode_and_prints_labelled_accuracy_before_and_after(in_tmp: Path) -> None:
    r = runner.invoke(app, ["demo", "--report", "r.json"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = r.output
    for word in ("top-1 %", "original", "auto", "final", "example_eval.npz", "evaluation split: 180 samples"):
        assert word in out, word
    top1 = _heldout_top1()
    assert f"{top1:.2f}" in out, "the original's labelled top-1 on the held-out half"
    onnx.checker.check_model(onnx.load(str(in_tmp / "example.opt.onnx")))
    d = json.loads((in_tmp / "r.json").read_text())
    s = d["settings"]
    assert s["strategy"] == "auto" and s["samples"] == 180 and s["calib_samples"] == 180
    assert d["baseline"]["accuracy"]["labelled_top1"] == pytest.approx(top1)
    final = d["final"]
    assert final["accuracy"]["labelled_top1"] is not None and final["latency"]["speedup"] > 0
    # the default auto budget is 1 point of top-1 on the held-out half
    assert final["accuracy"]["labelled_top1"] >= top1 - 1.0 - 1e-9
    assert d["macs_after"] <= d["macs_before"]


def test_optimize_without_model_uses_the_example(in_tmp: Path) -> None:
    r = runner.invoke(app, ["optimize", "--no-eval", "-q", "--report", "r.json"])
    assert r.exit_code == 0, r.output
    d = json.loads((in_tmp / "r.json").read_text())
    assert d["model"] == str(example_model_path()) and d["settings"]["passes"] == ["split5x5", "factorize"]
    assert (in_tmp / "example.opt.onnx").is_file()
