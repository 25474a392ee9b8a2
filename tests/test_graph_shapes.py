"""convopt.graph.shapes: one dimension parser, one input-shape resolver (lenient and strict views of the same
rules), dynamic_dims for inspect; and infer_tensor_shapes built on them."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

import convopt.measure.data as measure_data
from convopt.errors import ShapeError
from convopt.graph import (
    DynamicDim, declared_dims, dynamic_dims, graph_input_shapes, infer_tensor_shapes, resolve_input_shapes,
    resolve_inputs, static_shape,
)
from convopt.graph import shapes as graph_shapes
from tests.helpers import conv_model


def relu_model(dims: list | None, name: str = "x", extra: onnx.ValueInfoProto | None = None) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)] + ([extra] if extra else [])
    graph = helper.make_graph([helper.make_node("Relu", [name], ["y"])], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_declared_dims_reads_fixed_symbolic_unset_and_negative_dims() -> None:
    vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "N", None, 0, 7])
    vi.type.tensor_type.shape.dim[2].dim_value = -1  # some exporters write -1 for "dynamic"
    assert declared_dims(vi) == (1, "N", None, 0, 7)
    assert declared_dims(helper.make_tensor_value_info("x", TensorProto.FLOAT, None)) is None  # rank unknown
    assert declared_dims(helper.make_empty_tensor_value_info("x")) is None
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [1, 2])
    assert declared_dims(seq) is None
    assert static_shape((1, 3, 8, 8)) == (1, 3, 8, 8)
    assert static_shape((1, "C", 8, 8)) is None and static_shape((None,)) is None and static_shape(None) is None


def test_measure_data_uses_the_graph_resolver() -> None:
    """The names tests and the CLI import from convopt.measure.data are the graph layer's, not a second copy."""
    for name in ("graph_inputs", "input_dtype", "resolve_input_shapes", "parse_input_shape"):
        assert getattr(measure_data, name) is getattr(graph_shapes, name), name


@pytest.mark.parametrize("dims,lenient", [
    ([1, 3, 8, 8], (1, 3, 8, 8)),
    (["N", 3, 8, 8], (1, 3, 8, 8)),  # a dynamic batch becomes 1 in both views
    ([None, 3, 8, 8], (1, 3, 8, 8)),
    ([], ()),  # a scalar
])
def test_lenient_and_strict_agree_where_the_shape_is_known(dims: list, lenient: tuple) -> None:
    m = relu_model(dims)
    assert graph_input_shapes(m) == {"x": lenient}
    assert resolve_input_shapes(m) == {"x": lenient}


@pytest.mark.parametrize("dims,needle", [
    (["N", 3, "H", "W"], "pass --input-shape x:1x3x224x224"),
    (None, "no declared shape"),
    (["N", "T"], "pass --input-shape x:1x1"),
])
def test_unknown_shape_is_none_when_lenient_and_an_error_naming_the_option_when_strict(
    dims: list | None, needle: str
) -> None:
    m = relu_model(dims)
    assert graph_input_shapes(m) == {"x": None}
    (r,) = resolve_inputs(m)
    assert r.shape is None and r.problem is not None and needle in r.problem
    with pytest.raises(ShapeError, match=needle.replace(".", r"\.")):
        resolve_input_shapes(m)


def test_a_hint_fixes_the_shape_in_both_views_and_a_bad_hint_is_refused_in_both() -> None:
    m = relu_model(["N", 3, "H", "W"])
    for resolve in (graph_input_shapes, resolve_input_shapes):
        assert resolve(m, {"x": (2, 3, 32, 48)}) == {"x": (2, 3, 32, 48)}
        with pytest.raises(ShapeError, match="contradicts the fixed dims"):
            resolve(m, {"x": (1, 4, 32, 32)})
        with pytest.raises(ShapeError, match="rank 4"):
            resolve(m, {"x": (1, 3, 32)})
        with pytest.raises(ShapeError, match="not a model input"):
            resolve(m, {"z": (1, 3, 32, 32)})


def test_dynamic_dims_names_each_dynamic_axis_and_the_option_to_pass() -> None:
    m = relu_model(["N", 3, "H", None], extra=helper.make_tensor_value_info("mask", TensorProto.FLOAT, None))
    dd = dynamic_dims(m)
    hint = "--input-shape x:1x3x224x224"
    assert dd == [DynamicDim("x", 0, "N", hint), DynamicDim("x", 2, "H", hint), DynamicDim("x", 3, None, hint),
                  DynamicDim("mask", None, None, "--input-shape mask:1x3x224x224")]
    assert [d.is_batch for d in dd] == [True, False, False, False]
    assert dynamic_dims(conv_model(batch=1)) == []


def test_dynamic_dims_skip_initializers_listed_as_inputs() -> None:
    m = conv_model(batch=1, hw=(8, 8), ir_version=3)  # IR 3: the weights are graph inputs too
    assert [i.name for i in m.graph.input] == ["x", "W", "B"]
    assert dynamic_dims(m) == [] and list(graph_input_shapes(m)) == ["x"]


def test_infer_tensor_shapes_leaves_unknown_sizes_out_and_takes_a_hint_for_a_shapeless_input() -> None:
    m = conv_model(cin=8, cout=16, batch=1, hw=(12, 12))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    shapes = infer_tensor_shapes(m, None, ["y"])
    assert "y" not in shapes and "x" not in shapes and shapes["W"] == (16, 8, 3, 3)
    assert infer_tensor_shapes(m, {"x": (1, 8, 12, 12)}, ["y"])["y"] == (1, 16, 10, 10)
    m.graph.input[0].type.tensor_type.ClearField("shape")  # no declared shape at all
    assert infer_tensor_shapes(m, {"x": (1, 8, 12, 12)}, ["y"])["y"] == (1, 16, 10, 10)


def test_peak_live_bytes_counts_each_activation_from_its_maker_to_its_last_reader() -> None:
    """X → Relu → A → Relu → B; Add(A, B) → C (the output). X dies after the first Relu; at the Add, A, B and C
    are alive: 3 × 128 bytes (2·4·4 floats each, per sample). Weights do not count."""
    import numpy as np
    from onnx import numpy_helper

    from convopt.graph import peak_live_bytes

    g = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["A"]), helper.make_node("Relu", ["A"], ["B"]),
         helper.make_node("Add", ["A", "B"], ["S"]), helper.make_node("Mul", ["S", "W"], ["C"])],
        "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2, 4, 4), np.float32) * 0, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    shapes = infer_tensor_shapes(m)
    assert peak_live_bytes(m, shapes) == 3 * 128  # A, B, S at the Add (S and C at the Mul: 2 × 128)
    assert peak_live_bytes(m, {}) == 0  # nothing known, nothing counted
