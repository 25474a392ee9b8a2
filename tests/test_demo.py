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

from convopt.measure.roles import fit_size, split_data
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
    """Top-1 of the original example on the report split the CLI uses (seed 0), computed here with ORT."""
    model = load_model(example_model_path())
    d = load_eval_data(model, example_data_path())
    held = split_data(d, fit_size(d.n, 128), seed=0).report
    x = held.inputs["input"]
    preds = np.array([run(model, {"input": x[i:i + 1]})[0].argmax() for i in range(held.n)])
    return float((preds == held.labels).mean() * 100)


def test_demo_runs_auto_mode_and_prints_labelled_accuracy_before_and_after(in_tmp: Path) -> None:
    r = runner.invoke(app, ["demo", "--report", "r.json"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = r.output
    for word in ("top-1 %", "original", "auto", "final", "example_eval.npz", "report: 135 samples"):
        assert word in out, word
    top1 = _heldout_top1()
    assert f"{top1:.2f}" in out, "the original's labelled top-1 on the held-out half"
    onnx.checker.check_model(onnx.load(str(in_tmp / "example.opt.onnx")))
    d = json.loads((in_tmp / "r.json").read_text())
    s = d["settings"]
    roles = s["data"]
    assert s["strategy"] == "auto" and [roles[r]["samples"] for r in ("fit", "select", "report")] == [90, 135, 135]
    assert d["baseline"]["accuracy"]["labelled_top1"] == pytest.approx(top1)
    final = d["final"]
    assert final["role"] == "report" and final["accuracy"]["labelled_top1"] is not None
    assert final["latency"]["speedup"] > 0
    b = d["budget"]
    assert b["limits"]["max_accuracy_drop"] == 3.0 and b["decision_samples"] == 135 and b["report_samples"] == 135
    if d["passes"][-1]["rewritten"]:  # the demo's 3-point budget was certified on the decision data
        assert b["certified"] and b["bound"]["max_accuracy_drop"] <= 3.0
    assert d["macs_after"] <= d["macs_before"]


def test_optimize_without_model_uses_the_example(in_tmp: Path) -> None:
    r = runner.invoke(app, ["optimize", "--no-eval", "-q", "--report", "r.json"])
    assert r.exit_code == 0, r.output
    d = json.loads((in_tmp / "r.json").read_text())
    assert d["model"] == str(example_model_path()) and d["settings"]["passes"] == ["split5x5", "factorize"]
    assert (in_tmp / "example.opt.onnx").is_file()
