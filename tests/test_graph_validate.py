"""Load-time validation: graph outputs that declare no type or shape (onnx.checker refuses them, ONNX Runtime
runs them) are typed by shape inference and reported; everything else the checker refuses still is."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from convopt.cli import app
from convopt.errors import ModelLoadError
from convopt.graph import untyped_outputs
from convopt.io import load_model, load_model_report
from tests.helpers import NO_SHARED, SHARED_MODELS, conv_model, run

runner = CliRunner()


def _no_type(vi: onnx.ValueInfoProto) -> None:
    vi.ClearField("type")  # as helper.make_empty_tensor_value_info


def _type_no_shape(vi: onnx.ValueInfoProto) -> None:
    vi.type.tensor_type.ClearField("shape")


def _save(tmp_path: Path, m: onnx.ModelProto) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    return p


@pytest.mark.parametrize("strip,lacked", [(_no_type, "type"), (_type_no_shape, "shape")])
def test_an_output_without_type_or_shape_is_filled_by_inference_and_reported(
    tmp_path: Path, strip, lacked: str  # type: ignore[no-untyped-def]
) -> None:
    m = conv_model(cin=4, cout=8, batch=1, hw=(9, 9), pads=(1, 1, 1, 1))
    strip(m.graph.output[0])
    with pytest.raises(onnx.checker.ValidationError):  # what the checker does with it
        onnx.checker.check_model(m)
    x = np.ones((1, 4, 9, 9), np.float32)
    assert run(m, {"x": x})[0].shape == (1, 8, 9, 9)  # and ORT runs it
    assert untyped_outputs(m.graph) == ["z"]
    loaded = load_model_report(_save(tmp_path, m))
    assert loaded.warnings == (f"graph output 'z' declared no {lacked}; filled in by shape inference as "
                               "float [1, 8, 9, 9] (onnx.checker requires one)",)
    onnx.checker.check_model(loaded.model)
    assert untyped_outputs(loaded.model.graph) == []
    out = tmp_path / "o.onnx"
    r = runner.invoke(app, ["optimize", str(tmp_path / "m.onnx"), "-o", str(out), "--no-eval", "-q", "--full-rank"])
    assert r.exit_code == 0, r.output
    new = onnx.load(str(out))
    onnx.checker.check_model(new)
    np.testing.assert_allclose(run(new, {"x": x})[0], run(m, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_dynamic_output_dims_are_filled_as_inference_gives_them(tmp_path: Path) -> None:
    m = conv_model(cin=4, cout=8, batch=1, hw=(9, 9))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = "N"
    _no_type(m.graph.output[0])
    (warning,) = load_model_report(_save(tmp_path, m)).warnings
    assert warning.endswith("as float [N, 8, 7, 7] (onnx.checker requires one)")


def test_a_typed_model_loads_without_warnings(tmp_path: Path) -> None:
    assert load_model_report(_save(tmp_path, conv_model())).warnings == ()


def test_an_output_without_element_type_is_still_refused(tmp_path: Path) -> None:
    """tensor_type with elem_type 0: ORT cannot load it either, so it is not the case filled in."""
    m = conv_model()
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    _type_no_shape(m.graph.output[0])
    assert untyped_outputs(m.graph) == []
    with pytest.raises(ModelLoadError, match="invalid ONNX model"):
        load_model(_save(tmp_path, m))


def test_the_rest_of_the_model_is_checked_before_inference(tmp_path: Path) -> None:
    m = conv_model()
    _no_type(m.graph.output[0])
    m.graph.node[1].input[0] = "nowhere"  # a dangling input: the checker's refusal must still come out
    with pytest.raises(ModelLoadError, match="invalid ONNX model"):
        load_model(_save(tmp_path, m))


def test_an_output_inference_cannot_type_is_refused_in_one_line(tmp_path: Path) -> None:
    g = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="custom.ops")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_empty_tensor_value_info("y")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("custom.ops", 1)])
    r = runner.invoke(app, ["inspect", str(_save(tmp_path, m))])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "invalid ONNX model" in lines[0] and "type" in lines[0], r.output


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_shared_models_load_without_warnings() -> None:
    for name in ("squeezenet1.1.onnx", "mnist-cntk.onnx", "candy-style.onnx", "ddddocr-ocr.onnx"):
        assert load_model_report(SHARED_MODELS / name).warnings == (), name


def test_an_initializer_given_as_an_untyped_output_takes_its_own_type(tmp_path: Path) -> None:
    m = conv_model(batch=1, hw=(9, 9))
    m.graph.output.append(helper.make_empty_tensor_value_info("B"))  # the bias, 16 values, as a second output
    loaded = load_model_report(_save(tmp_path, m))
    assert loaded.warnings == ("graph output 'B' declared no type; filled in by shape inference as float [16] "
                               "(onnx.checker requires one)",)
    np.testing.assert_array_equal(run(loaded.model, {"x": np.ones((1, 8, 9, 9), np.float32)})[1],
                                  onnx.numpy_helper.to_array(m.graph.initializer[1]))
