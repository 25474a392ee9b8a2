"""fold_bn: Conv(x, W, b) → BatchNormalization(γ, β, μ, σ²) becomes Conv(x, W·s, (b − μ)·s + β),
s = γ / sqrt(σ² + ε) per output channel; exact, so decompositions see the effective weights."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx

from convopt.graph import ConstantTable, NameScope, attrs, node_display_name
from convopt.graph.edit import NewTensor, add_tensor, used_names_in_subgraphs
from convopt.graph.infer import copy_fields
from convopt.report import NodeRewrite, NodeSkip

NAME = "fold_bn"


@dataclass
class Folded:
    """The model with BatchNormalization folded, what was folded and what was not (with the reason)."""

    model: onnx.ModelProto
    rewritten: list[NodeRewrite]
    skipped: list[NodeSkip]
    seconds: float


@dataclass
class _Fold:
    """One Conv→BatchNormalization pair to merge: the new weight and bias (and their names)."""

    conv: onnx.NodeProto
    bn: onnx.NodeProto
    w_name: str
    b_name: str
    record: NodeRewrite

    def tensors(self, consts: ConstantTable) -> list[NewTensor]:
        """The folded weight and bias, computed now (one pair in memory at a time)."""
        W, b = _folded(self.bn, self.conv, consts)
        return [NewTensor(self.w_name, W), NewTensor(self.b_name, b)]


def fold_batchnorm(model: onnx.ModelProto) -> Folded:
    """``model`` with every foldable Conv→BatchNormalization pair merged into the Conv: a new model built
    field by field (the weights being replaced are never copied), or ``model`` itself when nothing folds."""
    t0 = time.perf_counter()
    folds, skipped = _plan(model)
    if not folds:
        return Folded(model, [], skipped, time.perf_counter() - t0)
    g0 = model.graph
    by_conv = {id(f.conv): f for f in folds}
    dropped = {id(f.bn) for f in folds}
    nodes = []
    for n in g0.node:
        if id(n) in dropped:
            continue
        f = by_conv.get(id(n))
        if f is not None:
            n = _folded_conv(n, f)
        nodes.append(n)
    old = {i for f in folds for i in list(f.conv.input[1:]) + list(f.bn.input[1:]) if i}
    dead = old - {i for n in nodes for i in n.input} - {o.name for o in g0.output} - used_names_in_subgraphs(nodes)
    m = onnx.ModelProto()
    copy_fields(model, m, skip=("graph",))
    g = m.graph
    copy_fields(g0, g, skip=("node", "initializer", "input"))
    g.node.extend(n for n in nodes if not (n.op_type == "Constant" and n.output and n.output[0] in dead))
    g.initializer.extend(t for t in g0.initializer if t.name not in dead)
    consts = ConstantTable(g0)
    for f in folds:
        for t in f.tensors(consts):
            add_tensor(g, t)
    g.input.extend(i for i in g0.input if i.name not in dead)
    if m.ir_version < 4:
        g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in list(g.initializer)[-2 * len(folds):])
    return Folded(m, [f.record for f in folds], skipped, time.perf_counter() - t0)


def _folded_conv(conv: onnx.NodeProto, f: _Fold) -> onnx.NodeProto:
    n = onnx.NodeProto()
    n.CopyFrom(conv)
    del n.input[:]
    n.input.extend([conv.input[0], f.w_name, f.b_name])
    n.output[0] = f.bn.output[0]
    return n


def _plan(model: onnx.ModelProto) -> tuple[list[_Fold], list[NodeSkip]]:
    """Which pairs fold (with their new weights), and why the other BatchNormalizations do not."""
    g = model.graph
    consts = ConstantTable(g)
    names = NameScope(g)
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    producer = {o: n for n in g.node for o in n.output}
    graph_outputs = {o.name for o in g.output}
    folds: list[_Fold] = []
    skipped: list[NodeSkip] = []
    for bn in g.node:
        if bn.op_type != "BatchNormalization":
            continue
        conv = producer.get(bn.input[0])
        reason = _refusal(bn, conv, consumers, graph_outputs, consts, model.ir_version)
        fold = None if reason else _fold(bn, conv, consts, names)  # type: ignore[arg-type]
        if fold is None:
            skipped.append(NodeSkip(node_display_name(bn), reason or
                                    "BatchNormalization parameters do not match the conv's channels"))
        else:
            folds.append(fold)
    return folds, skipped


def _folded(bn: onnx.NodeProto, conv: onnx.NodeProto, consts: ConstantTable) -> tuple[np.ndarray, np.ndarray]:
    """W·s and (b − μ)·s + β, s = γ / √(σ² + ε)."""
    eps = float(attrs(bn).get("epsilon", 1e-5))  # type: ignore[arg-type]
    gamma, beta, mean, var = (consts.value(n).astype(np.float64) for n in bn.input[1:5])  # type: ignore[union-attr]
    W = consts.value(conv.input[1]).astype(np.float64)  # type: ignore[union-attr]
    b = consts.value(conv.input[2]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] \
        else np.zeros(W.shape[0])  # type: ignore[union-attr]
    s = gamma / np.sqrt(var + eps)
    return W * s.reshape(-1, *([1] * (W.ndim - 1))), (b - mean) * s + beta


def _fold(bn: onnx.NodeProto, conv: onnx.NodeProto, consts: ConstantTable, names: NameScope) -> _Fold | None:
    """The fold of ``bn`` into ``conv`` (its names and record; the arrays are computed when written), or None
    when the BatchNormalization's parameters do not match the conv's channels."""
    O, shape = None, consts.shape(conv.input[1])
    assert shape is not None
    O = int(shape[0])
    if any(consts.shape(n) != (O,) for n in bn.input[1:5]):
        return None
    had_bias = len(conv.input) > 2 and bool(conv.input[2])
    size = int(np.prod(shape))
    cname, bname = node_display_name(conv), node_display_name(bn)
    record = NodeRewrite(
        node=cname, kernel=tuple(int(k) for k in shape[2:]),
        channels_in=int(shape[1] * int(attrs(conv).get("group", 1))),  # type: ignore[arg-type]
        channels_out=O, ranks={}, macs_before=0, macs_after=0,
        params_before=size + (O if had_bias else 0) + 4 * O, params_after=size + O,
        weight_rel_error=0.0, new_nodes=(cname,), form=f"folded {bname}")
    return _Fold(conv, bn, names.fresh(f"{cname}/folded_W"), names.fresh(f"{cname}/folded_B"), record)


def _refusal(
    bn: onnx.NodeProto,
    conv: onnx.NodeProto | None,
    consumers: dict[str, list[onnx.NodeProto]],
    graph_outputs: set[str],
    consts: ConstantTable,
    ir_version: int,
) -> str | None:
    a = attrs(bn)
    if int(a.get("training_mode", 0)) != 0 or len([o for o in bn.output if o]) > 1:  # type: ignore[arg-type]
        return "BatchNormalization in training mode"
    if int(a.get("spatial", 1)) != 1:  # type: ignore[arg-type]
        return "BatchNormalization with spatial=0"
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return "input is not produced by a Conv"
    if len(consumers[conv.output[0]]) != 1 or conv.output[0] in graph_outputs:
        return "the Conv's output has other consumers"
    if not all(consts.is_constant(n, ir_version) for n in bn.input[1:5]):
        return "BatchNormalization parameters are not constant"
    if not consts.is_constant(conv.input[1], ir_version) or (
        len(conv.input) > 2 and conv.input[2] and not consts.is_constant(conv.input[2], ir_version)
    ):
        return "the Conv's weight or bias is not constant"
    if consts.dtype(conv.input[1]) != onnx.TensorProto.FLOAT:
        return "the Conv's weight is not float32"
    return None
