"""Each pass on a grid of Conv geometries: exact at full rank in ORT, error not growing with rank,
and the graph left unchanged (with the reason reported) where a pass refuses a node."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convopt.core.driver import conv_shapes
from convopt.passes import PASSES, RankPolicy
from convopt.uniform import run_pass

from tests.helpers import FULL_RANK_RTOL, conv_model, op_types, random_feeds, rel_l2, rewrite_node, run

FULL = RankPolicy(mode="full")

# (id, kwargs for conv_model) — every pass is tried on every geometry its kernel allows
GEOMETRIES = [
    ("k3", dict(k=(3, 3), pads=(1, 1, 1, 1))),
    ("k3_nobias", dict(k=(3, 3), pads=(1, 1, 1, 1), bias=False)),
    ("k3_stride2", dict(k=(3, 3), pads=(1, 1, 1, 1), stride=(2, 2))),
    ("k3_stride21", dict(k=(3, 3), pads=(0, 1, 2, 0), stride=(2, 1))),
    ("k3_dil2", dict(k=(3, 3), pads=(2, 2, 2, 2), dilation=(2, 2))),
    ("k3_asym_pads", dict(k=(3, 3), pads=(0, 2, 1, 0))),
    ("k3_same_upper", dict(k=(3, 3), auto_pad="SAME_UPPER")),
    ("k3_same_lower_s2", dict(k=(3, 3), auto_pad="SAME_LOWER", stride=(2, 2))),
    ("k3_valid", dict(k=(3, 3), auto_pad="VALID")),
    ("k3_groups2", dict(k=(3, 3), pads=(1, 1, 1, 1), group=2)),
    ("k3_groups4_s2", dict(cin=8, cout=8, k=(3, 3), pads=(1, 0, 1, 2), group=4, stride=(2, 2))),
    ("k3_batch1_square", dict(k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(12, 12))),
    ("k5", dict(k=(5, 5), pads=(2, 2, 2, 2))),
    ("k5_stride2_asym", dict(k=(5, 5), pads=(1, 2, 3, 0), stride=(2, 2))),
    ("k5_dil2", dict(k=(5, 5), pads=(4, 4, 4, 4), dilation=(2, 2), hw=(17, 15))),
    ("k5_same_upper_s2", dict(k=(5, 5), auto_pad="SAME_UPPER", stride=(2, 2))),
    ("k5_groups2_nobias", dict(k=(5, 5), pads=(2, 2, 2, 2), group=2, bias=False)),
    ("k5_wide_in", dict(cin=24, cout=8, k=(5, 5), pads=(2, 2, 2, 2))),
    ("k7", dict(k=(7, 7), pads=(3, 3, 3, 3))),
    ("k7_stride2", dict(k=(7, 7), pads=(3, 3, 3, 3), stride=(2, 2), hw=(19, 16))),
    ("k3x5_rect", dict(k=(3, 5), pads=(1, 2, 1, 2))),
    ("k1", dict(cin=24, cout=16, k=(1, 1))),
    ("k1_stride2_pads", dict(cin=24, cout=16, k=(1, 1), stride=(2, 2), pads=(1, 0, 1, 1))),
    ("k1_nobias_batch1", dict(cin=16, cout=32, k=(1, 1), bias=False, batch=1)),
]


def _applies(pass_name: str, kw: dict) -> bool:
    k = kw["k"]
    if pass_name == "split5x5":
        return k == (5, 5)
    if pass_name == "lowrank":
        return k == (1, 1)
    return k != (1, 1)


CASES = [(p, gid, kw) for p in PASSES for gid, kw in GEOMETRIES if _applies(p, kw)]


@pytest.mark.parametrize("pass_name,gid,kw", CASES, ids=[f"{p}-{g}" for p, g, _ in CASES])
def test_full_rank_rewrite_is_exact_in_ort(pass_name: str, gid: str, kw: dict) -> None:
    model = conv_model(**kw)
    before = model.SerializeToString()
    out = run_pass(model, pass_name, FULL)
    assert model.SerializeToString() == before, "the pass mutated its input model"
    assert len(out.rewritten) == 1, out.skipped
    assert "Conv" in op_types(out.model) and len([n for n in out.model.graph.node if n.op_type == "Conv"]) >= 2
    onnx.checker.check_model(out.model, full_check=True)
    rec = out.rewritten[0]
    assert rec.weight_rel_error <= 1e-5
    assert all(n.startswith(f"{pass_name}/conv/") for n in rec.new_nodes)
    feeds = random_feeds(model)
    (ref,), (got,) = run(model, feeds), run(out.model, feeds)
    assert got.shape == ref.shape
    assert rel_l2(ref, got) <= FULL_RANK_RTOL
    assert [i.name for i in out.model.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in out.model.graph.output] == [o.name for o in model.graph.output]


RANK_GRIDS = {
    "factorize": ("rank", [2, 4, 8, 12, 16, 24]),
    "split5x5": ("rank", [4, 8, 16, 32, 48, 72]),
    "depthwise": ("multiplier", [1, 2, 3, 5, 7, 9]),
    "bottleneck": ("rank_in", [1, 2, 4, 6, 8]),
    "lowrank": ("rank", [1, 2, 4, 6, 8]),
}


@pytest.mark.parametrize("pass_name", list(PASSES))
def test_error_does_not_grow_with_rank(pass_name: str) -> None:
    k = {"split5x5": (5, 5), "lowrank": (1, 1)}.get(pass_name, (3, 3))
    model = conv_model(cin=8, cout=16, k=k, pads=(k[0] // 2,) * 4, batch=2, hw=(12, 10))
    feeds = random_feeds(model)
    (ref,) = run(model, feeds)
    key, grid = RANK_GRIDS[pass_name]
    w_errs, y_errs = [], []
    for r in grid:
        ranks = {key: r} if pass_name != "bottleneck" else {"rank_in": r, "rank_out": 2 * r}
        out = rewrite_node(model, pass_name, ranks)
        assert len(out.records) == 1
        w_errs.append(out.records[0].weight_rel_error)
        y_errs.append(rel_l2(ref, run(out.model, feeds)[0]))
    assert all(b <= a + 1e-6 for a, b in zip(w_errs, w_errs[1:])), w_errs
    assert all(b <= a * 1.02 + 1e-6 for a, b in zip(y_errs, y_errs[1:])), y_errs
    assert w_errs[0] > 0.05, "the lowest rank should be a real approximation on random weights"
    assert y_errs[-1] <= FULL_RANK_RTOL, "the last grid point is the exact rank"


def test_weights_held_as_constant_nodes_are_rewritten_and_cleaned_up() -> None:
    model = conv_model(k=(3, 3), pads=(1, 1, 1, 1), weights_as_constant=True)
    out = run_pass(model, "factorize", FULL)
    assert len(out.rewritten) == 1
    assert "Constant" not in op_types(out.model), "the old weight constants should be removed"
    feeds = random_feeds(model)
    assert rel_l2(run(model, feeds)[0], run(out.model, feeds)[0]) <= FULL_RANK_RTOL


def test_ir3_model_keeps_initializers_listed_as_inputs() -> None:
    model = conv_model(k=(3, 3), pads=(1, 1, 1, 1), opset=7, ir_version=3)
    out = run_pass(model, "depthwise", FULL)
    inputs = {i.name for i in out.model.graph.input}
    assert {t.name for t in out.model.graph.initializer} <= inputs
    assert "W" not in inputs
    onnx.checker.check_model(out.model)
    feeds = random_feeds(model)
    assert rel_l2(run(model, feeds)[0], run(out.model, feeds)[0]) <= FULL_RANK_RTOL


def test_depthwise_emits_tiled_form_for_multiplier_above_one() -> None:
    model = conv_model(cin=8, cout=16, k=(3, 3), pads=(1, 1, 1, 1))
    out = rewrite_node(model, "depthwise", {"multiplier": 3})
    nodes = out.model.graph.node
    concat = [n for n in nodes if n.op_type == "Concat"]
    assert len(concat) == 1 and list(concat[0].input) == ["x"] * 3
    dw = [n for n in nodes if n.op_type == "Conv" and "dw" in n.name][0]
    assert [a.i for a in dw.attribute if a.name == "group"] == [24]
    assert out.records[0].form.startswith("tile3")


# ---------------------------------------------------------------- refusals leave the graph unchanged


def _assert_unchanged(model: onnx.ModelProto, pass_name: str, reason_part: str, policy: RankPolicy = FULL) -> None:
    out = run_pass(model, pass_name, policy)
    assert out.rewritten == []
    assert out.model.SerializeToString() == model.SerializeToString()
    reasons = [s.reason for s in out.skipped]
    assert any(reason_part in r for r in reasons), reasons


def test_factorize_1x1_kernel_no_rewrite() -> None:
    _assert_unchanged(conv_model(k=(1, 1)), "factorize", "1x1 kernel")


def test_factorize_already_separable_no_rewrite() -> None:
    _assert_unchanged(conv_model(k=(1, 5), pads=(0, 2, 0, 2)), "factorize", "already separable")


def test_split5x5_not_5x5_no_rewrite() -> None:
    _assert_unchanged(conv_model(k=(3, 3), pads=(1, 1, 1, 1)), "split5x5", "not 5x5")


def test_depthwise_already_depthwise_no_rewrite() -> None:
    _assert_unchanged(conv_model(cin=8, cout=8, k=(3, 3), group=8, pads=(1, 1, 1, 1)), "depthwise", "already depthwise")


def test_bottleneck_1x1_kernel_no_rewrite() -> None:
    _assert_unchanged(conv_model(k=(1, 1)), "bottleneck", "1x1 kernel")


def test_lowrank_kxk_kernel_no_rewrite() -> None:
    _assert_unchanged(conv_model(k=(3, 3), pads=(1, 1, 1, 1)), "lowrank", "lowrank rewrites 1x1 convs")


def test_lowrank_grouped_no_rewrite() -> None:
    _assert_unchanged(conv_model(cin=8, cout=8, k=(1, 1), group=2), "lowrank", "group 2 1x1 conv")


@pytest.mark.parametrize("pass_name", list(PASSES))
def test_pass_no_mac_saving_no_rewrite(pass_name: str) -> None:
    k = {"split5x5": (5, 5), "lowrank": (1, 1)}.get(pass_name, (3, 3))
    policy = RankPolicy(mode="fraction", value=1.0, align=1)
    _assert_unchanged(conv_model(cin=8, cout=8, k=k, pads=(k[0] // 2,) * 4), pass_name, "", policy)
    out = run_pass(conv_model(cin=8, cout=8, k=k, pads=(k[0] // 2,) * 4), pass_name, policy)
    assert any("lower MACs" in s.reason or "keep every channel" in s.reason for s in out.skipped), out.skipped


@pytest.mark.parametrize("pass_name", list(PASSES))
def test_pass_weight_not_constant_no_rewrite(pass_name: str) -> None:
    model = conv_model(k=(5, 5), pads=(2, 2, 2, 2))
    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(w.name, TensorProto.FLOAT, list(w.dims)))
    _assert_unchanged(model, pass_name, "weight is not constant")


def _single_node_model(op: str, w_shape: tuple[int, ...], x_shape: list[int], **attrs: object) -> onnx.ModelProto:
    W = numpy_helper.from_array(np.ones(w_shape, np.float32), "W")
    g = helper.make_graph(
        [helper.make_node(op, ["x", "W"], ["y"], name="conv", **attrs)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [W],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("pass_name", list(PASSES))
def test_pass_conv1d_no_rewrite(pass_name: str) -> None:
    _assert_unchanged(_single_node_model("Conv", (4, 2, 5), [1, 2, 16]), pass_name, "1-D conv")


@pytest.mark.parametrize("pass_name", list(PASSES))
def test_pass_conv3d_no_rewrite(pass_name: str) -> None:
    _assert_unchanged(_single_node_model("Conv", (4, 2, 5, 5, 5), [1, 2, 8, 8, 8]), pass_name, "3-D conv")


@pytest.mark.parametrize("pass_name", list(PASSES))
def test_pass_convtranspose_no_rewrite(pass_name: str) -> None:
    _assert_unchanged(_single_node_model("ConvTranspose", (2, 4, 5, 5), [1, 2, 8, 8]), pass_name, "ConvTranspose")


@pytest.mark.parametrize("pass_name", list(PASSES))
def test_pass_quantized_conv_no_rewrite(pass_name: str) -> None:
    W = numpy_helper.from_array(np.ones((4, 2, 5, 5), np.uint8), "W")
    g = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "W"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [W],
    )
    _assert_unchanged(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), pass_name, "quantized conv")


@pytest.mark.parametrize("pass_name", list(PASSES))
def test_pass_already_rewritten_no_rewrite(pass_name: str) -> None:
    model = conv_model(k=(5, 5), pads=(2, 2, 2, 2))
    first = "factorize" if pass_name != "factorize" else "depthwise"
    once = run_pass(model, first, FULL).model
    out = run_pass(once, pass_name, FULL)
    assert out.rewritten == []
    assert out.model.SerializeToString() == once.SerializeToString()
    assert any(f"already rewritten by {first}" in s.reason for s in out.skipped)


def test_same_with_stride_and_unknown_size_is_refused_with_reason() -> None:
    model = conv_model(k=(3, 3), auto_pad="SAME_UPPER", stride=(2, 2))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    out = run_pass(model, "factorize", FULL)
    assert out.rewritten == []
    assert any("needs a known input size" in s.reason for s in out.skipped)


def test_nhwc_input_transposed_to_nchw_is_rewritten_exactly() -> None:
    rng = np.random.default_rng(5)
    W = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W")
    g = helper.make_graph(
        [
            helper.make_node("Transpose", ["x_nhwc"], ["x"], name="to_nchw", perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Transpose", ["y"], ["y_nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        ],
        "nhwc",
        [helper.make_tensor_value_info("x_nhwc", TensorProto.FLOAT, [1, 12, 10, 8])],
        [helper.make_tensor_value_info("y_nhwc", TensorProto.FLOAT, [1, 12, 10, 16])],
        [W],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    shapes = conv_shapes(model, None)
    assert shapes["x"] == (1, 8, 12, 10)
    for name in PASSES:
        if name in ("split5x5", "lowrank"):  # a 3×3 conv
            continue
        out = run_pass(model, name, FULL)
        assert len(out.rewritten) == 1, (name, out.skipped)
        feeds = random_feeds(model)
        assert rel_l2(run(model, feeds)[0], run(out.model, feeds)[0]) <= FULL_RANK_RTOL


def test_rewrite_keeps_metadata_opset_and_producer() -> None:
    model = conv_model(k=(3, 3), pads=(1, 1, 1, 1))
    onnx.helper.set_model_props(model, {"author": "me", "license": "MIT"})
    model.doc_string = "exported by a test"
    model.model_version = 7
    out = run_pass(model, "factorize", FULL).model
    assert {p.key: p.value for p in out.metadata_props} == {"author": "me", "license": "MIT"}
    assert out.doc_string == model.doc_string and out.model_version == 7
    assert list(out.opset_import) == list(model.opset_import) and out.ir_version == model.ir_version
    assert out.producer_name == model.producer_name


def _gemm_model(trans_b: bool = True, bias: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    W = rng.standard_normal((40, 24)).astype(np.float32)
    inits = [numpy_helper.from_array(W if trans_b else W.T.copy(), "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "B"))
        inputs.append("B")
    g = helper.make_graph([helper.make_node("Gemm", inputs, ["y"], name="fc", transB=int(trans_b))], "fc",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 24])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 40])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("trans_b,bias", [(True, True), (False, True), (True, False)])
def test_lowrank_rewrites_a_gemm_exactly_at_full_rank(trans_b: bool, bias: bool) -> None:
    model = _gemm_model(trans_b, bias)
    out = run_pass(model, "lowrank", FULL)
    assert len(out.rewritten) == 1 and out.rewritten[0].form == "gemm+gemm"
    assert [n.op_type for n in out.model.graph.node] == ["Gemm", "Gemm"]
    feeds = random_feeds(model)
    assert rel_l2(run(model, feeds)[0], run(out.model, feeds)[0]) <= FULL_RANK_RTOL
    low = run_pass(model, "lowrank", RankPolicy(mode="fraction", value=0.25, align=1))
    assert low.rewritten and low.rewritten[0].macs_after < low.rewritten[0].macs_before


def test_other_passes_refuse_a_gemm_with_the_reason() -> None:
    for name in ("factorize", "bottleneck", "depthwise", "split5x5"):
        _assert_unchanged(_gemm_model(), name, "Gemm layer")


def test_output_energy_cache_is_not_fooled_by_a_reused_id() -> None:
    """The per-layer output energy is cached by the moments' id; an entry whose moments are gone (their id now
    another object's) is recomputed, not returned."""
    import weakref

    import numpy as np

    import convopt.passes.base as base
    from convopt.core.driver import conv_shapes
    from convopt.core.plan import conv_table
    from convopt.datafit import Moments
    from tests.helpers import conv_model

    model = conv_model(4, 8)
    conv = next(iter(conv_table(model, conv_shapes(model, None)).values()))
    F = conv.W[0].size
    m = Moments(10, np.zeros(F), np.eye(F))
    W, b = conv.W.reshape(conv.W.shape[0], -1).astype(np.float64), conv.B.astype(np.float64)
    truth = float(np.sum(W * W) + b @ b)  # E‖Wx + b‖² with E[x] = 0, E[xxᵀ] = I

    class Gone:
        pass

    stale = Gone()
    base._ENERGY[(id(m), conv.name)] = (weakref.ref(stale), -1.0)  # as if another moments had had this id
    assert base._output_energy(conv, m) == pytest.approx(truth)
    assert base._output_energy(conv, m) == pytest.approx(truth)  # now cached for m
