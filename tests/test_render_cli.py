"""The CLI around rendering: progress that stays one line per event in a pipe, the tables after optimize,
`report -o` in every format (chosen by the suffix), `report A B`, and load warnings in optimize."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from convopt.cli import app
from tests.helpers import conv_model

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real optimize run on a small model (uniform, seeded random data): its folder and what it printed."""
    d = tmp_path_factory.mktemp("run")
    (d / "m.onnx").write_bytes(conv_model(cin=16, cout=32, k=(5, 5), pads=(2, 2, 2, 2), batch=1,
                                          hw=(16, 16)).SerializeToString())
    r = runner.invoke(app, ["optimize", str(d / "m.onnx"), "-o", str(d / "o.onnx"), "--report", str(d / "r.json"),
                            "--passes", "factorize,split5x5", "--rank-fraction", "0.5", "--repeats", "2",
                            "--warmup", "1"])
    assert r.exit_code == 0, r.output
    return d, r.output


def test_progress_is_one_line_per_event_in_a_pipe(run: tuple[Path, str]) -> None:
    _, output = run
    lines = output.splitlines()
    event = next(line for line in lines if line.startswith("[1/2] factorize: rolled_back"))
    assert len(event) > 80 and "over --max-rel-error 0.05 (default)" in event  # the whole event and reason, one line
    for prefix in ("[1/2] factorize: rewriting", "[2/2] split5x5: no_change", "report: measuring the final model"):
        assert any(line.startswith(prefix) for line in lines), prefix


def test_optimize_prints_the_verdict_and_the_steps(run: tuple[Path, str]) -> None:
    _, output = run
    assert "verdict: budget relative L2 error ≤ 0.05 at 95% confidence (default): certified on 8 select samples" \
        in output
    assert "factorize rolled back" in output and "rel. error" in output and "wrote " in output


@pytest.mark.parametrize("suffix,first", [(".html", "<!DOCTYPE html>"), (".htm", "<!DOCTYPE html>"),
                                          (".md", "# convopt report\n"), (".txt", "convopt report\n")])
def test_report_o_writes_the_format_its_suffix_names(run: tuple[Path, str], suffix: str, first: str) -> None:
    d, _ = run
    out = d / f"page{suffix}"
    r = runner.invoke(app, ["report", str(d / "r.json"), "-o", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    assert text.startswith(first) and "factorize" in text
    r = runner.invoke(app, ["report", str(d / "r.json"), "--format", "md", "-o", str(out)])  # --format wins
    assert r.exit_code == 0 and out.read_text(encoding="utf-8").startswith("# convopt report\n")


def test_report_compares_two_runs(run: tuple[Path, str], tmp_path: Path) -> None:
    d, _ = run
    other = json.loads((d / "r.json").read_text())
    other["settings"]["seed"] = 7
    (tmp_path / "b.json").write_text(json.dumps(other))
    r = runner.invoke(app, ["report", str(d / "r.json"), str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    assert "settings that differ" in r.output and "seed" in r.output and "final model (report data)" in r.output
    for fmt, first in (("md", "# convopt report\n"), ("html", "<!DOCTYPE html>")):
        r = runner.invoke(app, ["report", str(d / "r.json"), str(tmp_path / "b.json"), "--format", fmt])
        assert r.exit_code == 0 and r.output.startswith(first), r.output
    r = runner.invoke(app, ["report", str(d / "r.json"), str(tmp_path / "b.json"), str(d / "r.json")])
    assert r.exit_code == 2 and "takes one report, or two to compare; got 3" in r.output
    r = runner.invoke(app, ["report", str(d / "r.json"), "--format", "pdf"])
    assert r.exit_code == 2 and "--format must be table, md or html" in r.output


def test_optimize_prints_load_warnings_in_one_line(tmp_path: Path) -> None:
    m = conv_model(cin=4, cout=8, batch=1, hw=(9, 9), pads=(1, 1, 1, 1))
    m.graph.output[0].ClearField("type")
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    r = runner.invoke(app, ["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--no-eval",
                            "--full-rank"])
    assert r.exit_code == 0, r.output
    assert ("warning: graph output 'z' declared no type; filled in by shape inference as float [1, 8, 9, 9] "
            "(onnx.checker requires one)") in r.output.splitlines()
    assert "verdict: nothing was measured (--no-eval)" in r.output
