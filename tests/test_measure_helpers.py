"""Tiny ONNX models built in code for the measure tests, a numpy reference for them, and checks of both."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
needs_shared = pytest.mark.skipif(
    not (SHARED / "models").is_dir() or not (SHARED / "data").is_dir(),
    reason=f"shared models/data not found at {SHARED} (checked out without ../shared)",
)


def classifier_weights(seed: int = 0, c_in: int = 3, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(classes, c_in, 3, 3)).astype(np.float32)
    b = rng.normal(size=(classes,)).astype(np.float32)
    return w, b


def tiny_classifier(
    batch: int | str = "N",
    *,
    c_in: int = 3,
    hw: tuple[int | str, int | str] = (8, 8),
    classes: int = 4,
    weights: tuple[np.ndarray, np.ndarray] | None = None,
    nhwc: bool = False,
    input_type: int = TensorProto.FLOAT,
    opset: int = 13,
) -> onnx.ModelProto:
    """X → Conv 3×3 pad 1 → Relu → GlobalAveragePool → Flatten → Y (batch, classes).

    ``batch``: int for a fixed batch dim, str for a symbolic one. ``nhwc``: the input is (N, H, W, C) and
    a Transpose feeds the Conv. ``input_type`` other than float gets a Cast to float first.
    """
    w, b = weights if weights is not None else classifier_weights(c_in=c_in, classes=classes)
    shape = [batch, hw[0], hw[1], c_in] if nhwc else [batch, c_in, hw[0], hw[1]]
    nodes = []
    x = "X"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["Xf"], to=TensorProto.FLOAT))
        x = "Xf"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [x], ["Xt"], perm=[0, 3, 1, 2]))
        x = "Xt"
    nodes += [
        helper.make_node("Conv", [x, "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["Y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("X", input_type, shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def numpy_classifier(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of tiny_classifier for NCHW x (N, C, H, W) → (N, classes), in float64."""
    x = x.astype(np.float64)
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j].astype(np.float64))
    out += b.astype(np.float64)[None, :, None, None]
    return np.maximum(out, 0).mean(axis=(2, 3))


def two_output_model(batch: int | str = "N") -> onnx.ModelProto:
    """X (batch, 6) → scores = X·A (batch, 3) and feat = X + 1 (batch, 6): one classifier-like output each."""
    a = np.arange(18, dtype=np.float32).reshape(6, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "A"], ["scores"]),
         helper.make_node("Add", ["X", "one"], ["feat"])],
        "two",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, 6])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3]),
         helper.make_tensor_value_info("feat", TensorProto.FLOAT, [batch, 6])],
        [numpy_helper.from_array(a, "A"), numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def image_model_output_model(batch: int | str = "N") -> onnx.ModelProto:
    """X (batch, 2, 4, 4) → Y = Relu(X): an image-like output with no class scores."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"])], "img",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, 2, 4, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [batch, 2, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


# -- the helpers themselves ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, "N"])
@pytest.mark.parametrize("nhwc", [False, True])
def test_tiny_classifier_is_valid_and_matches_numpy(batch: int | str, nhwc: bool) -> None:
    import onnxruntime as ort

    model = tiny_classifier(batch, nhwc=nhwc)
    onnx.checker.check_model(model, full_check=True)
    w, b = classifier_weights()
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    feed = x.transpose(0, 2, 3, 1).copy() if nhwc else x
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"X": feed})
    np.testing.assert_allclose(y, numpy_classifier(x, w, b), rtol=1e-5, atol=1e-5)
