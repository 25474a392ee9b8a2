"""The command line: inspect and optimize on small models, exit codes, never touching the input file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from convopt.cli import app

from tests.helpers import FULL_RANK_RTOL, NO_SHARED, SHARED_MODELS, conv_model, random_feeds, rel_l2, run

runner = CliRunner()


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(conv_model(cin=16, cout=32, k=(5, 5), pads=(2, 2, 2, 2), batch=1, hw=(16, 16)).SerializeToString())
    return p


def test_inspect_table_and_json(model_file: Path) -> None:
    r = runner.invoke(app, ["inspect", str(model_file)])
    assert r.exit_code == 0, r.output
    assert "yes" in r.output and "conv" in r.output and "1 conv layers" in r.output
    r = runner.invoke(app, ["inspect", str(model_file), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    row = d["convs"][0]
    assert row["macs"] == 32 * 16 * 25 * 16 * 16
    assert row["params"] == 32 * 16 * 25 + 32
    assert {p: v for p, v in row["passes"].items() if v == "applies"} == {
        p: "applies" for p in ("bottleneck", "split5x5", "factorize", "depthwise")}
    assert "lowrank rewrites 1x1 convs" in row["passes"]["lowrank"]
    assert d["totals"]["macs"] == row["macs"]


def test_optimize_no_eval_full_rank_writes_exact_model_and_report(model_file: Path, tmp_path: Path) -> None:
    before = model_file.read_bytes()
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(out), "--passes", "split5x5,factorize",
                            "--full-rank", "--no-eval", "--report", str(rep), "-q"])
    assert r.exit_code == 0, r.output
    assert model_file.read_bytes() == before, "the input model was modified"
    m0, m1 = onnx.load(str(model_file)), onnx.load(str(out))
    feeds = random_feeds(m0)
    assert rel_l2(run(m0, feeds)[0], run(m1, feeds)[0]) <= FULL_RANK_RTOL
    d = json.loads(rep.read_text())
    assert d["schema_version"] == "2.0"
    names = [p["name"] for p in d["passes"]]
    assert names == ["fold_bn", "split5x5", "factorize"]
    split = d["passes"][1]
    assert split["status"] == "kept" and split["rewritten"][0]["ranks"] == {"rank": 144}
    fact = d["passes"][2]
    assert fact["rewritten"] == [] and "already rewritten by split5x5" in fact["skipped"][0]["reason"]


def test_optimize_default_output_beside_input(model_file: Path) -> None:
    r = runner.invoke(app, ["optimize", str(model_file), "--no-eval", "--passes", "factorize", "--rank-fraction", "0.25", "-q"])
    assert r.exit_code == 0, r.output
    assert (model_file.parent / "m.opt.onnx").is_file()


@pytest.mark.parametrize(
    "content,needle",
    [(None, "not found"), (b"", "empty file"), (b"\x00\xffgarbage" * 50, "not an ONNX model")],
    ids=["missing", "empty", "garbage"],
)
def test_bad_model_file_is_one_line_exit_2(tmp_path: Path, content: bytes | None, needle: str) -> None:
    p = tmp_path / "bad.onnx"
    if content is not None:
        p.write_bytes(content)
    for cmd in (["inspect", str(p)], ["optimize", str(p), "--no-eval"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2, r.output
        assert needle in r.output
        assert "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "bad.opt.onnx").exists()


def test_output_equal_to_input_is_refused(model_file: Path) -> None:
    before = model_file.read_bytes()
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(model_file), "--no-eval"])
    assert r.exit_code == 2 and "refusing to overwrite" in r.output
    assert model_file.read_bytes() == before


def test_bad_options_exit_2(model_file: Path) -> None:
    r = runner.invoke(app, ["optimize", str(model_file), "--passes", "nope", "--no-eval"])
    assert r.exit_code == 2 and "unknown pass 'nope'" in r.output
    r = runner.invoke(app, ["optimize", str(model_file), "--energy", "0.9", "--full-rank", "--no-eval"])
    assert r.exit_code == 2 and "choose one rank option" in r.output
    r = runner.invoke(app, ["optimize", str(model_file), "--energy", "1.5", "--no-eval"])
    assert r.exit_code == 2 and "must be in (0, 1]" in r.output


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_inspect_real_squeezenet_rows_and_reasons() -> None:
    r = runner.invoke(app, ["inspect", str(SHARED_MODELS / "squeezenet1.1.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    rows = {c["name"]: c for c in d["convs"]}
    assert len(rows) == 26
    e = rows["fire9/expand3x3_1"]
    assert (e["channels_in"], e["channels_out"], e["kernel"], e["output_size"]) == (64, 256, [3, 3], [13, 13])
    assert e["macs"] == 256 * 64 * 9 * 13 * 13
    assert rows["fire9/squeeze1x1_1"]["passes"]["factorize"] == "1x1 kernel: nothing to factorize"
    assert d["totals"]["applicable"]["split5x5"] == 0
    assert d["totals"]["applicable"]["factorize"] == 9
    # SqueezeNet 1.1 is ~0.35 GMACs (conv layers)
    assert 3.0e8 < d["totals"]["macs"] < 4.0e8


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_inspect_dynamic_batch_candy_uses_batch_1() -> None:
    r = runner.invoke(app, ["inspect", str(SHARED_MODELS / "candy-style.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    rows = {c["name"]: c for c in json.loads(r.stdout)["convs"]}  # stderr has the checker's warning
    assert rows["convolution"]["output_size"] == [800, 800]  # input reflection-padded by 40
    assert rows["convolution13"]["passes"]["factorize"] == "ConvTranspose is not rewritten"
    assert np.all([rows[f"convolution{i}"]["macs"] for i in (3, 12)])


def test_strategy_option_errors_are_exit_2(model_file: Path, tmp_path: Path) -> None:
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((4, 16, 16, 16)).astype(np.float32))
    cases = [
        (["--strategy", "auto", "--energy", "0.9", "--data", str(npz)], "use it with --strategy uniform"),
        (["--strategy", "auto"], "--strategy auto needs --data"),
        (["--strategy", "auto", "--data", str(npz), "--no-eval"], "--strategy auto needs --data"),
        (["--strategy", "uniform", "--calib", str(npz), "--data", str(npz)], "--calib is for --strategy auto"),
        (["--strategy", "fast"], "--strategy must be auto or uniform"),
    ]
    for extra, needle in cases:
        r = runner.invoke(app, ["optimize", str(model_file), "-q", *extra])
        assert r.exit_code == 2, (extra, r.output)
        assert needle in r.output, (extra, r.output)
    assert not (tmp_path / "m.opt.onnx").exists()


def test_report_path_equal_to_output_is_refused(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(out), "--report", str(out), "--no-eval"])
    assert r.exit_code == 2 and "are the same file" in r.output
    assert not out.exists()


def test_rank_fraction_zero_is_refused_not_ignored(model_file: Path, tmp_path: Path) -> None:
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((4, 16, 16, 16)).astype(np.float32))
    # with --data the default strategy is auto, which must not swallow an explicit uniform rank option
    r = runner.invoke(app, ["optimize", str(model_file), "-q", "--rank-fraction", "0", "--data", str(npz)])
    assert r.exit_code == 2 and "must be in (0, 1]" in r.output, r.output


def test_latency_batch_option_sets_the_timed_batch_for_auto_and_the_report(tmp_path: Path) -> None:
    m = conv_model(cin=16, cout=32, batch="N", hw=(16, 16))  # type: ignore[arg-type]  # dynamic batch
    src = tmp_path / "dyn.onnx"
    src.write_bytes(m.SerializeToString())
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((16, 16, 16, 16)).astype(np.float32))
    rep = tmp_path / "r.json"
    r = runner.invoke(app, ["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--data", str(npz),
                            "--latency-batch", "4", "--repeats", "3", "--warmup", "1", "--max-rel-error", "0.5",
                            "--report", str(rep), "-q"])
    assert r.exit_code in (0, 1), r.output
    d = json.loads(rep.read_text())
    assert d["settings"]["ort"]["latency_batch"] == 4
    assert d["extra"]["auto"]["latency_batch"] == 4  # layers timed at the batch the end-to-end latency uses
    r = runner.invoke(app, ["optimize", str(src), "--data", str(npz), "--latency-batch", "0", "-q"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "'--latency-batch'" in r.output
