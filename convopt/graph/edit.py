"""Editing graphs: fresh names, new Conv nodes and weights, splicing replacements in, cleanup, copies, and
sub-models that compute chosen intermediate tensors.

Names are unique across the whole model: NameScope reads every graph, subgraphs (If/Loop/Scan bodies, nested)
included, because a subgraph sees the outer scope and ONNX requires one static assignment per name.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convopt.graph.infer import copy_fields

from convopt.graph.read import ConvSpec


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (If branches, Loop and Scan bodies), not nested ones."""
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it, at any depth (iterative: deep nesting cannot exhaust the stack)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for n in g.node:
            stack.extend(subgraphs(n))


class NameScope:
    """Hands out node and tensor names not used anywhere in the model, subgraphs included."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used: set[str] = set()
        for g in all_graphs(graph):
            for n in g.node:
                self.used.add(n.name)
                self.used.update(n.input)
                self.used.update(n.output)
            self.used.update(t.name for t in g.initializer)
            self.used.update(t.values.name for t in g.sparse_initializer)
            self.used.update(v.name for v in [*g.input, *g.output, *g.value_info])

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def make_conv(
    name: str,
    x: str,
    w: str,
    b: str | None,
    y: str,
    *,
    kernel: tuple[int, int],
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilations: tuple[int, int] = (1, 1),
    group: int = 1,
    pass_name: str = "",
) -> onnx.NodeProto:
    inputs = [x, w] + ([b] if b else [])
    node = helper.make_node(
        "Conv",
        inputs,
        [y],
        name=name,
        kernel_shape=list(kernel),
        strides=list(strides),
        pads=list(pads),
        dilations=list(dilations),
        group=group,
    )
    if pass_name:
        node.doc_string = f"convopt:{pass_name}"
    return node


def tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)


@dataclass(frozen=True)
class NewTensor:
    """A float32 initializer still to be written: its array is turned into bytes only inside the model that
    receives it (``add_tensor``), so a replacement never holds a second, serialized copy of its weights."""

    name: str
    value: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.value.shape)


def add_tensor(graph: onnx.GraphProto, t: NewTensor) -> None:
    """Append ``t`` to ``graph``'s initializers, written in place (the bytes of ``tensor(t.name, t.value)``)."""
    a = np.ascontiguousarray(t.value, dtype=np.dtype("<f4"))
    p = graph.initializer.add()
    p.dims.extend(a.shape)
    p.name = t.name
    p.data_type = onnx.TensorProto.FLOAT
    p.raw_data = a.tobytes()


@dataclass(frozen=True)
class Replacement:
    """Nodes and initializers that replace one Conv node (same input and output tensor names)."""

    conv: ConvSpec
    nodes: list[onnx.NodeProto]
    initializers: list[NewTensor]


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of ``model``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


class Builder:
    """Builds the chain that replaces one Conv: node names ``{pass}/{conv}/{role}`` made unique in the model,
    weights as new initializers named after their node, every node marked as made by the pass
    (``doc_string = "convopt:{pass}"``). A pass only says what each node computes."""

    def __init__(self, names: NameScope, pass_name: str, conv: ConvSpec) -> None:
        self.names, self.pass_name, self.conv = names, pass_name, conv
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[NewTensor] = []

    def _node_name(self, role: str) -> str:
        return self.names.fresh(f"{self.pass_name}/{self.conv.name}/{role}")

    def conv_node(self, role: str, x: str, weight: np.ndarray, *, bias: np.ndarray | None = None,
                  y: str | None = None, strides: tuple[int, int] = (1, 1),
                  pads: tuple[int, int, int, int] = (0, 0, 0, 0), dilations: tuple[int, int] = (1, 1),
                  group: int = 1) -> str:
        """A Conv (kernel from ``weight`` (O, I/g, kh, kw)) reading ``x``; returns its output tensor
        (``y``, or a fresh ``…/out``)."""
        n = self._node_name(role)
        w = self.names.fresh(n + "/W")
        self.initializers.append(NewTensor(w, weight))
        b = None
        if bias is not None:
            b = self.names.fresh(n + "/B")
            self.initializers.append(NewTensor(b, bias))
        out = y if y is not None else self.names.fresh(n + "/out")
        self.nodes.append(make_conv(n, x, w, b, out, kernel=(int(weight.shape[2]), int(weight.shape[3])),
                                    strides=strides, pads=pads, dilations=dilations, group=group,
                                    pass_name=self.pass_name))
        return out

    def gemm_node(self, role: str, x: str, weight: np.ndarray, *, bias: np.ndarray | None = None,
                  y: str | None = None) -> str:
        """A Gemm y = x · weightᵀ (+ bias), weight (O, I); returns its output tensor."""
        n = self._node_name(role)
        w = self.names.fresh(n + "/W")
        self.initializers.append(NewTensor(w, weight))
        inputs = [x, w]
        if bias is not None:
            inputs.append(self.names.fresh(n + "/B"))
            self.initializers.append(NewTensor(inputs[-1], bias))
        out = y if y is not None else self.names.fresh(n + "/out")
        node = helper.make_node("Gemm", inputs, [out], name=n, transB=1)
        node.doc_string = f"convopt:{self.pass_name}"
        self.nodes.append(node)
        return out

    def concat(self, role: str, inputs: list[str], axis: int) -> str:
        """A Concat of ``inputs`` along ``axis``; returns its output tensor."""
        n = self._node_name(role)
        out = self.names.fresh(n + "/out")
        node = helper.make_node("Concat", inputs, [out], name=n, axis=axis)
        node.doc_string = f"convopt:{self.pass_name}"
        self.nodes.append(node)
        return out

    def replacement(self) -> Replacement:
        return Replacement(self.conv, self.nodes, self.initializers)


def apply_replacements(model: onnx.ModelProto, replacements: Iterable[Replacement],
                       replaced: Sequence[ConvSpec]) -> onnx.ModelProto:
    """A copy of ``model`` with each Conv of ``replaced`` swapped for its replacement's chain (in place, so the
    order stays topological), new initializers added, and the constants only the old nodes used left out.

    ``replacements`` (one per Conv of ``replaced``, in that order) may be a generator: each is consumed as it
    comes, its weights written straight into the copy, so the caller need not hold every layer's new weights at
    once. The copy is built field by field, so the weights being replaced are never copied (peak: the model plus
    its new version)."""
    at = {c.index: c for c in replaced}
    others = [n for i, n in enumerate(model.graph.node) if i not in at]
    dead = ({c.w_name for c in replaced} | {c.b_name for c in replaced if c.b_name}) - _names_read(others, model.graph)
    m = onnx.ModelProto()
    copy_fields(model, m, skip=("graph",))
    g = m.graph
    copy_fields(model.graph, g, skip=("node", "initializer", "input"))
    g.initializer.extend(t for t in model.graph.initializer if t.name not in dead)
    chains: dict[int, list[onnx.NodeProto]] = {}
    new: list[tuple[str, tuple[int, ...]]] = []  # the names and shapes written, not the data
    for r in replacements:
        chains[r.conv.index] = r.nodes
        for t in r.initializers:
            add_tensor(g, t)
            new.append((t.name, t.shape))
    if chains.keys() != at.keys():
        raise RuntimeError("a replacement per replaced Conv is expected")
    nodes: list[onnx.NodeProto] = []
    for idx, node in enumerate(model.graph.node):
        if idx not in chains:
            nodes.append(node)
            continue
        if node.output[0] != at[idx].y:
            raise RuntimeError(f"graph changed under a replacement for {at[idx].name}")
        nodes.extend(chains[idx])
    g.node.extend(n for n in nodes if not (n.op_type == "Constant" and n.output and n.output[0] in dead))
    g.input.extend(i for i in model.graph.input if i.name not in dead)
    if m.ir_version < 4:  # IR 3 requires every initializer to be a graph input too
        g.input.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape)) for name, shape in new)
    return m


def _names_read(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> set[str]:
    """Tensor names ``nodes`` read (their subgraphs included) or ``graph`` outputs."""
    used: set[str] = {o.name for o in graph.output} | used_names_in_subgraphs(nodes)
    for n in nodes:
        used.update(n.input)
    return used


def used_names_in_subgraphs(nodes: list[onnx.NodeProto]) -> set[str]:
    """Tensor names read inside the subgraphs (If/Loop/Scan bodies, nested) of ``nodes``."""
    used: set[str] = set()
    for n in nodes:
        for sg in subgraphs(n):
            for g in all_graphs(sg):
                for inner in g.node:
                    used.update(inner.input)
    return used


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Tensor names read by any node (subgraphs included) or produced as graph outputs."""
    used: set[str] = {o.name for o in graph.output}
    for g in all_graphs(graph):
        for n in g.node:
            used.update(n.input)
    return used


def remove_unused_constants(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Drop initializers and Constant nodes among ``candidates`` that nothing reads any more."""
    g = model.graph
    used = used_names(g)
    dead = {c for c in candidates if c not in used}
    if not dead:
        return
    # deleted by index, last first: rebuilding the lists would copy every kept weight
    for field, dead_at in ((g.initializer, lambda t: t.name in dead),
                           (g.node, lambda n: n.op_type == "Constant" and bool(n.output) and n.output[0] in dead),
                           (g.input, lambda i: i.name in dead)):
        for i in reversed([i for i, item in enumerate(field) if dead_at(item)]):
            del field[i]


# ---------------------------------------------------------------- sub-models for intermediate tensors


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A model whose graph outputs are exactly ``names`` (intermediate tensors), holding only the nodes,
    initializers and inputs those tensors depend on: ONNX Runtime does not drop dead nodes, so without this
    pruning reading an early layer's activation would still run (and load) the whole network. A copy: to hand
    it to ORT without copying the weights, write :func:`pruned` (``convopt.measure.model_file``).
    """
    skeleton, initializers = pruned(model, names)
    skeleton.graph.initializer.extend(initializers)
    return skeleton


def pruned(model: onnx.ModelProto, names: list[str]) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """:func:`with_outputs` in two parts: the pruned model without its initializers (a small skeleton), and the
    initializers it needs, ``model``'s own protos (not copies).

    onnx-graphsurgeon finds what the tensors need (``cleanup``, which follows the outer-scope tensors a
    subgraph reads); the model is then assembled from the original protos (no export, so nothing it would
    drop is lost; IR-3 models keep their initializers listed as inputs). For ORT runs, not for the user.
    """
    keep_nodes, keep_tensors = _needed(model, names)
    g = model.graph
    m = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    m.graph.name = g.name
    m.graph.node.extend(keep_nodes)
    m.graph.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in keep_tensors)
    m.graph.input.extend(i for i in g.input if i.name in keep_tensors)
    m.graph.value_info.extend(v for v in g.value_info if v.name in keep_tensors)
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return m, [t for t in g.initializer if t.name in keep_tensors]


def _structure(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its initializers' data left out (their names, types and dims kept): all onnx-graphsurgeon
    needs to find what a tensor needs. Its graph holds reference cycles (nodes ↔ tensors) that outlive the call
    until Python's cyclic collector runs, and a tensor proto keeps its whole model alive: imported from this,
    they keep a few KiB, where they kept a model's weights (on ddddocr-det, the 18 MiB model being refit, into
    each check)."""
    m = onnx.ModelProto()
    copy_fields(model, m, skip=("graph",))
    copy_fields(model.graph, m.graph, skip=("initializer",))
    m.graph.initializer.extend(onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
                               for t in model.graph.initializer)
    return m


def _needed(model: onnx.ModelProto, names: list[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """(the main-graph nodes, in graph order, and the names of the tensors) that computing ``names`` needs."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    with G_LOGGER.suppress():  # its warnings (unsupported attribute types, ...) are not the user's business
        graph = gs.import_onnx(_structure(model))
        tensors = graph.tensors()
        graph.outputs = [tensors[n] for n in names if n in tensors]
        graph.cleanup(remove_unused_graph_inputs=True, recurse_subgraphs=False, recurse_functions=False)
        produced = {t.name for n in graph.nodes for t in n.outputs if t.name}
    del graph, tensors
    nodes = [n for n in model.graph.node if any(o in produced for o in n.output if o)]
    needed = set(names)
    for n in nodes:
        needed.update(n.input)
        for sg in subgraphs(n):
            needed |= used_names(sg)  # outer-scope tensors the bodies read (and some of their own names)
    return nodes, needed
