"""Determinism: the same model, data, options and seed give a byte-identical output model and identical
reported accuracy (latency figures aside), so CI can diff results."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from convopt.cli import app

from tests.helpers import NO_SHARED, SHARED_MODELS, conv_model, strip_keys

runner = CliRunner()

# keys whose values are timings or describe the machine, not the result
VOLATILE = {"latency", "seconds", "environment", "speedup", "model", "output"}


def _strip(d: Any) -> Any:
    return strip_keys(d, VOLATILE)


def _accuracy(d: Any) -> list[Any]:
    """Every 'accuracy' block of the report, in order (baseline, passes, final)."""
    out: list[Any] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += [v] if k == "accuracy" else _accuracy(v)
    elif isinstance(d, list):
        for v in d:
            out += _accuracy(v)
    return out


def _run_twice(model: Path, tmp_path: Path, extra: list[str]) -> tuple[bytes, bytes, dict, dict]:
    results = []
    for i in (1, 2):
        d = tmp_path / f"run{i}"
        d.mkdir()
        out, rep = d / "o.onnx", d / "r.json"
        r = runner.invoke(app, ["optimize", str(model), "-o", str(out), "--report", str(rep), "-q", *extra])
        assert r.exit_code == 0, r.output
        results.append((out.read_bytes(), json.loads(rep.read_text())))
    (a, ra), (b, rb) = results
    return a, b, ra, rb


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(conv_model(cin=12, cout=16, k=(5, 5), pads=(2, 2, 2, 2), batch=1, hw=(14, 14)).SerializeToString())
    return p


@pytest.mark.parametrize("rank", [["--energy", "0.8"], ["--rank-fraction", "0.5"], ["--full-rank"]],
                         ids=["energy", "fraction", "full"])
@pytest.mark.parametrize("passes", ["split5x5,factorize", "bottleneck,depthwise"])
def test_no_eval_output_is_byte_identical(model_file: Path, tmp_path: Path, rank: list[str], passes: str) -> None:
    a, b, ra, rb = _run_twice(model_file, tmp_path, ["--no-eval", "--passes", passes, "--seed", "7", *rank])
    assert a == b, "two runs wrote different model bytes"
    assert _strip(ra) == _strip(rb)


def test_eval_on_random_data_same_bytes_and_accuracy(model_file: Path, tmp_path: Path) -> None:
    """--keep-slower: with the default --require-faster the kept passes depend on measured latency, which
    is by nature not reproducible; everything else must be."""
    args = ["--keep-slower", "--warmup", "1", "--repeats", "3", "--seed", "3", "--energy", "0.8"]
    a, b, ra, rb = _run_twice(model_file, tmp_path, args)
    assert a == b
    acc_a, acc_b = _accuracy(ra), _accuracy(rb)
    assert acc_a and acc_a == acc_b, (acc_a, acc_b)
    assert _strip(ra) == _strip(rb)


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_real_model_twice_identical(tmp_path: Path) -> None:
    src = SHARED_MODELS / "squeezenet1.1.onnx"
    a, b, ra, rb = _run_twice(src, tmp_path, ["--keep-slower", "--warmup", "1", "--repeats", "2",
                                              "--passes", "factorize,bottleneck", "--limit", "4"])
    assert a == b
    assert _accuracy(ra) == _accuracy(rb)
    assert _strip(ra) == _strip(rb)
