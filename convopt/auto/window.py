"""A layer in context: the sub-model of the nodes around one Conv, cut out of the model with its real weights.

The window holds the Conv, the op that produces its input (through any element-wise ops between), the ops
that consume its output through element-wise ops (a residual Add, the Relu after it) up to and including the
first one that is not (a Concat, the next Conv, a pool), every node on a path between those (a fire
module's sibling expand), and the producer of any other input a non-Conv node of it reads (a shortcut). ORT then optimizes the window as it does the whole model: the activation stays fused into the
chain's last Conv, the tensors between NCHWc ops stay in NCHWc layout through Concat and Add, and each
node wakes the intra-op thread pool as it would in the model. ``Window.whole`` is the whole model as one
window (the reference a window approximates).
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import onnx
from onnx import helper

from convopt.graph import ConvSpec, subgraphs

# shape-preserving ops with one data input: the walk passes through them (they fuse or are cheap)
ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus",
    "PRelu", "Mul", "Add", "Sub", "Div", "Identity", "Dropout", "Cast",
})
MAX_WALK = 4  # nodes walked through up or down before giving up on reaching a compute op
MAX_PATH = 6  # length of the paths between window nodes whose nodes join the window (siblings)


@dataclass(frozen=True)
class Window:
    """Node indices (graph order) of a sub-model around ``layer``; ``inputs`` are fed from outside (with
    ``shapes``), ``outputs`` are read outside. ``key`` names its structure (ops, attributes, shapes,
    weight shapes, wiring: not names or weight values) and the layer's place in it, so two windows with one
    key time alike with the same candidate."""

    layer: str
    nodes: tuple[int, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    key: str

    def __len__(self) -> int:
        return len(self.nodes)


class GraphIndex:
    """Producers and consumers of the main graph's tensors, and which tensors are constant."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.inits = {t.name: t for t in g.initializer}
        self.const_nodes = {n.output[0]: i for i, n in enumerate(g.node) if n.op_type == "Constant" and n.output}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(g.node):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for t in dict.fromkeys(self.reads(n)):
                self.consumers.setdefault(t, []).append(i)
        self.graph_outputs = {o.name for o in g.output}

    def is_const(self, name: str) -> bool:
        return name in self.inits or name in self.const_nodes

    @staticmethod
    def reads(node: onnx.NodeProto) -> list[str]:
        """Tensors ``node`` reads, its subgraphs' outer-scope reads included (over-approximated by name)."""
        names = [t for t in node.input if t]
        for sg in subgraphs(node):
            names += [t for n in sg.node for t in n.input if t]
        return names

    def data_inputs(self, i: int) -> list[str]:
        return [t for t in self.reads(self.model.graph.node[i]) if not self.is_const(t)]

    def elementwise(self, i: int) -> bool:
        n = self.model.graph.node[i]
        return n.op_type in ELEMENTWISE and not subgraphs(n)

    def passes_through(self, i: int) -> bool:
        """Element-wise with one data input: walking up from its output reaches one producer."""
        return self.elementwise(i) and len(self.data_inputs(i)) == 1


def _walk_up(ix: GraphIndex, tensor: str) -> set[int]:
    out: set[int] = set()
    for _ in range(MAX_WALK):
        p = ix.producer.get(tensor)
        if p is None or ix.model.graph.node[p].op_type == "Constant":
            break
        out.add(p)
        if not ix.passes_through(p):
            break
        tensor = ix.data_inputs(p)[0]
    return out


def _walk_down(ix: GraphIndex, start: int) -> set[int]:
    """Consumers of ``start``'s outputs, through element-wise ops (a residual Add and the Relu after it
    included) up to and including the first op that is not element-wise."""
    out: set[int] = set()
    frontier, depth = [start], 0
    while frontier and depth < MAX_WALK:
        nxt = []
        for i in frontier:
            for o in ix.model.graph.node[i].output:
                for c in ix.consumers.get(o, []):
                    if c not in out:
                        out.add(c)
                        if ix.elementwise(c):
                            nxt.append(c)
        frontier, depth = nxt, depth + 1
    return out


def _reach(ix: GraphIndex, seeds: set[int], down: bool) -> set[int]:
    """Nodes within MAX_PATH steps of ``seeds`` (downstream or upstream), seeds excluded."""
    g, seen, frontier = ix.model.graph, set(seeds), set(seeds)
    for _ in range(MAX_PATH):
        nxt: set[int] = set()
        for i in frontier:
            if down:
                nxt.update(c for o in g.node[i].output for c in ix.consumers.get(o, []))
            else:
                nxt.update(ix.producer[t] for t in ix.data_inputs(i) if t in ix.producer)
        frontier = nxt - seen
        seen |= frontier
    return seen - seeds


def window_nodes(ix: GraphIndex, conv: ConvSpec) -> set[int]:
    """The Conv, its producer chain, its consumer chain, the nodes on paths between them, and the producer
    chain of any input a non-Conv node of the window reads (a residual shortcut, a Concat's other branch):
    ORT keeps those in NCHWc layout in the model, so the window must produce them, not read them in NCHW."""
    nodes = {conv.index} | _walk_up(ix, conv.x) | _walk_down(ix, conv.index)
    for _ in range(MAX_WALK):
        nodes |= _reach(ix, nodes, down=True) & _reach(ix, nodes, down=False)
        inputs, _ = _boundary(ix, nodes)
        g = ix.model.graph
        joined = {t for t in inputs if any(c in nodes and g.node[c].op_type != "Conv" for c in ix.consumers.get(t, []))}
        more = set().union(*(_walk_up(ix, t) for t in joined)) - nodes if joined else set()
        if not more:
            break
        nodes |= more
    return nodes


def _boundary(ix: GraphIndex, nodes: set[int]) -> tuple[list[str], list[str]]:
    g = ix.model.graph
    produced = {o for i in nodes for o in g.node[i].output if o}
    inputs = list(dict.fromkeys(t for i in sorted(nodes) for t in ix.data_inputs(i) if t not in produced))
    outputs = [o for i in sorted(nodes) for o in g.node[i].output if o and
               (o in ix.graph_outputs or any(c not in nodes for c in ix.consumers.get(o, [])))]
    if not outputs:  # nothing leaves the window: keep the last node's outputs alive
        outputs = [o for o in g.node[max(nodes)].output if o]
    return inputs, outputs


def structure_key(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A hash of a model's structure: ops, attributes, tensor shapes and wiring, weights by shape only."""
    ids: dict[str, int] = {}
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}

    def ref(t: str) -> str:
        if t in inits:
            return f"w{inits[t]}"
        ids.setdefault(t, len(ids))
        return f"t{ids[t]}{shapes.get(t, ())}"

    parts = [f"in:{ref(i.name)}" for i in model.graph.input if i.name not in inits]
    for n in model.graph.node:
        a = sorted(helper.printable_attribute(x) for x in n.attribute if x.type != onnx.AttributeProto.TENSOR)
        parts.append(f"{n.domain}:{n.op_type}({','.join(ref(t) for t in n.input)})->"
                     f"{','.join(ref(t) for t in n.output)}{a}")
    parts += [f"out:{ref(o.name)}" for o in model.graph.output]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]


def cut(ix: GraphIndex, nodes: set[int], inputs: list[str], outputs: list[str],
        shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The sub-model of ``nodes`` (plus the Constant nodes they read), its inputs typed float with
    ``shapes``; IR-3 models keep their initializers listed as inputs, as ORT sees them in the model."""
    src = ix.model
    g = src.graph
    reads = {t for i in nodes for t in ix.reads(g.node[i])}
    keep = sorted(nodes | {ix.const_nodes[t] for t in reads if t in ix.const_nodes})
    m = onnx.ModelProto(ir_version=src.ir_version, producer_name=src.producer_name)
    m.opset_import.extend(src.opset_import)
    m.functions.extend(src.functions)
    m.graph.name = f"{g.name}-window"
    m.graph.node.extend(g.node[i] for i in keep)
    inits = [t for t in g.initializer if t.name in reads]
    m.graph.initializer.extend(inits)
    m.graph.input.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, list(shapes[t])) for t in inputs)
    if src.ir_version < 4:
        m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits)
    m.graph.output.extend(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, list(shapes.get(o, ())) or None)
                          for o in outputs)
    return m


def context_window(ix: GraphIndex, conv: ConvSpec, shapes: Mapping[str, tuple[int, ...]]) -> tuple[Window, onnx.ModelProto]:
    """The window around ``conv`` and its sub-model (dense). Raises KeyError when an input's shape is
    unknown (the caller falls back to another pricing)."""
    nodes = window_nodes(ix, conv)
    inputs, outputs = _boundary(ix, nodes)
    in_shapes = {t: tuple(shapes[t]) for t in inputs}
    sub = cut(ix, nodes, inputs, outputs, {**{o: tuple(shapes[o]) for o in outputs if o in shapes}, **in_shapes})
    order = sorted(nodes)
    w = Window(conv.name, tuple(order), tuple(inputs), tuple(outputs), in_shapes,
               f"{structure_key(sub, shapes)}@{order.index(conv.index)}")
    return w, sub


def whole(ix: GraphIndex, conv: ConvSpec, shapes: Mapping[str, tuple[int, ...]]) -> tuple[Window, onnx.ModelProto]:
    """The whole model as the window of ``conv`` (its graph inputs fed with ``shapes``)."""
    g = ix.model.graph
    inputs = [i.name for i in g.input if i.name not in ix.inits]
    in_shapes = {t: tuple(shapes[t]) for t in inputs}
    w = Window(conv.name, tuple(range(len(g.node))), tuple(inputs), tuple(o.name for o in g.output), in_shapes,
               f"{structure_key(ix.model, shapes)}@{conv.index}")
    return w, ix.model
