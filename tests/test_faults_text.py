"""Fault injection, issue 15 rows 4 and 16 and item 3: a model's bytes never reach a terminal raw.

Names holding ESC sequences, BEL, a right-to-left override, C1 CSI, zero-width characters and newlines go
through inspect (table and JSON), optimize, report (table, Markdown, HTML) and error messages: what is
printed or written holds none of them raw, each shows escaped, and every error is one line. Long names are
shortened with a hash in tables and stay distinct. Under -q nothing but errors is printed, the onnx
checker's std::cout warning on candy-style.onnx included."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from convopt.cli import app
from convopt.errors import DataError
from convopt.text import cell, json_safe, one_line, safe

from tests.faults import HOSTILE_NAMES, RAW_FORBIDDEN, count, named_model, print_counts
from tests.helpers import NO_SHARED, SHARED_MODELS

runner = CliRunner()
CASES: Counter[str] = Counter()
LONG = ["n" * 300 + "a", "n" * 300 + "b"]


def _clean(text: str, where: str) -> None:
    for ch in RAW_FORBIDDEN:
        assert ch not in text, f"raw {ch!r} in {where}"
    count(CASES, "row4")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    (d / "h.onnx").write_bytes(named_model(HOSTILE_NAMES + LONG).SerializeToString())
    r = runner.invoke(app, ["optimize", str(d / "h.onnx"), "-o", str(d / "o.onnx"), "--report", str(d / "r.json"),
                            "--passes", "factorize", "--full-rank", "--keep-slower", "--repeats", "2", "--warmup", "1"])
    assert r.exit_code == 0, r.output
    _clean(r.output, "optimize output")
    assert "conv\\x1b[2J\\x1b]0;PWNED\\x07" in r.output
    _clean((d / "r.json").read_text(encoding="utf-8"), "the JSON report")  # \uXXXX escapes, same values
    nodes = {p["node"] for p in json.loads((d / "r.json").read_text())["passes"][-1]["rewritten"]}
    assert nodes and nodes <= set(HOSTILE_NAMES + LONG)
    return d


def test_row4_inspect_table_and_json(hostile: Path) -> None:
    r = runner.invoke(app, ["inspect", str(hostile / "h.onnx")])
    assert r.exit_code == 0, r.output
    _clean(r.output, "inspect table")
    for shown in ("conv\\u202eevil", "convline1\\nline2", "conv\\x9b31m\\u200b\\ufeff"):
        assert shown in r.output
    short = [cell(n) for n in LONG]
    assert short[0] != short[1] and all(s[:150] in r.output.replace("\n", "") or "#" in s for s in short)
    r = runner.invoke(app, ["inspect", str(hostile / "h.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    _clean(r.stdout, "inspect --json")
    names = [c["name"] for c in json.loads(r.stdout)["convs"]]
    assert names == HOSTILE_NAMES + LONG, "the JSON keeps the names exactly (escaped as JSON)"


@pytest.mark.parametrize("fmt", ["table", "md", "html"])
def test_row4_report_views_and_files(hostile: Path, fmt: str) -> None:
    r = runner.invoke(app, ["report", str(hostile / "r.json"), "--format", fmt])
    assert r.exit_code == 0, r.output
    _clean(r.output, f"report --format {fmt}")
    out = hostile / f"page.{fmt}"
    r = runner.invoke(app, ["report", str(hostile / "r.json"), "--format", fmt, "-o", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    _clean(text, f"the {fmt} file")
    assert "PWNED" in text and "\\u202e" in text
    for name in LONG:
        assert cell(name) in text.replace("\n", "") or fmt == "table"


def test_row4_row16_error_messages_are_one_escaped_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / f"m{HOSTILE_NAMES[0]}\n.onnx"
    r = runner.invoke(app, ["inspect", str(bad)])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    _clean(r.output, "missing-file error")
    assert "\\x1b[2J" in r.output and "\\n.onnx" in r.output
    # a checker error that quotes a hostile node name
    m = named_model(HOSTILE_NAMES[:2])
    m.graph.node[1].input[0] = f"undefined{HOSTILE_NAMES[2]}"
    (tmp_path / "bad.onnx").write_bytes(m.SerializeToString())
    for cmd in (["inspect", str(tmp_path / "bad.onnx")], ["optimize", str(tmp_path / "bad.onnx"), "--no-eval"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: "), r.output
        _clean(r.output, "checker error")
    # an ORT-style message with inner newlines and trailing blank lines
    import convopt.api

    def ort_fails(*_a: object, **_k: object) -> None:
        raise DataError("[ONNXRuntimeError] : 1 : FAIL : bad node 'x\ny'\n\n\n")

    monkeypatch.setattr(convopt.api, "optimize_model", ort_fails)
    (tmp_path / "ok.onnx").write_bytes(named_model(["c"]).SerializeToString())
    r = runner.invoke(app, ["optimize", str(tmp_path / "ok.onnx"), "--no-eval", "-q"])
    assert r.exit_code == 2 and r.output == "error: [ONNXRuntimeError] : 1 : FAIL : bad node 'x\\ny'\n", r.output
    count(CASES, "row16", 3)


def test_safe_escapes_every_non_printable_and_nothing_else() -> None:
    assert safe("plain name/with:punct [x] 中文 ✓ é") == "plain name/with:punct [x] 中文 ✓ é"
    assert safe("\x1b[2J\x07\x00\x7f") == "\\x1b[2J\\x07\\x00\\x7f"
    assert safe("a\u202eb\u2066c\u200bd\ufeff\u2028\x9b") == "a\\u202eb\\u2066c\\u200bd\\ufeff\\u2028\\x9b"
    assert safe("tab\there\r\n") == "tab\\there\\r\\n"
    assert safe("\U000e0001 \udcff") == "\\U000e0001 \\udcff"  # a tag character; a lone surrogate
    assert one_line("  error\n\n") == "error"
    assert json.loads(json_safe(json.dumps({"k\u202e": "v\x9b\U000e0001"}, ensure_ascii=False))) == {
        "k\u202e": "v\x9b\U000e0001"}
    long = "x" * 500
    assert len(cell(long)) == 200 and cell(long) != cell(long + "y") and cell("short") == "short"
    count(CASES, "text", 7)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "convopt.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_row16_quiet_prints_nothing_not_even_the_onnx_checker(tmp_path: Path) -> None:
    """candy-style.onnx makes onnx's C++ checker print "Model contains experimental ops" on std::cout."""
    candy = str(SHARED_MODELS / "candy-style.onnx")
    r = _run_cli("optimize", candy, "-o", str(tmp_path / "c.onnx"), "--no-eval", "-q", "--passes", "factorize",
                 "--rank-fraction", "0.25")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
    r = _run_cli("inspect", candy, "--json")
    assert r.returncode == 0
    json.loads(r.stdout)  # stdout is the JSON alone
    assert r.stderr.splitlines() == [
        "warning: onnx checker: Model contains experimental ops: Affine, Crop, ImageScaler"], r.stderr
    count(CASES, "row16", 2)


def test_print_counts(capsys: pytest.CaptureFixture[str]) -> None:
    if not CASES:
        pytest.skip("the cases above were deselected")
    print_counts(capsys, "escaping", CASES)
