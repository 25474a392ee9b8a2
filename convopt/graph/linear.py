"""A Gemm with a constant weight (a fully connected layer) read as a 1×1 conv: y (rows, O) = x (rows, I) · Wᵀ
+ b is a 1×1 conv of the input viewed as (1, I, rows, 1). The lowrank pass rewrites it (two Gemms, I→r→O);
auto mode's statistics and refits view its tensors the same way (``nchw``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from convopt.graph.constants import ConstantTable
from convopt.graph.read import ConvSkip, ConvSpec, attrs
from convopt.graph.shapes import Dim, static_shape

FLOAT = onnx.TensorProto.FLOAT


def _refusal(node: onnx.NodeProto, consts: ConstantTable) -> str | None:
    a = attrs(node)
    if len(node.input) < 2 or not consts.is_constant(node.input[1]):
        return "Gemm weight is not constant"
    if consts.dtype(node.input[1]) != FLOAT or len(consts.shape(node.input[1]) or ()) != 2:
        return "Gemm weight is not a 2-D float32 constant"
    if int(a.get("transA", 0)) != 0 or float(a.get("alpha", 1.0)) != 1.0:  # type: ignore[arg-type]
        return "Gemm with transA or alpha: not rewritten"
    if len(node.input) > 2 and node.input[2]:
        c = consts.shape(node.input[2])
        if not consts.is_constant(node.input[2]) or float(a.get("beta", 1.0)) != 1.0:  # type: ignore[arg-type]
            return "Gemm bias is not a constant added as is (beta 1)"
        if c is None or int(np.prod(c)) != _out_features(node, consts):
            return "Gemm bias is broadcast: not rewritten"
    return None


def _out_features(node: onnx.NodeProto, consts: ConstantTable) -> int:
    w = consts.shape(node.input[1])
    assert w is not None
    return int(w[0] if int(attrs(node).get("transB", 0)) else w[1])  # type: ignore[arg-type]


def read_gemm(idx: int, node: onnx.NodeProto, name: str, consts: ConstantTable,
              shapes: Mapping[str, Sequence[Dim]]) -> ConvSpec | ConvSkip:
    """The Gemm as a ConvSpec (op "Gemm", weight (O, I, 1, 1)), or why it is not rewritten."""
    reason = _refusal(node, consts)
    if reason is not None:
        return ConvSkip(idx, node, name, reason)
    w_name = node.input[1]
    trans_b = bool(int(attrs(node).get("transB", 0)))  # type: ignore[arg-type]
    O, I = (consts.shape(w_name) if trans_b else tuple(reversed(consts.shape(w_name))))  # type: ignore[arg-type,misc]

    def weight() -> np.ndarray:
        w = consts.value(w_name)
        assert w is not None
        return (w if trans_b else w.T).reshape(O, I, 1, 1)

    b_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    bv = None if b_name is None else consts.value(b_name)
    x = static_shape(shapes.get(node.input[0]))
    rows = None if x is None or len(x) != 2 else int(x[0])
    W = weight()
    return ConvSpec(
        index=idx, node=node, name=name, x=node.input[0], y=node.output[0], w_shape=(O, I, 1, 1),
        finite=bool(np.all(np.isfinite(W))), weight=weight,
        B=None if bv is None else bv.reshape(-1).astype(np.float32), w_name=w_name, b_name=b_name,
        kernel=(1, 1), strides=(1, 1), dilations=(1, 1), group=1, pads=(0, 0, 0, 0), auto_pad="NOTSET",
        in_shape=None if rows is None else (1, I, rows, 1), out_shape=None if rows is None else (1, O, rows, 1),
        op="Gemm", x_shape=None if x is None else tuple(int(d) for d in x))


def nchw(arr: np.ndarray, conv: ConvSpec, samples: int | None = None) -> np.ndarray:
    """A layer's input or output as (samples, channels, H, W): as it is for a Conv; a Gemm's (b·rows, C)
    rows as (b, C, rows, 1), ``rows`` its rows per sample (``samples`` given: the tensor's rows / samples,
    for samples whose row count differs from the one the shapes were computed at)."""
    if conv.op == "Conv":
        return arr
    assert conv.in_shape is not None
    rows = arr.shape[0] // samples if samples else conv.in_shape[2]
    a = np.asarray(arr).reshape(-1, rows, arr.shape[-1])
    return a.transpose(0, 2, 1)[..., None]
