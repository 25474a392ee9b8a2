"""Fault injection, issue 15 rows 1, 2, 9, 10, 11 and item 1: one write guard for every file convopt writes.

Each refused case must exit 2 with one line, before any work, leaving every file byte-identical and no
temporary file behind. Files are made to collide through symlinks, hard links, case and `.`/`..`."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper
from typer.testing import CliRunner

from convopt.cli import app
from convopt.outputs import OutputTarget, looks_like

from tests.faults import count, no_temporaries, print_counts, snapshot
from tests.helpers import conv_model

runner = CliRunner()
CASES: Counter[str] = Counter()


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """m.onnx (a 3x3 conv), d.npz (its data), an existing convopt output o.onnx and report r.json."""
    m = conv_model(cin=4, cout=8, k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(8, 8))
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 4, 8, 8), np.float32))
    r = runner.invoke(app, ["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--no-eval", "-q",
                            "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    return tmp_path


def _refused(args: list[str], folder: Path, needle: str, row: str) -> str:
    before = snapshot(folder)
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (args, r.output)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, r.output)
    assert snapshot(folder) == before, "a user's file changed"
    assert no_temporaries(folder) == []
    count(CASES, row)
    return lines[0]


def test_row1_latency_cache_onto_the_model_or_data(work: Path) -> None:
    m, d = str(work / "m.onnx"), str(work / "d.npz")
    base = ["optimize", m, "--data", d, "-o", str(work / "new.onnx")]
    _refused(base + ["--latency-cache", m], work, "is the input model", "row1")
    _refused(base + ["--latency-cache", d], work, "is the --data input", "row1")
    _refused(base + ["--latency-cache", str(work / "o.onnx")], work, "is not a convopt latency cache", "row1")
    for text in ("[1,2,3]", '{"k": null}', "not json at all"):
        (work / "c.json").write_text(text)
        _refused(base + ["--latency-cache", str(work / "c.json")], work, "is not a convopt latency cache", "row13")
    (work / "cdir").mkdir()
    _refused(base + ["--latency-cache", str(work / "cdir")], work, "is a folder", "row13")


def test_row13_a_cache_that_looks_like_one_but_is_damaged_is_exit_2(work: Path) -> None:
    """The guard lets a file that starts like a cache through; its content is then checked before any work."""
    c = work / "c.json"
    c.write_text('{"conv:1,2": null}')
    _refused(["optimize", str(work / "m.onnx"), "--data", str(work / "d.npz"), "-o", str(work / "n.onnx"),
              "--latency-cache", str(c)], work, "not a time in ms", "row13")


def _external_model(folder: Path, location: str) -> Path:
    m = conv_model(cin=8, cout=8, k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(8, 8))
    external_data_helper.convert_model_to_external_data(m, all_tensors_to_one_file=True, location=location,
                                                        size_threshold=0)
    p = folder / "ext.onnx"
    onnx.save_model(m, str(p))
    assert (folder / location).is_file()
    return p


def test_row2_outputs_onto_the_inputs_external_data(tmp_path: Path) -> None:
    p = _external_model(tmp_path, "w.bin")
    w = str(tmp_path / "w.bin")
    _refused(["optimize", str(p), "-o", w, "--no-eval"], tmp_path, "external-data file of the input model", "row2")
    _refused(["optimize", str(p), "-o", w, "--no-eval", "--overwrite"], tmp_path, "external-data file", "row2")
    _refused(["optimize", str(p), "-o", str(tmp_path / "n.onnx"), "--no-eval", "--report", w], tmp_path,
             "external-data file", "row2")
    link = tmp_path / "link.bin"
    link.symlink_to(tmp_path / "w.bin")
    _refused(["optimize", str(p), "-o", str(link), "--no-eval", "--overwrite"], tmp_path, "external-data file", "row2")
    # onnx itself refuses a hard-linked external-data file: that is an input error too, exit 2
    os.link(tmp_path / "w.bin", tmp_path / "hard.bin")
    _refused(["optimize", str(p), "-o", str(tmp_path / "n.onnx"), "--no-eval"], tmp_path, "hard links", "row13")


def test_row2_in_place_overwrite_refused_when_the_data_file_would_be_replaced(tmp_path: Path) -> None:
    p = _external_model(tmp_path, "ext.onnx.data")
    _refused(["optimize", str(p), "-o", str(p), "--no-eval", "--overwrite"], tmp_path,
             "external-data file of the input model", "row2")


def test_row9_rendered_report_onto_a_model_or_the_report(work: Path) -> None:
    r = str(work / "r.json")
    _refused(["report", r, "--format", "html", "-o", str(work / "m.onnx")], work, "is not a report rendered", "row9")
    _refused(["report", r, "--format", "md", "-o", r], work, "is the report being rendered", "row9")
    _refused(["report", r, "--format", "md", "-o", r, "--overwrite"], work, "is the report being rendered", "row9")
    link = work / "link.json"
    link.symlink_to(work / "r.json")
    _refused(["report", r, "-o", str(link)], work, "is the report being rendered", "row9")
    # what convopt rendered may be replaced by any other rendering; anything else only with --overwrite
    for fmt in ("md", "html", "table", "md"):
        res = runner.invoke(app, ["report", r, "--format", fmt, "-o", str(work / "page.out")])
        assert res.exit_code == 0, res.output
        assert looks_like("md", work / "page.out")
    res = runner.invoke(app, ["report", r, "--format", "html", "-o", str(work / "m.onnx"), "--overwrite"])
    assert res.exit_code == 0 and (work / "m.onnx").read_text().startswith("<!DOCTYPE html>")
    count(CASES, "row9")


def test_row10_replaced_output_gets_default_permissions(work: Path) -> None:
    out = work / "o.onnx"
    out.chmod(0o4755)
    old = os.umask(0o022)
    try:
        r = runner.invoke(app, ["optimize", str(work / "m.onnx"), "-o", str(out), "--no-eval", "-q",
                                "--report", str(work / "r.json")])
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert out.stat().st_mode & 0o7777 == 0o644
    assert (work / "r.json").stat().st_mode & 0o7777 == 0o644
    count(CASES, "row10")


def test_row11_trailing_slash_or_folder_is_refused(work: Path) -> None:
    (work / "opts").mkdir()
    m = str(work / "m.onnx")
    _refused(["optimize", m, "-o", str(work / "opts" / "newdir") + "/", "--no-eval"], work, "names a folder", "row11")
    assert not (work / "opts" / "newdir").exists()
    _refused(["optimize", m, "-o", str(work / "opts") + "/", "--no-eval"], work, "names a folder", "row11")
    _refused(["optimize", m, "-o", str(work / "opts"), "--no-eval"], work, "is a folder", "row11")
    _refused(["optimize", m, "-o", str(work / "n.onnx"), "--report", str(work / "opts") + "/", "--no-eval"], work,
             "names a folder", "row11")
    _refused(["report", str(work / "r.json"), "--format", "md", "-o", str(work / "x") + "/"], work, "names a folder",
             "row11")
    _refused(["optimize", m, "-o", str(work / "missing" / "n.onnx"), "--no-eval"], work, "output folder does not exist",
             "row11")


def test_collisions_through_links_case_and_dots(work: Path) -> None:
    m = work / "m.onnx"
    (work / "sym.onnx").symlink_to(m)
    os.link(m, work / "hard.onnx")
    dotted = work / "sub" / ".." / "m.onnx"
    (work / "sub").mkdir()
    for target in (work / "sym.onnx", work / "hard.onnx", dotted):
        _refused(["optimize", str(m), "-o", str(target), "--no-eval"], work, "refusing to overwrite the input model",
                 "collide")
        _refused(["optimize", str(m), "-o", str(work / "n.onnx"), "--report", str(target), "--no-eval"], work,
                 "is the input model", "collide")
    n = str(work / "n.onnx")
    _refused(["optimize", str(m), "-o", n, "--report", n, "--no-eval"], work, "are the same file", "collide")
    _refused(["optimize", str(m), "-o", n, "--report", str(work / "N.ONNX"), "--no-eval"], work, "are the same file",
             "collide")
    _refused(["optimize", str(m), "-o", n, "--report", n + ".data", "--no-eval"], work, "are the same file", "collide")
    os.link(work / "d.npz", work / "d2.npz")
    _refused(["optimize", str(m), "--data", str(work / "d.npz"), "--report", str(work / "d2.npz"), "-o", n],
             work, "is the --data input", "collide")
    os.mkfifo(work / "fifo")
    _refused(["optimize", str(m), "-o", str(work / "fifo"), "--no-eval", "--overwrite"], work, "not a regular file",
             "collide")


def test_existing_files_of_another_kind_need_overwrite(work: Path) -> None:
    m = str(work / "m.onnx")
    notes = work / "notes.txt"
    notes.write_text("my notes\n")
    _refused(["optimize", m, "-o", str(notes), "--no-eval"], work, "is not an ONNX model", "kind")
    _refused(["optimize", m, "-o", str(work / "n.onnx"), "--report", str(notes), "--no-eval"], work,
             "is not a convopt JSON report", "kind")
    _refused(["optimize", m, "-o", str(work / "n.onnx"), "--report", str(work / "o.onnx"), "--no-eval"], work,
             "is not a convopt JSON report", "kind")
    (work / "cfg.json").write_text(json.dumps({"model": "resnet", "lr": 0.1}))
    _refused(["optimize", m, "-o", str(work / "n.onnx"), "--report", str(work / "cfg.json"), "--no-eval"], work,
             "is not a convopt JSON report", "kind")
    # convopt's own outputs are replaced, and --overwrite replaces anything that is not an input
    r = runner.invoke(app, ["optimize", m, "-o", str(work / "o.onnx"), "--report", str(work / "r.json"), "--no-eval",
                            "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["optimize", m, "-o", str(notes), "--no-eval", "-q", "--overwrite"])
    assert r.exit_code == 0 and looks_like("model", notes), r.output
    count(CASES, "kind", 2)


def test_stale_temporaries_of_dead_runs_are_removed_and_said(work: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = work / f".convopt-{pid}-o.onnx.tmp"
    stale.write_bytes(b"half a model")
    live = work / ".convopt-1-o.onnx.tmp"  # pid 1 is alive: another run's file, left alone
    live.write_bytes(b"x")
    r = runner.invoke(app, ["optimize", str(work / "m.onnx"), "-o", str(work / "o.onnx"), "--no-eval"])
    assert r.exit_code == 0, r.output
    said = [line for line in r.output.splitlines() if "temporary file" in line]
    assert said == [f"removed 1 temporary file(s) left by a stopped convopt run: {stale}"], r.output
    assert not stale.exists() and live.exists()
    count(CASES, "stale")


def test_target_spelling_keeps_the_trailing_separator() -> None:
    assert OutputTarget.of("a/b/", "model", "-o").folder_syntax
    assert not OutputTarget.of(Path("a/b/"), "model", "-o").folder_syntax  # a Path has lost it: pass the str
    assert not OutputTarget.of("a/b", "model", "-o").folder_syntax


def test_print_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this file: how many refused cases ran, per row."""
    if not CASES:
        pytest.skip("the cases above were deselected")
    print_counts(capsys, "write guard", CASES)
    assert CASES["row1"] >= 3 and CASES["row2"] >= 4 and CASES["row11"] >= 5, dict(CASES)
