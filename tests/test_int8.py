"""--quantize int8: every step judged and timed as INT8, the model written is INT8, and the report has the
original and optimized models at FP32 and INT8, timed in one run, on the report data."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from convopt.cli import app
from convopt.models.example import example_data_path, example_model_path
from convopt.render import validate_report

runner = CliRunner()


def _qdq(model: onnx.ModelProto) -> int:
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def test_uniform_int8_writes_a_quantized_model_and_four_rows(tmp_path: Path) -> None:
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    r = runner.invoke(app, ["optimize", str(example_model_path()), "-o", str(out), "--data",
                            str(example_data_path()), "--strategy", "uniform", "--passes", "factorize",
                            "--full-rank", "--quantize", "int8", "--force-quantize", "--keep-slower",
                            "--max-accuracy-drop", "5", "--repeats", "3", "--report", str(rep), "-q"])
    assert r.exit_code == 0, r.output
    assert _qdq(onnx.load(str(out))) > 0
    d = json.loads(rep.read_text())
    validate_report(d)
    rows = [(p["model"], p["precision"]) for p in d["precisions"]]
    assert rows == [("original", "fp32"), ("original", "int8"), ("optimized", "fp32"), ("optimized", "int8")]
    medians = {p["measurement"]["latency"]["original"]["median_ms"] for p in d["precisions"]}
    assert len(medians) == 1  # all four timed in one run, against one baseline
    assert all(p["measurement"]["role"] == "report" for p in d["precisions"][1:])
    assert d["settings"]["quantize"] == "int8" and d["settings"]["data"]["fit"] is not None


@pytest.mark.parametrize("flags", [["--no-eval"], ["--quantize", "int4"]])
def test_int8_option_errors_are_exit_2(tmp_path: Path, flags: list[str]) -> None:
    args = ["optimize", str(example_model_path()), "-o", str(tmp_path / "o.onnx"), "-q"]
    if flags[0] == "--no-eval":
        flags = ["--quantize", "int8", "--no-eval"]
    r = runner.invoke(app, args + flags)
    assert r.exit_code == 2 and "--quantize" in r.output


def test_int8_that_breaks_the_budget_alone_writes_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback writes the quantized original, which no step decision checks: INT8 is deployed only when the
    quantized original is itself certified within the budget on the select data (else FP32, with a warning;
    --force-quantize writes INT8 anyway). INT8's own error is far above a 1e-4 relative-error budget."""
    import convopt.quantize

    monkeypatch.setattr(convopt.quantize, "int8_supported", lambda *_a, **_k: None)  # INT8 faster here
    args = ["optimize", str(example_model_path()), "--data", str(example_data_path()), "--strategy", "uniform",
            "--passes", "factorize", "--quantize", "int8", "--max-rel-error", "0.0001", "--repeats", "3"]
    out = tmp_path / "o.onnx"
    r = runner.invoke(app, [*args, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "INT8 alone breaks the budget" in r.output and "writing FP32" in r.output
    assert _qdq(onnx.load(str(out))) == 0
    forced = tmp_path / "f.onnx"
    r = runner.invoke(app, [*args, "-o", str(forced), "--force-quantize"])
    assert r.exit_code == 0, r.output
    assert "INT8 alone breaks the budget" not in r.output
    assert _qdq(onnx.load(str(forced))) > 0
