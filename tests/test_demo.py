"""`convopt demo` (and `convopt optimize` with no model) run the whole pipeline on the bundled example."""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from convopt.cli import app
from convopt.models.example import example_info

runner = CliRunner()


@pytest.fixture()
def in_tmp(tmp_path: Path):
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_demo_prints_labelled_accuracy_before_and_after_each_pass(in_tmp: Path) -> None:
    r = runner.invoke(app, ["demo"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = r.output
    for word in ("top-1 %", "original", "split5x5", "factorize", "final", "example_eval.npz"):
        assert word in out, word
    held_out = example_info()["heldout_accuracy"]
    held_out_pct = held_out * 100 if held_out <= 1 else held_out
    assert f"{held_out_pct:.2f}" in out, "the original's labelled top-1 is the recorded held-out accuracy"
    assert (in_tmp / "example.opt.onnx").is_file()
    onnx.checker.check_model(onnx.load(str(in_tmp / "example.opt.onnx")))


def test_optimize_without_model_runs_the_example_with_a_report(in_tmp: Path) -> None:
    r = runner.invoke(app, ["optimize", "--report", "r.json", "-q", "--repeats", "5", "--max-accuracy-drop", "1"])
    assert r.exit_code == 0, r.output
    d = json.loads((in_tmp / "r.json").read_text())
    assert d["baseline"]["accuracy"]["labelled_top1"] is not None
    assert d["settings"]["samples"] == 360
    for p in d["passes"][1:]:
        if p["status"] != "no_change":
            assert p["measurement"]["accuracy"]["labelled_top1"] is not None
