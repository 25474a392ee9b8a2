"""inspect: the header (inputs, opset, dynamic dimensions), MAC shares and the rewritable share, unknown MACs
shown as unknown, --sort, --latency (ORT's profiler), load warnings, and tables that fit 80 and 120 columns."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from typer.testing import CliRunner

from convopt.cli import app
from convopt.inspect import inspect_model, with_latency
from convopt.measure.ort import OrtSettings
from convopt.render.figures import fmt_count
from convopt.render.inspect_view import render_inspect
from tests.helpers import NO_SHARED, SHARED_MODELS

runner = CliRunner()
WIDTHS = (80, 120)


def three_convs(hw: tuple[int | str, int | str] = (32, 24)) -> onnx.ModelProto:
    """x (1, 8, H, W) → Conv3x3 8→16 → Relu → Conv1x1 16→128 → Relu → grouped Conv1x1 (16 groups) → y: no pass
    rewrites the last one; the second costs most.
    ``hw`` as names makes the spatial size dynamic."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w1", (16, 8, 3, 3)), ("w2", (128, 16, 1, 1)), ("w3", (128, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="first3x3", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w2"], ["b"], name="wide1x1"),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("Conv", ["br", "w3"], ["y"], name="grouped", group=16)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128, *hw])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tests")
    m.ir_version = 8
    return m


def save(tmp_path: Path, m: onnx.ModelProto, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return p


def shown(result, width: int, sort: str = "graph") -> str:  # type: ignore[no-untyped-def]
    console = Console(file=io.StringIO(), record=True, width=width, color_system=None, force_terminal=True)
    render_inspect(result, Path("m.onnx"), console, sort)
    return console.export_text()


def test_shares_and_what_can_be_rewritten() -> None:
    r = inspect_model(three_convs())
    macs = {row.name: row.macs for row in r.rows}
    assert macs == {"first3x3": 16 * 8 * 9 * 32 * 24, "wide1x1": 128 * 16 * 32 * 24, "grouped": 128 * 8 * 32 * 24}
    assert r.total_macs == sum(macs.values())
    assert sum(row.macs_share for row in r.rows) == pytest.approx(1.0)  # type: ignore[misc]
    rewritable = {row.name: row.rewritable for row in r.rows}
    assert rewritable == {"first3x3": True, "wide1x1": True, "grouped": False}
    assert r.rewritable_share == pytest.approx((macs["first3x3"] + macs["wide1x1"]) / r.total_macs)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["totals"]["rewritable"] == 2 and d["totals"]["rewritable_macs_share"] == pytest.approx(r.rewritable_share)
    assert d["model"]["opset"] == 13 and d["model"]["inputs"][0]["declared"] == [1, 8, 32, 24]
    assert [c["rewritable"] for c in d["convs"]] == [True, True, False]


def test_unknown_macs_are_unknown_and_say_which_dimension(tmp_path: Path) -> None:
    src = save(tmp_path, three_convs(hw=("height", "width")))
    r = inspect_model(onnx.load(str(src)))
    assert r.total_macs is None and all(row.macs is None and row.macs_share is None for row in r.rows)
    assert json.loads(json.dumps(r.to_dict()))["totals"]["macs"] is None  # never 0
    res = runner.invoke(app, ["inspect", str(src)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "dynamic: x axis 2 (height): MACs unknown for 3 layers; give it with --input-shape x:1x8x224x224" in out
    assert "dynamic: x axis 3 (width)" in out and "conv MACs: unknown" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[1] == "unknown"  # the MACs cell of the total row: never 0
    rows = [line for line in out.splitlines() if line.split()[:1] in (["first3x3"], ["wide1x1"], ["grouped"])]
    assert len(rows) == 3 and all(re.search(r"→unknown\s+unknown\s", line) for line in rows), rows
    res = runner.invoke(app, ["inspect", str(src), "--input-shape", "x:1x8x32x24"])
    assert "dynamic" not in res.output and fmt_count(inspect_model(three_convs()).total_macs) in res.output


def test_header_names_inputs_opset_and_a_dynamic_batch(tmp_path: Path) -> None:
    m = three_convs()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    res = runner.invoke(app, ["inspect", str(save(tmp_path, m))])
    assert res.exit_code == 0, res.output
    assert "m.onnx: 3 conv layers, opset 13, IR 8, from tests" in res.output
    assert "input x: float32 [N, 8, 32, 24], shapes computed at 1x8x32x24" in res.output
    assert "dynamic: x axis 0 (N) is the batch: counted as 1" in res.output


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("latency", [False, True])
def test_table_fits_and_cuts_no_number(width: int, latency: bool) -> None:
    m = three_convs()
    r = inspect_model(m)
    if latency:
        r = with_latency(r, m, OrtSettings(threads=1), seconds=0.2)
    out = shown(r, width)
    assert max(len(line) for line in out.splitlines()) <= width, out
    assert "…" not in out
    for row in r.rows:
        assert fmt_count(row.macs) in out and f"{100 * row.macs_share:.1f}" in out  # type: ignore[operator]
    for header in ("in→out", "kernel→output", "MACs %", "params") + (("time %",) if latency else ()):
        assert header in out
    assert ("bn" in out and "dw" in out) and "passes: bn = bottleneck" in out


def test_wide_table_has_a_column_per_pass_and_numbered_reasons() -> None:
    out = shown(inspect_model(three_convs()), 200)
    row = next(line for line in out.splitlines() if line.startswith("grouped"))
    assert row.count("no [") == 5 and "yes" not in row
    reasons = re.findall(r"^  \[(\d+)\] (.+)$", out, re.M)
    assert reasons and all(f"[{k}]" in out.split("passes:")[0] for k, _ in reasons)


def test_sort_by_macs_puts_the_costliest_first() -> None:
    out = shown(inspect_model(three_convs()), 200, sort="macs")
    order = [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["first3x3"], ["wide1x1"],
                                                                                   ["grouped"])]
    assert order == ["wide1x1", "first3x3", "grouped"]  # 1.57M, 885k, 786k MACs


def test_latency_shares_every_conv(tmp_path: Path) -> None:
    m = three_convs(hw=(64, 48))
    r = with_latency(inspect_model(m), m, OrtSettings(threads=1), seconds=0.3)
    assert r.latency is not None and r.latency["runs"] >= 3 and r.latency["total_ms"] > 0
    assert all(row.time_ms and row.time_ms > 0 and 0 < row.time_share <= 1 for row in r.rows)  # type: ignore[operator]
    assert sum(row.time_share for row in r.rows) <= 1 + 1e-9  # type: ignore[misc]
    assert r.latency["conv_ms"] == pytest.approx(sum(row.time_ms for row in r.rows))  # type: ignore[misc]
    src = save(tmp_path, m)
    res = runner.invoke(app, ["inspect", str(src), "--latency", "--threads", "1", "--sort", "time"])
    assert res.exit_code == 0 and "time %" in res.output and "time (ORT profiler," in res.output, res.output
    res = runner.invoke(app, ["inspect", str(src), "--sort", "time"])
    assert res.exit_code == 2 and "--sort time needs --latency" in res.output
    res = runner.invoke(app, ["inspect", str(src), "--sort", "size"])
    assert res.exit_code == 2 and "--sort must be graph, macs or time" in res.output


def test_latency_of_a_dynamic_model_names_the_input_shape(tmp_path: Path) -> None:
    src = save(tmp_path, three_convs(hw=("height", "width")))
    res = runner.invoke(app, ["inspect", str(src), "--latency"])
    assert res.exit_code == 2 and "--input-shape" in res.output and len(res.output.strip().splitlines()) == 1


def test_load_warnings_are_one_line_each(tmp_path: Path) -> None:
    m = three_convs()
    m.graph.output[0].ClearField("type")
    res = runner.invoke(app, ["inspect", str(save(tmp_path, m))])
    assert res.exit_code == 0, res.output
    warning = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert warning == ["warning: graph output 'y' declared no type; filled in by shape inference as float "
                       "[1, 128, 32, 24] (onnx.checker requires one)"]


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_real_models_every_conv_gets_its_time() -> None:
    for name, shapes in (("squeezenet1.1.onnx", None), ("ddddocr-ocr.onnx", {"input1": (1, 1, 64, 160)})):
        m = onnx.load(str(SHARED_MODELS / name))
        r = with_latency(inspect_model(m, shapes), m, OrtSettings(threads=1), shapes, seconds=0.5)
        assert all(row.time_ms for row in r.rows), [row.name for row in r.rows if not row.time_ms]
        assert r.total_macs and r.latency and 0 < r.latency["conv_ms"] <= r.latency["total_ms"]


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
@pytest.mark.parametrize("width", WIDTHS)
def test_real_squeezenet_table_fits(width: int) -> None:
    r = inspect_model(onnx.load(str(SHARED_MODELS / "squeezenet1.1.onnx")))
    out = shown(r, width, sort="macs")
    assert max(len(line) for line in out.splitlines()) <= width and "21.3M" in out and "…" not in out
    assert "some pass can rewrite 26 of 26 layers, 100.0 % of the conv MACs" in out.replace("\n", " ")
