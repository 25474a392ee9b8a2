"""Hostile and broken models: every one is refused with exit code 2 and one clear line, never a traceback,
and nothing is written. The broken files are generated at test time by tests/corpus/make_corpus.py."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import external_data_helper
from typer.testing import CliRunner

from convopt.cli import app
from convopt.errors import ModelLoadError
from convopt.graph import find_cycle, model_problem
from convopt.io import load_model

from tests.corpus.make_corpus import CASES, write_corpus
from tests.helpers import conv_model

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _assert_one_clear_line(r, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert lines[0].startswith("error: "), r.output
    assert needle.lower() in lines[0].lower(), (needle, r.output)


@pytest.mark.parametrize("case", sorted(CASES))
def test_corpus_inspect_exit_2_one_line(corpus: dict[str, tuple[Path, str]], case: str) -> None:
    path, needle = corpus[case]
    r = runner.invoke(app, ["inspect", str(path)])
    _assert_one_clear_line(r, needle)
    r = runner.invoke(app, ["inspect", str(path), "--json"])
    _assert_one_clear_line(r, needle)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode", ["no-eval", "eval"])
def test_corpus_optimize_exit_2_writes_nothing(corpus: dict[str, tuple[Path, str]], case: str, mode: str,
                                               tmp_path: Path) -> None:
    path, needle = corpus[case]
    before_in = path.read_bytes()
    out, rep = tmp_path / "out.onnx", tmp_path / "report.json"
    listing = _listing(path.parent)
    args = ["optimize", str(path), "-o", str(out), "--report", str(rep), "-q"]
    args += ["--no-eval"] if mode == "no-eval" else ["--warmup", "1", "--repeats", "2"]
    r = runner.invoke(app, args)
    _assert_one_clear_line(r, needle)
    assert list(tmp_path.iterdir()) == [], "an output was written for a refused model"
    assert _listing(path.parent) == listing, "files appeared beside the input"
    assert path.read_bytes() == before_in


def test_corpus_covers_issue_item_1() -> None:
    """The issue's list: truncated/zero-byte, random bytes, a protobuf that is not a model, checker failure,
    unknown/future opset, weight vs attributes, zero-sized dim, cycle, missing external data."""
    required = {"truncated", "zero_byte", "random_bytes", "protobuf_tensor", "checker_dangling_input",
                "future_opset", "kernel_shape_vs_weight", "zero_dim_input", "cycle", "external_missing"}
    assert required <= set(CASES)


def test_cycle_detection_is_iterative_on_a_long_chain() -> None:
    """A 20 000-node chain closed into a loop: found without recursion (no RecursionError, no hang)."""
    from onnx import helper

    n = 20_000
    nodes = [helper.make_node("Relu", [f"t{i - 1 if i else n - 1}"], [f"t{i}"], name=f"r{i}") for i in range(n)]
    g = helper.make_graph(nodes, "loop", [], [])
    cyc = find_cycle(g)
    assert cyc is not None and len(cyc) == n
    nodes[0].input[0] = "x"  # break the loop: a plain chain
    assert find_cycle(helper.make_graph(nodes, "chain", [], [])) is None


def test_unsorted_but_acyclic_is_not_called_a_cycle(tmp_path: Path) -> None:
    m = conv_model(batch=1, hw=(8, 8))
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    assert find_cycle(m.graph) is None
    p = tmp_path / "unsorted.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError, match="topologically sorted"):
        load_model(p)


@pytest.mark.parametrize("case", ["external_climbs_out", "external_absolute"])
def test_external_location_refused_before_anything_is_read(corpus: dict[str, tuple[Path, str]], case: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("external data was read before the location was checked")

    monkeypatch.setattr(external_data_helper, "load_external_data_for_model", boom)
    monkeypatch.setattr(external_data_helper, "load_external_data_for_tensor", boom)
    path, needle = corpus[case]
    with pytest.raises(ModelLoadError, match=needle):
        load_model(path)


def test_valid_models_have_no_structural_problem() -> None:
    for kw in ({}, {"group": 2}, {"k": (1, 7), "pads": (0, 3, 0, 3)}, {"auto_pad": "SAME_UPPER", "stride": (2, 2)},
               {"dilation": (2, 3)}, {"weights_as_constant": True}):
        m = conv_model(batch=1, hw=(9, 9), **kw)  # type: ignore[arg-type]
        assert model_problem(m) is None, kw


# ------------------------------------------------------------------ the CLI boundary, and the >2 GB path through optimize

def test_unexpected_exception_in_optimize_is_one_line_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import convopt.uniform

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(convopt.uniform, "optimize_uniform", boom)
    p = tmp_path / "m.onnx"
    p.write_bytes(conv_model(batch=1, hw=(8, 8)).SerializeToString())
    r = runner.invoke(app, ["optimize", str(p), "--no-eval", "-q"])
    assert r.exit_code == 3, r.output
    assert r.output.strip().splitlines() == [
        "internal error: RuntimeError: simulated bug (a convopt bug, please report it; "
        "CONVOPT_DEBUG=1 shows the traceback)"]
    assert _listing(tmp_path) == {"m.onnx"}


def test_unexpected_exception_in_inspect_is_one_line_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import convopt.inspect

    def boom(*_a: object, **_k: object) -> None:
        raise ValueError("simulated bug")

    monkeypatch.setattr(convopt.inspect, "inspect_model", boom)
    p = tmp_path / "m.onnx"
    p.write_bytes(conv_model(batch=1, hw=(8, 8)).SerializeToString())
    r = runner.invoke(app, ["inspect", str(p)])
    assert r.exit_code == 3 and r.output.strip().startswith("internal error: ValueError: simulated bug"), r.output
    assert len(r.output.strip().splitlines()) == 1


def test_malformed_report_never_a_traceback(tmp_path: Path) -> None:
    rep = tmp_path / "r.json"
    rep.write_text('{"passes": [1, 2]}')
    for fmt in ("table", "md", "html"):
        r = runner.invoke(app, ["report", str(rep), "--format", fmt])
        assert r.exit_code in (2, 3), (fmt, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (fmt, repr(r.exception))


def test_demo_ctrl_c_exit_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import convopt.cli

    def interrupt(*_a: object, **_k: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(convopt.cli, "_run_optimize", interrupt)
    r = runner.invoke(app, ["demo", "-q"])
    assert r.exit_code == 130, r.output
    assert "interrupted" in r.output


def test_ctrl_c_while_a_module_initializes_is_an_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while a C extension initializes surfaces as ImportError raised during the KeyboardInterrupt:
    still an interrupt (exit 130, what is on disk), not 'a convopt bug' (exit 3)."""
    import convopt.cli

    def interrupt(*_a: object, **_k: object) -> int:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("initialization failed")

    monkeypatch.setattr(convopt.cli, "_run_optimize", interrupt)
    r = runner.invoke(app, ["demo", "-q"])
    assert r.exit_code == 130, r.output
    assert "interrupted" in r.output and "convopt bug" not in r.output


def test_over_2gb_model_goes_through_optimize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole optimize path with the protobuf limit lowered to 4 KB and a checker that, like onnx's, refuses
    a ModelProto over the limit: the output is written as model + .data beside it, not failed late."""
    import convopt.io as cio

    real = onnx.checker.check_model

    def checker(m: object, *a: object, **k: object) -> None:
        if isinstance(m, onnx.ModelProto) and m.ByteSize() >= cio.PROTOBUF_LIMIT:
            raise ValueError("This protobuf of onnx model is too large (>2GB). Call check_model with model path instead.")
        real(m, *a, **k)  # type: ignore[arg-type]

    src = tmp_path / "m.onnx"
    src.write_bytes(conv_model(cin=16, cout=32, k=(5, 5), pads=(2, 2, 2, 2), batch=1, hw=(8, 8)).SerializeToString())
    monkeypatch.setattr(onnx.checker, "check_model", checker)
    monkeypatch.setattr(cio, "PROTOBUF_LIMIT", 4096)
    out = tmp_path / "o.onnx"
    r = runner.invoke(app, ["optimize", str(src), "-o", str(out), "--no-eval", "-q", "--full-rank"])
    assert r.exit_code == 0, r.output
    assert _listing(tmp_path) == {"m.onnx", "o.onnx", "o.onnx.data"}
    monkeypatch.undo()
    onnx.checker.check_model(str(out))
