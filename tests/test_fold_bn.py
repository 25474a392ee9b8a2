"""BatchNormalization folding is exact and refuses what it cannot fold."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convopt.passes.fold_bn import fold_batchnorm

from tests.helpers import op_types, random_feeds, rel_l2, run


def _conv_bn(bias: bool = True, extra_consumer: bool = False, opset: int = 13) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    O, I = 6, 4
    inits = [numpy_helper.from_array(rng.standard_normal((O, I, 3, 3)).astype(np.float32), "W")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(O).astype(np.float32), "B"))
    for name, v in (("gamma", rng.uniform(0.5, 2, O)), ("beta", rng.standard_normal(O)),
                    ("mean", rng.standard_normal(O)), ("var", rng.uniform(0.1, 3, O))):
        inits.append(numpy_helper.from_array(v.astype(np.float32), name))
    nodes = [
        helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn", epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None, None])]
    if extra_consumer:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["s"], name="sig"))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [None, None, None, None]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, I, 9, 7])], outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_fold_bn_is_exact_with_and_without_bias() -> None:
    for bias in (True, False):
        model = _conv_bn(bias=bias)
        out = fold_batchnorm(model)
        assert "BatchNormalization" not in op_types(out.model)
        assert "BatchNormalization" in op_types(model), "input model mutated"
        assert len(out.rewritten) == 1 and out.rewritten[0].node == "conv"
        names = {t.name for t in out.model.graph.initializer}
        assert not names & {"gamma", "beta", "mean", "var", "W"}, "dead BN/weight initializers must be removed"
        onnx.checker.check_model(out.model, full_check=True)
        feeds = random_feeds(model)
        assert rel_l2(run(model, feeds)[0], run(out.model, feeds)[0]) <= 1e-5


def test_fold_bn_other_consumer_no_rewrite() -> None:
    model = _conv_bn(extra_consumer=True)
    out = fold_batchnorm(model)
    assert out.rewritten == []
    assert out.model.SerializeToString() == model.SerializeToString()
    assert out.skipped[0].reason == "the Conv's output has other consumers"


def test_fold_bn_input_not_conv_no_rewrite() -> None:
    model = _conv_bn()
    bn = model.graph.node[1]
    bn.input[0] = "x"
    g = model.graph
    # make the BN read the graph input directly: 4 channels → use 4-channel params
    for t in list(g.initializer):
        if t.name in ("gamma", "beta", "mean", "var"):
            arr = numpy_helper.to_array(t)[:4]
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    out = fold_batchnorm(model)
    assert out.rewritten == []
    assert out.skipped[0].reason == "input is not produced by a Conv"


def test_driver_releases_a_handed_off_original_once_folded() -> None:
    """A Handoff gives the driver the only reference: it keeps the folded copy, not the original, and the
    handoff cannot hand the model out twice; the rewritten result is that of a driver given the model itself."""
    import pytest

    from convopt.core.driver import Driver, Handoff
    from convopt.passes import RankPolicy
    from convopt.uniform import optimize_uniform

    m = _conv_bn(bias=True)
    h = Handoff(m)
    d = Driver(h)
    assert d.original is None and len(d.base.graph.node) < len(m.graph.node)  # BN folded into a copy
    with pytest.raises(RuntimeError, match="already taken"):
        h.take()
    kept = optimize_uniform(m, ["factorize"], RankPolicy(mode="full")).model
    handed = optimize_uniform(Handoff(m), ["factorize"], RankPolicy(mode="full")).model
    assert "Conv" in op_types(handed) and len(handed.graph.node) == len(kept.graph.node) == 3  # 3x1, 1x3, Relu
    assert kept.SerializeToString(deterministic=True) == handed.SerializeToString(deterministic=True)
