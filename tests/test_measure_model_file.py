"""convopt.measure.model_file (the weights ORT reads as external data)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convopt.measure.model_file import EXTERNAL_MIN, WEIGHTS, external, model_file
from convopt.measure.ort import OrtSettings, make_session
from tests.helpers import NO_SHARED, SHARED_MODELS


def conv_chain(channels: int = 8, size: int = 32, depth: int = 3, seed: int = 0) -> onnx.ModelProto:
    """X (1, C, size, size) → ``depth`` 3×3 Convs (C → C, pads 1), each with a bias; one tiny initializer
    (a (1,) scale, under EXTERNAL_MIN) and one int64 shape tensor held in a typed field, not raw_data."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "X"
    for i in range(depth):
        w = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.2
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(rng.standard_normal(channels)
                                                                               .astype(np.float32), f"B{i}")]
        nodes.append(helper.make_node("Conv", [x, f"W{i}", f"B{i}"], [f"C{i}"], pads=[1, 1, 1, 1]))
        x = f"C{i}"
    inits.append(numpy_helper.from_array(np.array([0.5], np.float32), "scale"))
    inits.append(helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1]))  # int64_data, no raw_data
    nodes += [helper.make_node("Mul", [x, "scale"], ["M"]), helper.make_node("Reshape", ["M", "shape"], ["Y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                              [1, channels, size, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_weights_go_beside_the_graph_and_read_back_exactly(tmp_path) -> None:
    """The folder holds a graph without its large weights and WEIGHTS beside it; loaded back with its
    external data it has every initializer bit for bit; tensors under EXTERNAL_MIN or held in typed fields
    stay inside; the caller's model is not changed; the folder is gone on exit."""
    model = conv_chain()
    before = model.SerializeToString()
    with model_file(model) as path:
        folder = path.parent
        assert sorted(p.name for p in folder.iterdir()) == sorted([path.name, WEIGHTS])
        bare = onnx.load(str(path), load_external_data=False)
        outside = {t.name for t in bare.graph.initializer if t.data_location == TensorProto.EXTERNAL}
        assert outside == {f"{k}{i}" for k in "W" for i in range(3)}  # the biases (32 B) stay inside too
        assert path.stat().st_size < 2 * EXTERNAL_MIN < (folder / WEIGHTS).stat().st_size
        back = onnx.load(str(path))
    assert not folder.exists()
    assert model.SerializeToString() == before
    assert [t.name for t in back.graph.initializer] == [t.name for t in model.graph.initializer]
    for t, u in zip(model.graph.initializer, back.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(u), numpy_helper.to_array(t))
    assert list(back.graph.node) == list(model.graph.node)


def test_external_keeps_every_field_but_the_data() -> None:
    """A stand-in keeps the tensor's name, type, dims and doc string, and points at its bytes' place."""
    import io

    t = numpy_helper.from_array(np.arange(600, dtype=np.float32).reshape(20, 30), "T")
    t.doc_string = "kept"
    data = io.BytesIO(b"x" * 10)
    data.seek(10)
    stub = external(t, data)
    assert stub is not t and not stub.HasField("raw_data") and stub.data_location == TensorProto.EXTERNAL
    assert (stub.name, stub.data_type, list(stub.dims), stub.doc_string) == ("T", t.data_type, [20, 30], "kept")
    info = {e.key: e.value for e in stub.external_data}
    assert info == {"location": WEIGHTS, "offset": "10", "length": str(len(t.raw_data))}
    assert data.getvalue()[10:] == t.raw_data
    small = numpy_helper.from_array(np.zeros(3, np.float32), "s")
    assert external(small, data) is small


def test_ort_runs_the_written_model_as_the_serialized_one() -> None:
    """Same outputs, bit for bit, from the folder as from the model's bytes (also with another model's
    initializers added, as the refit runs write a pruned skeleton)."""
    from convopt.graph.edit import pruned, with_outputs

    model, settings = conv_chain(), OrtSettings(threads=1)
    x = {"X": np.random.default_rng(1).standard_normal((1, 8, 32, 32)).astype(np.float32)}
    want = make_session(model.SerializeToString(), settings).run(None, x)[0]
    np.testing.assert_array_equal(make_session(model, settings).run(None, x)[0], want)
    skeleton, inits = pruned(model, ["C1"])
    with model_file(skeleton, inits) as path:
        got = make_session(path, settings).run(["C1"], x)[0]
    mid = make_session(with_outputs(model, ["C1"]).SerializeToString(), settings).run(["C1"], x)[0]
    np.testing.assert_array_equal(got, mid)


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
@pytest.mark.parametrize("name", ["squeezenet1.1.onnx", "mnist-cntk.onnx", "candy-style.onnx", "ddddocr-ocr.onnx"])
def test_real_models_run_from_the_folder_as_from_their_file(name: str) -> None:
    """The shared models (IR 3 ones among them, whose initializers are also graph inputs) give the same
    outputs, bit for bit, from convopt's folder as from their own file."""
    from convopt.measure.data import random_eval_data, resolve_input_shapes
    from convopt.measure.ort import batch_feeds

    path = SHARED_MODELS / name
    model, settings = onnx.load(str(path)), OrtSettings(threads=1)
    theirs = make_session(path, settings)
    data = random_eval_data(model, resolve_input_shapes(model, {"input1": (1, 1, 64, 96)} if "ocr" in name else None), seed=0, samples=1)
    feeds = batch_feeds(theirs, data, 0, 1)
    for a, b in zip(make_session(model, settings).run(None, feeds), theirs.run(None, feeds)):
        np.testing.assert_array_equal(a, b)
