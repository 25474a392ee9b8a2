"""Structural checks at load time, for what onnx.checker lets through (cycles, zero-sized inputs, Convs that
cannot run), and the one repair convopt makes: typing graph outputs that declare no type or shape.

Which Conv problems refuse a model is decided by the one Conv validity check (convopt.graph.read.conv_issue):
its fatal issues.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
from onnx import helper

from convopt.graph.infer import infer_skeleton, shape_skeleton
from convopt.graph.read import ConstantTable, conv_issue, node_display_name
from convopt.graph.shapes import Dim, declared_dims


def find_cycle(graph: onnx.GraphProto) -> list[str] | None:
    """Names of nodes that lie on or behind a cycle of the graph (None: the graph is acyclic).

    Kahn's algorithm, iterative (no recursion, so a deep or looping graph cannot exhaust the stack); node
    order is ignored, so an acyclic graph that is merely out of order is not reported here.
    (onnx-graphsurgeon's toposort also detects cycles, but recursively: a 20 000-node chain exhausts Python's
    stack, and it names no node.)
    """
    producer: dict[str, int] = {}
    for i, n in enumerate(graph.node):
        for o in n.output:
            if o:
                producer.setdefault(o, i)
    consumers: list[list[int]] = [[] for _ in graph.node]
    indeg = [0] * len(graph.node)
    for i, n in enumerate(graph.node):
        for src in {producer[t] for t in n.input if t and t in producer}:
            consumers[src].append(i)
            indeg[i] += 1
    ready = [i for i, d in enumerate(indeg) if d == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for j in consumers[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    if seen == len(graph.node):
        return None
    return [node_display_name(graph.node[i]) for i, d in enumerate(indeg) if d > 0]


def _declared_shapes(graph: onnx.GraphProto) -> dict[str, tuple[Dim, ...]]:
    """Dims written in the graph (inputs, value_info, outputs)."""
    out: dict[str, tuple[Dim, ...]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = declared_dims(vi)
        if dims is not None:
            out[vi.name] = dims
    return out


def model_problem(model: onnx.ModelProto, shapes: Mapping[str, Sequence[Dim]] | None = None) -> str | None:
    """Why the model is malformed in a way onnx.checker lets through (None: no problem found).

    Looks for a cycle, a zero-sized graph input, and Convs with a fatal issue (conv_issue: weight against
    attributes or input, attribute values, sizes beyond 64-bit arithmetic). Such a model cannot run in any
    runtime, so it is refused rather than skipped. ``shapes``: known tensor dims (e.g. from shape
    inference); the dims written in the graph are used too.
    """
    graph = model.graph
    cycle = find_cycle(graph)
    if cycle is not None:
        shown = ", ".join(repr(n) for n in cycle[:4]) + (" ..." if len(cycle) > 4 else "")
        return f"the graph has a cycle (nodes on or after it: {shown})"
    declared = _declared_shapes(graph)
    inits = {t.name for t in graph.initializer}
    for inp in graph.input:
        shp = declared.get(inp.name)
        if inp.name not in inits and shp is not None and 0 in shp:
            return f"graph input '{inp.name}' has a zero-sized dimension {['?' if d is None else d for d in shp]}"
    consts = ConstantTable(graph)
    known: dict[str, Sequence[Dim]] = dict(declared)
    known.update(shapes or {})
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        issue = conv_issue(node, consts, known, model.ir_version)
        if issue is not None and issue.fatal:
            return f"Conv '{node_display_name(node)}': {issue.reason}"
    return None


# ---------------------------------------------------------------- graph outputs without a type or shape


def untyped_outputs(graph: onnx.GraphProto) -> list[str]:
    """Graph outputs that onnx.checker refuses only for a missing type or shape: no type at all, or a tensor
    type with an element type but no shape. (ONNX Runtime runs such models; the IR spec does not require an
    output's shape.) A tensor type without element type is not listed: ORT cannot load that either."""
    out = []
    for o in graph.output:
        if not o.HasField("type"):
            out.append(o.name)
        elif o.type.HasField("tensor_type"):
            tt = o.type.tensor_type
            if tt.elem_type != onnx.TensorProto.UNDEFINED and not tt.HasField("shape"):
                out.append(o.name)
    return out


def fill_output_types(model: onnx.ModelProto) -> tuple[str, ...]:
    """Give graph outputs that declare no type or shape the ones shape inference finds (in place), and say so:
    one warning line per output filled. Outputs inference cannot type are left as they are (the checker then
    refuses the model). The rest of the model is checked first, so inference never sees a malformed graph;
    raises what onnx.checker raises."""
    missing = untyped_outputs(model.graph)
    if not missing:
        return ()
    probe = shape_skeleton(model)
    kept = [o for o in probe.graph.output if o.name not in missing]
    del probe.graph.output[:]
    probe.graph.output.extend(kept)
    onnx.checker.check_model(probe)
    inferred = infer_skeleton(probe)
    if inferred is None:
        return ()
    g = inferred.graph
    found = {vi.name: vi.type for vi in [*g.value_info, *g.input, *g.output] if _is_typed(vi)}
    found.update((t.name, helper.make_tensor_type_proto(t.data_type, list(t.dims)))
                 for t in model.graph.initializer if t.name in missing)  # an initializer given as an output
    warnings = []
    for o in model.graph.output:
        if o.name in missing and o.name in found:
            lacked = "shape" if o.HasField("type") else "type"
            o.type.CopyFrom(found[o.name])
            warnings.append(f"graph output '{o.name}' declared no {lacked}; filled in by shape inference as "
                            f"{_describe(o)} (onnx.checker requires one)")
    return tuple(warnings)


def _is_typed(vi: onnx.ValueInfoProto) -> bool:
    tt = vi.type.tensor_type
    return vi.type.HasField("tensor_type") and tt.elem_type != onnx.TensorProto.UNDEFINED and tt.HasField("shape")


def _describe(vi: onnx.ValueInfoProto) -> str:
    dims = declared_dims(vi) or ()
    dtype = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()
    return f"{dtype} [{', '.join('?' if d is None else str(d) for d in dims)}]"
