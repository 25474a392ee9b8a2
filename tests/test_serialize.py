"""convopt.serialize: a model's bytes written piece by piece are exactly SerializeToString(deterministic=True)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from convopt.serialize import chunks, varint
from tests.helpers import NO_SHARED, SHARED_MODELS


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8, 8])], inits,
                          doc_string="a graph")
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="test")
    helper.set_model_props(m, {"k": "v"})
    return m


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**32 + 5])
def test_varint_decodes_back(n: int) -> None:
    b = varint(n)
    value = sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(b))
    assert value == n and all(x & 0x80 for x in b[:-1]) and not b[-1] & 0x80


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_pieces_join_to_the_serialized_model(depth: int) -> None:
    m = _model()
    pieces = list(chunks(m, depth))
    assert b"".join(pieces) == m.SerializeToString(deterministic=True)
    if depth >= 1:  # the weights come one initializer at a time: no piece holds both
        w = m.graph.initializer[0].SerializeToString()
        assert max(len(p) for p in pieces) < len(w) + len(m.graph.initializer[1].SerializeToString())


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_real_models_serialize_identically() -> None:
    for path in sorted(SHARED_MODELS.glob("*.onnx")):
        m = onnx.load(str(path))
        assert b"".join(chunks(m)) == m.SerializeToString(deterministic=True), path.name


def test_model_chunks_put_other_initializers_in_place_of_the_graph_s_own() -> None:
    """model_chunks(model, others) parses as ``model`` whose initializers are ``others``."""
    from convopt.serialize import model_chunks

    model = _model()
    others = [numpy_helper.from_array(np.full(3, 7.0, np.float32), "other")]
    swapped = onnx.ModelProto.FromString(b"".join(model_chunks(model, others)))
    assert [t.name for t in swapped.graph.initializer] == ["other"]
    del swapped.graph.initializer[:]
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.initializer[:]
    assert swapped == bare
