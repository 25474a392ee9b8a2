"""convopt.graph.read: the one Conv validity check (fatal issues refuse the model at load, the others are skip
reasons), huge attributes (issue 15 row 14), and ConvSpec geometry with unknown sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from convopt.cli import app
from convopt.graph import (
    ConstantTable, ConvSkip, ConvSpec, conv_issue, declared_dims, infer_tensor_shapes, model_problem, read_convs,
)
from tests.helpers import conv_model

runner = CliRunner()
BIG = 2**40


def _dynamic_hw(m: onnx.ModelProto) -> onnx.ModelProto:
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return m


def _ort_runs(m: onnx.ModelProto, x_shape: tuple[int, ...]) -> bool:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.ones(x_shape, np.float32)})
    except Exception:
        return False
    return True


def _issue(m: onnx.ModelProto):  # type: ignore[no-untyped-def]
    """The issue of the model's Conv, knowing what the graph input declares (dims of x, symbolic ones unknown)."""
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    return conv_issue(conv, ConstantTable(m.graph), {"x": declared_dims(m.graph.input[0])}, m.ir_version)


def _optimize(tmp_path: Path, m: onnx.ModelProto, *extra: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    out = tmp_path / "o.onnx"
    r = runner.invoke(app, ["optimize", str(p), "-o", str(out), "--no-eval", "-q", "--passes", "factorize,bottleneck",
                            "--rank-fraction", "0.5", *extra])
    return r, out


# ------------------------------------------------------------------ huge attributes (issue 15 row 14)

FATAL_HUGE = {
    "pads 2^40, static input": (dict(pads=(BIG, BIG, BIG, BIG)), False),
    "pads 2^40, dynamic H and W": (dict(pads=(BIG, BIG, BIG, BIG)), True),
    "pads 2^62 + 2^62 overflow the padded length": (dict(pads=(2**62, 0, 2**62, 0), stride=(2**62, 1)), False),
}


@pytest.mark.parametrize("case", sorted(FATAL_HUGE))
def test_conv_ort_cannot_run_is_refused_at_load_exit_2(tmp_path: Path, case: str) -> None:
    kw, dynamic = FATAL_HUGE[case]
    m = conv_model(cin=4, cout=8, batch=1, hw=(9, 9), **kw)  # type: ignore[arg-type]
    if dynamic:
        m = _dynamic_hw(m)
    assert not _ort_runs(m, (1, 4, 9, 9))  # what ORT does with the original: it cannot run it
    issue = _issue(m)
    assert issue is not None and issue.fatal, issue
    assert "64-bit" in issue.reason
    r, out = _optimize(tmp_path, m)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "64-bit" in lines[0], r.output
    assert not out.exists()


SKIPPED_HUGE = {
    "stride 2^62": dict(stride=(2**62, 2**62)),
    "pads 2^40 with stride 2^41": dict(pads=(BIG, 0, BIG, 0), stride=(2 * BIG, 1)),
}


@pytest.mark.parametrize("case", sorted(SKIPPED_HUGE))
def test_conv_ort_runs_with_attributes_beyond_int32_is_skipped_with_the_reason(tmp_path: Path, case: str) -> None:
    m = conv_model(cin=4, cout=8, batch=1, hw=(9, 9), **SKIPPED_HUGE[case])  # type: ignore[arg-type]
    assert _ort_runs(m, (1, 4, 9, 9))  # ORT runs the original, so convopt must not refuse it
    issue = _issue(m)
    assert issue is not None and not issue.fatal and "2^31-1" in issue.reason, issue
    r, out = _optimize(tmp_path, m)
    assert r.exit_code == 0, r.output
    back = onnx.load(str(out))
    assert [n.op_type for n in back.graph.node] == ["Conv", "Relu"]  # left as it is
    assert _ort_runs(back, (1, 4, 9, 9))
    r = runner.invoke(app, ["inspect", str(tmp_path / "m.onnx"), "--json"])
    assert r.exit_code == 0 and "2^31-1" in r.output, r.output


def test_large_but_ordinary_pads_are_still_rewritten(tmp_path: Path) -> None:
    m = conv_model(cin=8, cout=16, batch=1, hw=(9, 9), pads=(300, 1, 300, 1))
    assert _issue(m) is None
    r, out = _optimize(tmp_path, m)
    assert r.exit_code == 0, r.output
    assert onnx.load(str(out)).graph.node[0].doc_string.startswith("convopt:")  # rewritten


# ------------------------------------------------------------------ one check, two uses


@pytest.mark.parametrize("kw,needle", [
    (dict(pads=(-1, 0, 0, 0)), "must be >= 0"),
    (dict(stride=(0, 1)), "must be >= 1"),
    (dict(hw=(2, 2), pads=(0, 0, 0, 0)), "is empty"),
])
def test_fatal_issues_refuse_the_model_and_are_skips_in_read_convs(kw: dict, needle: str) -> None:
    m = conv_model(cin=4, cout=8, batch=1, **{"hw": (9, 9), **kw})  # type: ignore[arg-type]
    problem = model_problem(m)
    assert problem is not None and needle in problem and problem.startswith("Conv 'conv': ")
    (item,) = read_convs(m, {"x": (1, 4, *kw.get("hw", (9, 9)))})
    assert isinstance(item, ConvSkip) and needle in item.reason


def test_unknown_auto_pad_is_refused() -> None:
    m = conv_model(batch=1, hw=(9, 9))
    m.graph.node[0].attribute.append(helper.make_attribute("auto_pad", "FOO"))
    assert "unknown auto_pad 'FOO'" in (model_problem(m) or "")


def test_skip_reasons_do_not_refuse_the_model() -> None:
    """A runtime weight, an fp16 weight, a 1-D conv: valid models, skipped with their reason."""
    m = conv_model(batch=1, hw=(9, 9))
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [16, 8, 3, 3]))  # fed at run time
    fp16 = conv_model(batch=1, hw=(9, 9))
    w = fp16.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float16), "W"))
    for model, reason in ((m, "weight is not constant"), (fp16, "weight dtype FLOAT16 is not float32")):
        issue = _issue(model)
        assert issue is not None and not issue.fatal and issue.reason == reason
        assert model_problem(model) is None
        (item,) = read_convs(model)
        assert isinstance(item, ConvSkip) and item.reason == reason


def test_fatal_issues_come_before_skip_reasons() -> None:
    """A runtime weight hides the weight checks, not the attribute checks."""
    m = conv_model(batch=1, hw=(9, 9), stride=(1, 1))
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [16, 8, 3, 3]))
    next(a for a in m.graph.node[0].attribute if a.name == "strides").ints[:] = [0, 1]
    issue = _issue(m)
    assert issue is not None and issue.fatal and "strides [0, 1]" in issue.reason


def test_constant_table_shape_reads_initializers_and_constant_nodes_without_values() -> None:
    m = conv_model(weights_as_constant=True, batch=1, hw=(9, 9))
    consts = ConstantTable(m.graph)
    assert consts.shape("W") == (16, 8, 3, 3) and consts.shape("B") == (16,) and consts.shape("x") is None
    init = ConstantTable(conv_model().graph)
    assert init.shape("W") == (16, 8, 3, 3) and init.dtype("W") == TensorProto.FLOAT


# ------------------------------------------------------------------ unknown sizes stay unknown


def test_dynamic_spatial_size_gives_unknown_macs_never_zero() -> None:
    m = _dynamic_hw(conv_model(cin=8, cout=16, batch=1, hw=(32, 32), stride=(2, 2), pads=(1, 1, 1, 1)))
    (spec,) = read_convs(m, infer_tensor_shapes(m, None, ["x", "y"]))
    assert isinstance(spec, ConvSpec)
    assert spec.in_shape is None and spec.out_shape is None and spec.out_hw is None and spec.macs is None
    (fixed,) = read_convs(m, infer_tensor_shapes(m, {"x": (1, 8, 32, 32)}, ["x", "y"]))
    assert isinstance(fixed, ConvSpec) and fixed.out_shape == (1, 16, 16, 16)
    assert fixed.macs == 16 * 8 * 3 * 3 * 16 * 16


def test_auto_pad_same_with_stride_and_unknown_size_has_no_pads_and_says_why() -> None:
    m = _dynamic_hw(conv_model(batch=1, hw=(9, 9), auto_pad="SAME_UPPER", stride=(2, 2)))
    (spec,) = read_convs(m, infer_tensor_shapes(m))
    assert isinstance(spec, ConvSpec) and spec.pads is None and spec.macs is None
    assert spec.pads_reason == "auto_pad SAME_UPPER with stride 2 needs a known input size"
