"""Small dynamic-width conv nets built in code, and ragged data for them (samples of different widths)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HEIGHT = 8


def ctc_like_model(classes: int = 6, channels: int = 8, seed: int = 0, batch: int | str = 1,
                   shift: float = 0.0) -> onnx.ModelProto:
    """x [batch, 1, 8, W] → Conv 3×3 (1→c) → Relu → Conv 3×3 (c→c) → Relu → Conv 1×1 (c→classes) → mean over
    the height → logits [W, batch, classes]: one row of class scores per column, as an OCR model's [T, 1, C].
    ``shift`` is added to the last conv's bias of class 1, the class that wins most columns (a negative shift: a
    candidate that reads some columns differently)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)
    w2 = (rng.standard_normal((channels, channels, 3, 3)) / 4).astype(np.float32)
    w3 = rng.standard_normal((classes, channels, 1, 1)).astype(np.float32)
    b3 = np.zeros(classes, np.float32)
    b3[1] += shift
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"), (b3, "b3"),
                                                         (np.array([2], np.int64), "h_axis"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        helper.make_node("ReduceMean", ["c3"], ["m"], axes=[2], keepdims=0),  # (B, C, W)
        helper.make_node("Transpose", ["m"], ["logits"], perm=[2, 0, 1]),  # (W, B, C)
    ]
    graph = helper.make_graph(
        nodes, "ctc_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, HEIGHT, "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["width", batch, classes])], inits[:4])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="convopt-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def pooled_classifier(classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """x [N, 3, H, W] (both dynamic) → Conv 3×3 (3→8) → Relu → GlobalAveragePool → Flatten → Gemm → [N,
    classes]: one row of class scores per sample, whatever the image size."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    g = rng.standard_normal((classes, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "pooled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(g, "g")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="convopt-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def widths(n: int, seed: int = 0, low: int = 5, high: int = 24) -> list[int]:
    return [int(w) for w in np.random.default_rng(seed).integers(low, high, n)]


def ragged_samples(n: int, seed: int = 0, height: int = HEIGHT, channels: int = 1) -> list[np.ndarray]:
    """n samples (1, channels, height, W_i) of seeded random widths, float32 in [0, 1)."""
    rng = np.random.default_rng(seed + 100)
    return [rng.random((1, channels, height, w), dtype=np.float32) for w in widths(n, seed)]


def save_keyed(path: Path, samples: list[np.ndarray], name: str = "x", **extra: np.ndarray) -> Path:
    """The samples in an .npz keyed NAME/0, NAME/1, ... (plus ``extra`` members)."""
    np.savez(path, **{f"{name}/{i}": s for i, s in enumerate(samples)}, **extra)
    return path
