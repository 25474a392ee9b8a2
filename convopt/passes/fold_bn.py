"""fold_bn: Conv(x, W, b) → BatchNormalization(γ, β, μ, σ²) becomes Conv(x, W·s, (b − μ)·s + β),
s = γ / sqrt(σ² + ε) per output channel; exact, so decompositions see the effective weights."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx

from convopt.graph import ConstantTable, NameScope, attrs, node_display_name, remove_unused_constants, tensor
from convopt.report import NodeRewrite, NodeSkip

NAME = "fold_bn"


@dataclass
class Folded:
    """The model with BatchNormalization folded, what was folded and what was not (with the reason)."""

    model: onnx.ModelProto
    rewritten: list[NodeRewrite]
    skipped: list[NodeSkip]
    seconds: float


def fold_batchnorm(model: onnx.ModelProto) -> Folded:
    """A copy of ``model`` with every foldable Conv→BatchNormalization pair merged into the Conv."""
    t0 = time.perf_counter()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    consts = ConstantTable(g)
    names = NameScope(g)
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    producer = {o: n for n in g.node for o in n.output}
    graph_outputs = {o.name for o in g.output}
    rewritten: list[NodeRewrite] = []
    skipped: list[NodeSkip] = []
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    old_consts: set[str] = set()
    for bn in g.node:
        if bn.op_type != "BatchNormalization":
            continue
        bname = node_display_name(bn)
        conv = producer.get(bn.input[0])
        reason = _refusal(bn, conv, consumers, graph_outputs, consts, m.ir_version)
        if reason:
            skipped.append(NodeSkip(bname, reason))
            continue
        assert conv is not None
        a = attrs(bn)
        eps = float(a.get("epsilon", 1e-5))  # type: ignore[arg-type]
        gamma, beta, mean, var = (consts.value(n).astype(np.float64) for n in bn.input[1:5])  # type: ignore[union-attr]
        W = consts.value(conv.input[1]).astype(np.float64)  # type: ignore[union-attr]
        O = W.shape[0]
        if any(v.shape != (O,) for v in (gamma, beta, mean, var)):
            skipped.append(NodeSkip(bname, "BatchNormalization parameters do not match the conv's channels"))
            continue
        had_bias = len(conv.input) > 2 and bool(conv.input[2])
        b = consts.value(conv.input[2]).astype(np.float64) if had_bias else np.zeros(O)  # type: ignore[union-attr]
        s = gamma / np.sqrt(var + eps)
        W2 = W * s.reshape(-1, *([1] * (W.ndim - 1)))
        b2 = (b - mean) * s + beta
        cname = node_display_name(conv)
        w_name, b_name = names.fresh(f"{cname}/folded_W"), names.fresh(f"{cname}/folded_B")
        new_inits += [tensor(w_name, W2), tensor(b_name, b2)]
        old_consts.update(i for i in list(conv.input[1:]) + list(bn.input[1:]) if i)
        inputs = [conv.input[0], w_name, b_name]
        del conv.input[:]
        conv.input.extend(inputs)
        conv.output[0] = bn.output[0]
        drop.add(id(bn))
        rewritten.append(
            NodeRewrite(
                node=cname,
                kernel=tuple(int(k) for k in W.shape[2:]),
                channels_in=int(W.shape[1] * int(attrs(conv).get("group", 1))),  # type: ignore[arg-type]
                channels_out=int(O),
                ranks={},
                macs_before=0,
                macs_after=0,
                params_before=int(W.size + (O if had_bias else 0) + 4 * O),
                params_after=int(W.size + O),
                weight_rel_error=0.0,
                new_nodes=(cname,),
                form=f"folded {bname}",
            )
        )
    if drop:
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(new_inits)
        if m.ir_version < 4:
            g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new_inits)
        remove_unused_constants(m, old_consts)
    return Folded(m, rewritten, skipped, time.perf_counter() - t0)


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
