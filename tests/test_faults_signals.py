"""Fault injection, issue 15 rows 3 and 5 and item 2: signals leave no trace.

A child `convopt optimize` of a 100 MB model (built here) is signalled the moment its temporary file
appears in the output folder: SIGINT, SIGTERM and SIGHUP end it with 130, 143, 129, one line that says what
is on disk, the previous model and report byte-identical (or both new, when the signal came during the
commit) and no temporary file. SIGKILL leaves the temporary file, and the next run removes it and says so.
In-process, a signal during the commit is held until model, .data file and report are all in place."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import convopt.writes
from convopt.cli import app

from tests.faults import count, no_temporaries, print_counts, snapshot
from tests.helpers import conv_model

runner = CliRunner()
CASES: Counter[str] = Counter()
BIG_CHANNELS = 5000  # one 1x1 conv 5000 -> 5000: 25 M float32 weights, 100 MB; no pass rewrites it


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = np.random.default_rng(0).standard_normal((BIG_CHANNELS, BIG_CHANNELS, 1, 1), dtype=np.float32)
    node = helper.make_node("Conv", ["x", "W"], ["y"], name="big", kernel_shape=[1, 1])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, BIG_CHANNELS, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, BIG_CHANNELS, 2, 2])],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    p = tmp_path_factory.mktemp("big") / "big.onnx"
    p.write_bytes(m.SerializeToString())
    assert p.stat().st_size > 100e6
    return p


def _previous_outputs(out: Path) -> None:
    """A previous convopt model and report in ``out`` (from a small run)."""
    src = out.parent / "small.onnx"
    src.write_bytes(conv_model(cin=2, cout=2, k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(4, 4)).SerializeToString())
    r = runner.invoke(app, ["optimize", str(src), "-o", str(out / "o.onnx"), "--report", str(out / "r.json"),
                            "--no-eval", "-q"])
    assert r.exit_code == 0, r.output


def _child_until_temp(model: Path, out: Path, timeout: float = 120.0) -> tuple[subprocess.Popen[str], str]:
    """Start `convopt optimize` in a child and return as soon as a .convopt-* file appears in ``out``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "convopt.cli", "optimize", str(model), "-o", str(out / "o.onnx"), "--report",
         str(out / "r.json"), "--no-eval", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        temps = [n for n in os.listdir(out) if n.startswith(".convopt-")]
        if temps:
            return proc, temps[0]
        if proc.poll() is not None:
            break
        time.sleep(0.0005)
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"no temporary file appeared before the child ended (exit {proc.returncode}): {err}")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_signal_while_the_temporary_file_exists(big_model: Path, tmp_path: Path, sig: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _previous_outputs(out)
    before = snapshot(out)
    proc, temp = _child_until_temp(big_model, out)
    assert temp.startswith(f".convopt-{proc.pid}-")
    proc.send_signal(getattr(signal, sig))
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"convopt did not stop within 120 s of {sig}")
    assert proc.returncode == 128 + getattr(signal, sig), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interrupted by {sig}: "), err
    assert no_temporaries(out) == [], "a temporary file was left behind"
    if lines[0] == f"interrupted by {sig}: nothing was written":
        assert snapshot(out) == before
    else:  # the signal came during the commit, which it may not split: both are new and say so
        assert lines[0] == f"interrupted by {sig}: wrote {out / 'o.onnx'} and {out / 'r.json'} before stopping", err
        assert json.loads((out / "r.json").read_text())["model"] == str(big_model)
    count(CASES, f"row3:{sig}")


def test_sigkill_leaves_a_temporary_file_that_the_next_run_removes(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _previous_outputs(out)
    before = snapshot(out)
    proc, temp = _child_until_temp(big_model, out)
    proc.kill()
    proc.communicate()
    assert (out / temp).exists(), "SIGKILL cannot be handled: its temporary file stays"
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".convopt-")} == before
    small = tmp_path / "small.onnx"
    r = runner.invoke(app, ["optimize", str(small), "-o", str(out / "o.onnx"), "--report", str(out / "r.json"),
                            "--no-eval"])
    assert r.exit_code == 0, r.output
    assert f"removed 1 temporary file(s) left by a stopped convopt run: {out / temp}" in r.output.splitlines()
    assert no_temporaries(out) == []
    count(CASES, "row3:SIGKILL")


# ------------------------------------------------------------------ in-process: the commit of model + report


@pytest.fixture()
def small(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    _previous_outputs(out)
    return tmp_path


def test_signal_while_staging_the_report_writes_neither(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = small / "out"
    before = snapshot(out)
    import convopt.io

    real = convopt.io.stage

    def stage(target: Path, chunks):  # noqa: ANN001, ANN202
        if Path(target).name == "r.json":
            raise convopt.writes.Interrupted(signal.SIGTERM)
        return real(target, chunks)

    monkeypatch.setattr(convopt.io, "stage", stage)  # the model is staged, the report is interrupted
    r = runner.invoke(app, ["optimize", str(small / "small.onnx"), "-o", str(out / "o.onnx"), "--report",
                            str(out / "r.json"), "--no-eval", "-q", "--full-rank"])
    assert r.exit_code == 143, r.output
    assert r.output.strip().splitlines() == ["interrupted by SIGTERM: nothing was written"]
    assert snapshot(out) == before and no_temporaries(out) == []
    count(CASES, "row5")


@pytest.mark.parametrize("big", [False, True], ids=["model", "model+data"])
def test_signal_during_the_commit_is_held_until_all_are_in_place(small: Path, monkeypatch: pytest.MonkeyPatch,
                                                                big: bool) -> None:
    import convopt.io as cio

    out = small / "out"
    if big:  # take the >2 GB path: the model's tensors go to o.onnx.data, renamed with it
        monkeypatch.setattr(cio, "PROTOBUF_LIMIT", 64)
    real = os.replace
    calls: list[str] = []

    def replace(src, dst):  # noqa: ANN001, ANN202
        if not calls:
            os.kill(os.getpid(), signal.SIGTERM)  # held: commit blocks it until the last rename
        calls.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(convopt.writes.os, "replace", replace)
    r = runner.invoke(app, ["optimize", str(small / "small.onnx"), "-o", str(out / "o.onnx"), "--report",
                            str(out / "r.json"), "--no-eval", "-q", "--full-rank"])
    monkeypatch.undo()
    names = ["o.onnx.data", "o.onnx", "r.json"] if big else ["o.onnx", "r.json"]
    assert calls == names
    assert r.exit_code == 143, r.output
    said = " and ".join(str(out / n) for n in names)
    assert r.output.strip().splitlines() == [f"interrupted by SIGTERM: wrote {said} before stopping"]
    assert json.loads((out / "r.json").read_text())["output"] == str(out / "o.onnx")
    onnx.checker.check_model(onnx.load(str(out / "o.onnx")))
    assert no_temporaries(out) == []
    count(CASES, "row5")


def test_row5_ctrl_c_after_the_commit_says_what_was_written(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import convopt.render

    def interrupt(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(convopt.render, "render_table", interrupt)
    out = small / "out"
    r = runner.invoke(app, ["optimize", str(small / "small.onnx"), "-o", str(out / "o.onnx"), "--report",
                            str(out / "r.json"), "--no-eval", "--full-rank"])
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines()[-1] == (
        f"interrupted by SIGINT: wrote {out / 'o.onnx'} and {out / 'r.json'} before stopping")
    assert json.loads((out / "r.json").read_text())["settings"]["fold_bn"] is True
    count(CASES, "row5")


def test_print_counts(capsys: pytest.CaptureFixture[str]) -> None:
    if not CASES:
        pytest.skip("the cases above were deselected")
    print_counts(capsys, "signal", CASES)
