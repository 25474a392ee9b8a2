"""Reports are safe to open: node and tensor names come from the model, so every view escapes them (HTML,
Markdown, the terminal table) and the JSON report stays valid whatever the names contain."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from convopt.cli import app

runner = CliRunner()

SCRIPT = '<script>alert("conv")</script>'
IMG = "x<img src=x onerror=alert(1)>"
MARKUP = "[bold red]markup[/] & 'q' \"qq\" | pipe\nnew line\ttab \u2028 \x01 ✓ 中文"
MDLINK = "[click me](javascript:alert(1))"
HOSTILE = [SCRIPT, IMG, MARKUP, MDLINK]


def hostile_model() -> onnx.ModelProto:
    """input → 5×5 conv (split5x5/factorize apply) → 1×1 conv (skipped) → 3×3 conv → Relu; every name hostile."""
    rng = np.random.default_rng(0)
    x, y = IMG, f"out {SCRIPT}"
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4, 5, 5)).astype(np.float32), f"W1 {SCRIPT}"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), f"W2 {MARKUP}"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), f"W3 {MDLINK}"),
    ]
    nodes = [
        helper.make_node("Conv", [x, inits[0].name], [f"t1 {MARKUP}"], name=SCRIPT, kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
        helper.make_node("Conv", [f"t1 {MARKUP}", inits[1].name], [f"t2 {IMG}"], name=MARKUP, kernel_shape=[1, 1]),
        helper.make_node("Conv", [f"t2 {IMG}", inits[2].name], [f"t3 {MDLINK}"], name=MDLINK,
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", [f"t3 {MDLINK}"], [y], name=IMG),
    ]
    g = helper.make_graph(nodes, SCRIPT, [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 12, 12])],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 8, 12, 12])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name=SCRIPT)
    m.ir_version = 8
    m.doc_string = SCRIPT
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    src = d / "m.onnx"
    src.write_bytes(hostile_model().SerializeToString())
    rep = d / "r.json"
    r = runner.invoke(app, ["optimize", str(src), "-o", str(d / "o.onnx"), "--report", str(rep),
                            "--passes", "split5x5,factorize,bottleneck", "--full-rank", "--keep-slower",
                            "--warmup", "1", "--repeats", "2", "-q"])
    assert r.exit_code == 0, r.output
    return rep


def _names_in(d: object) -> set[str]:
    out: set[str] = set()
    if isinstance(d, dict):
        for k, v in d.items():
            if k == "node" and isinstance(v, str):
                out.add(v)
            out |= _names_in(v)
    elif isinstance(d, list):
        for v in d:
            out |= _names_in(v)
    return out


def test_json_report_valid_and_names_round_trip(report_file: Path) -> None:
    text = report_file.read_text(encoding="utf-8")
    d = json.loads(text)
    assert {SCRIPT, MARKUP, MDLINK} <= _names_in(d), _names_in(d)
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_html_report_escapes_every_model_string(report_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    r = runner.invoke(app, ["report", str(report_file), "--format", "html", "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    from convopt.render.html import SCRIPT  # the page's one script is the renderer's own, fixed text

    assert page.lower().count("<script") == 1 and f"<script>{SCRIPT}</script>" in page, \
        "a model-controlled <script> reached the HTML"
    assert "<img" not in page.lower()
    assert "&lt;script&gt;alert(" in page, "the hostile node name should appear, escaped"
    # every tag in the page is one the renderer wrote, never one from a name
    tags = {t.lower() for t in re.findall(r"<\s*([a-zA-Z][a-zA-Z0-9]*)", page)}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "table", "thead",
                    "tbody", "tr", "th", "td", "svg", "rect", "text", "line", "g", "circle", "ul", "li", "div",
                    "span", "code", "b", "strong", "em", "small", "details", "summary", "pre", "section", "script"}, tags


def test_markdown_report_has_no_raw_html(report_file: Path) -> None:
    r = runner.invoke(app, ["report", str(report_file), "--format", "md"])
    assert r.exit_code == 0, r.output
    assert "<script" not in r.output.lower() and "<img" not in r.output.lower()


def test_markdown_report_does_not_make_links_from_names(report_file: Path) -> None:
    r = runner.invoke(app, ["report", str(report_file), "--format", "md"])
    assert "](javascript:" not in r.output


def test_markdown_table_rows_keep_their_column_count(report_file: Path) -> None:
    r = runner.invoke(app, ["report", str(report_file), "--format", "md"])
    lines = r.output.split("\n")  # Markdown line ends are \n only (str.splitlines would also split on U+2028)
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            ncol = len(re.split(r"(?<!\\)\|", lines[i]))
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                assert len(re.split(r"(?<!\\)\|", lines[i])) == ncol, lines[i]
                i += 1
        i += 1


def test_terminal_table_does_not_interpret_markup_in_names(report_file: Path) -> None:
    r = runner.invoke(app, ["report", str(report_file)])
    assert r.exit_code == 0, r.output
    assert MDLINK in r.output, "rich markup inside a node name was interpreted"


def test_inspect_json_with_hostile_names(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(hostile_model().SerializeToString())
    r = runner.invoke(app, ["inspect", str(src), "--json"])
    assert r.exit_code == 0, r.output
    names = [c["name"] for c in json.loads(r.output)["convs"]]
    assert names == [SCRIPT, MARKUP, MDLINK]


def test_inspect_table_does_not_interpret_markup_in_names(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(hostile_model().SerializeToString())
    r = runner.invoke(app, ["inspect", str(src)], terminal_width=400)
    assert r.exit_code == 0, r.output
    assert "[click me](javascript:alert(1))" in r.output
    assert "[bold red]markup[/]" in r.output
