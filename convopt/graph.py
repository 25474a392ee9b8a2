"""Graph plumbing: read Conv nodes into ConvSpec records, resolve shapes, edit and clean the graph.

A ConvSpec is what a pass sees of a Conv: y = conv(x, W, B; strides, explicit pads, dilations, group),
with W (O, I/g, kh, kw) as float32 numpy. Passes return replacement nodes; this module splices them in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convopt.errors import ShapeError

FLOAT_TYPES = {onnx.TensorProto.FLOAT}


@dataclass
class ConvSpec:
    """A 2-D Conv node with constant weights, read out of the graph."""

    index: int
    node: onnx.NodeProto
    name: str
    x: str
    y: str
    W: np.ndarray  # (O, I/g, kh, kw) float32
    B: np.ndarray | None  # (O,)
    w_name: str
    b_name: str | None
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    group: int
    pads: tuple[int, int, int, int] | None  # (top, left, bottom, right), resolved from auto_pad when possible
    auto_pad: str
    in_shape: tuple[int, int, int, int] | None  # (N, C, H, W) of x, batch 1 when dynamic
    out_shape: tuple[int, int, int, int] | None
    pads_reason: str | None = None  # why pads could not be resolved

    @property
    def out_channels(self) -> int:
        return int(self.W.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.W.shape[1] * self.group)

    @property
    def out_hw(self) -> tuple[int, int] | None:
        return None if self.out_shape is None else (self.out_shape[2], self.out_shape[3])

    @property
    def macs(self) -> int | None:
        """Multiply-accumulates for one sample (batch 1); None when the output size is unknown."""
        if self.out_shape is None:
            return None
        return conv_macs(self.W.shape, self.out_shape[2], self.out_shape[3])

    @property
    def params(self) -> int:
        return int(self.W.size + (0 if self.B is None else self.B.size))


@dataclass
class ConvSkip:
    """A Conv-like node that no pass can rewrite, and why."""

    index: int
    node: onnx.NodeProto
    name: str
    reason: str
    info: dict[str, object] = field(default_factory=dict)


def conv_macs(w_shape: Iterable[int], out_h: int, out_w: int) -> int:
    o, i_per_g, kh, kw = (int(v) for v in w_shape)
    return o * i_per_g * kh * kw * int(out_h) * int(out_w)


def node_display_name(node: onnx.NodeProto) -> str:
    """The node's name, or (exporters often leave it empty) its first output's name."""
    return node.name or (node.output[0] if node.output else node.op_type)


def attrs(node: onnx.NodeProto) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


class ConstantTable:
    """Constant tensors of a graph: initializers and outputs of Constant nodes (some exporters use these)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._inits = {t.name: t for t in graph.initializer}
        self._const_nodes: dict[str, onnx.NodeProto] = {}
        for n in graph.node:
            if n.op_type == "Constant" and len(n.output) == 1:
                self._const_nodes[n.output[0]] = n
        # a graph input that shadows an initializer can be fed at run time: not constant (IR >= 4)
        self._shadowed = {i.name for i in graph.input}

    def is_constant(self, name: str, ir_version: int = 8) -> bool:
        if name in self._const_nodes:
            return True
        if name in self._inits:
            return ir_version < 4 or name not in self._shadowed
        return False

    def value(self, name: str) -> np.ndarray | None:
        if name in self._inits:
            return numpy_helper.to_array(self._inits[name])
        node = self._const_nodes.get(name)
        if node is None:
            return None
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name in ("value_float", "value_floats"):
                return np.asarray(helper.get_attribute_value(a), dtype=np.float32)
            if a.name in ("value_int", "value_ints"):
                return np.asarray(helper.get_attribute_value(a), dtype=np.int64)
        return None

    def dtype(self, name: str) -> int | None:
        if name in self._inits:
            return self._inits[name].data_type
        node = self._const_nodes.get(name)
        if node is None:
            return None
        for a in node.attribute:
            if a.name == "value":
                return a.t.data_type
            if a.name.startswith("value_float"):
                return onnx.TensorProto.FLOAT
        return None


# ---------------------------------------------------------------- shapes


def graph_input_shapes(
    model: onnx.ModelProto, hints: dict[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[int, ...] | None]:
    """Concrete shapes of the real graph inputs: hints win; a dynamic leading batch dim becomes 1;
    any other dynamic dim leaves the shape None (unknown)."""
    hints = hints or {}
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, tuple[int, ...] | None] = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if inp.name in hints:
            out[inp.name] = tuple(int(v) for v in hints[inp.name])
            continue
        tt = inp.type.tensor_type
        if not tt.HasField("shape"):
            out[inp.name] = None
            continue
        dims: list[int | None] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        if dims and dims[0] is None:
            dims[0] = 1
        out[inp.name] = None if any(d is None for d in dims) else tuple(int(d) for d in dims)  # type: ignore[misc]
    unknown = set(hints) - set(out)
    if unknown:
        raise ShapeError(
            f"--input-shape names {sorted(unknown)} are not inputs of the model (inputs: {sorted(out)})"
        )
    return out


SKELETON_MAX_ELEMENTS = 4096  # larger initializers become typed graph inputs in a shape skeleton


def shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` for shape inference only: initializers above SKELETON_MAX_ELEMENTS elements are
    replaced by graph inputs of the same type and shape, so inference never copies the weights (a model's
    bulk). Small initializers (shape vectors, axes, indices) keep their values, which inference may need."""
    m = onnx.ModelProto()
    _copy_fields(model, m, skip=("graph",))
    src, g = model.graph, m.graph
    _copy_fields(src, g, skip=("initializer", "input"))
    g.input.extend(src.input)
    declared = {i.name for i in src.input}
    for t in src.initializer:
        if math.prod(t.dims) <= SKELETON_MAX_ELEMENTS:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    if m.ir_version < 4:  # IR 3 requires initializers to be inputs; the moved ones already are
        m.ir_version = 4
    return m


def _copy_fields(src: object, dst: object, skip: tuple[str, ...]) -> None:
    """Copy the set fields of protobuf message ``src`` into ``dst`` (same type), except those in ``skip``."""
    for f, v in src.ListFields():  # type: ignore[attr-defined]
        if f.name in skip:
            continue
        if hasattr(v, "extend"):  # repeated field (FieldDescriptor.label is gone in newer protobuf)
            getattr(dst, f.name).extend(v)
        elif hasattr(v, "CopyFrom"):  # message field
            getattr(dst, f.name).CopyFrom(v)
        else:
            setattr(dst, f.name, v)


def _with_fixed_inputs(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...] | None], skeleton: bool = False
) -> onnx.ModelProto:
    if skeleton:
        m = shape_skeleton(model)
    else:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    del m.graph.value_info[:]
    for inp in m.graph.input:
        shp = shapes.get(inp.name)
        if shp is None:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(shp):
            raise ShapeError(
                f"--input-shape for '{inp.name}' has {len(shp)} dims but the input has {len(dims)}"
            )
        for d, v in zip(dims, shp):
            d.Clear()
            d.dim_value = int(v)
    return m


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def infer_tensor_shapes(
    model: onnx.ModelProto,
    hints: dict[str, tuple[int, ...]] | None = None,
    wanted: Iterable[str] = (),
) -> dict[str, tuple[int, ...]]:
    """Static shapes of the graph's tensors (batch 1 where dynamic), by ONNX shape inference; tensors in
    ``wanted`` that inference cannot reach (experimental ops, for one) are measured by one ORT run on zeros."""
    in_shapes = graph_input_shapes(model, hints)
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        skeleton = _with_fixed_inputs(model, in_shapes, skeleton=True)  # no weight copies (memory)
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False)
        del skeleton
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            s = _static_shape(vi)
            if s is not None:
                shapes[vi.name] = s
        del inferred
    except ShapeError:
        raise
    except Exception:  # inference is best effort; ORT below measures what it missed
        pass
    for t in model.graph.initializer:
        shapes.setdefault(t.name, tuple(int(d) for d in t.dims))
    missing = [n for n in dict.fromkeys(wanted) if n not in shapes]
    if missing and all(s is not None for s in in_shapes.values()):
        fixed = _with_fixed_inputs(model, in_shapes)
        shapes.update(_ort_shapes(fixed, missing, in_shapes))  # type: ignore[arg-type]
    return shapes


def _ort_shapes(
    model: onnx.ModelProto, names: list[str], in_shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    import onnxruntime as ort  # local: passes and graph code never need ORT otherwise

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a failed run is expected here (we fall back); keep ORT quiet
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:
        return {}
    feeds = {}
    for i in sess.get_inputs():
        if i.name not in in_shapes:
            return {}
        dtype = _ORT_DTYPES.get(i.type, np.float32)
        feeds[i.name] = np.zeros(in_shapes[i.name], dtype=dtype)
    try:
        outs = sess.run(names, feeds)
    except Exception:
        return {}
    return {n: tuple(int(d) for d in o.shape) for n, o in zip(names, outs)}


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


# ---------------------------------------------------------------- pads


def resolve_pads(
    auto_pad: str,
    pads: list[int] | None,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    in_hw: tuple[int, int] | None,
) -> tuple[tuple[int, int, int, int] | None, str | None]:
    """Explicit (top, left, bottom, right) pads for a 2-D conv, or (None, reason)."""
    if auto_pad in ("", "NOTSET"):
        p = list(pads) if pads else [0, 0, 0, 0]
        return (p[0], p[1], p[2], p[3]), None
    if auto_pad == "VALID":
        return (0, 0, 0, 0), None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = []
        for ax in range(2):
            k_eff = (kernel[ax] - 1) * dilations[ax] + 1
            if strides[ax] == 1:
                totals.append(k_eff - 1)
            elif in_hw is None:
                return None, f"auto_pad {auto_pad} with stride {strides[ax]} needs a known input size"
            else:
                size = in_hw[ax]
                out = -(-size // strides[ax])
                totals.append(max((out - 1) * strides[ax] + k_eff - size, 0))
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in totals]
        else:
            begin = [t - t // 2 for t in totals]
        end = [t - b for t, b in zip(totals, begin)]
        return (begin[0], begin[1], end[0], end[1]), None
    return None, f"unknown auto_pad {auto_pad!r}"


def conv_out_size(size: int, k: int, s: int, d: int, p0: int, p1: int) -> int:
    return (size + p0 + p1 - ((k - 1) * d + 1)) // s + 1


# ---------------------------------------------------------------- reading convs


def read_convs(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None
) -> list[ConvSpec | ConvSkip]:
    """Every Conv-like node of the main graph, as a ConvSpec (rewritable in principle) or a ConvSkip."""
    graph = model.graph
    consts = ConstantTable(graph)
    shapes = shapes or {}
    out: list[ConvSpec | ConvSkip] = []
    for idx, node in enumerate(graph.node):
        name = node_display_name(node)
        if node.op_type in ("ConvInteger", "QLinearConv") or (
            node.op_type == "Conv" and node.domain == "com.microsoft"
        ):
            out.append(ConvSkip(idx, node, name, "quantized conv"))
            continue
        if node.op_type == "ConvTranspose":
            out.append(ConvSkip(idx, node, name, "ConvTranspose is not rewritten"))
            continue
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        out.append(_read_conv(idx, node, name, consts, model.ir_version, shapes))
    return out


def _read_conv(
    idx: int,
    node: onnx.NodeProto,
    name: str,
    consts: ConstantTable,
    ir_version: int,
    shapes: dict[str, tuple[int, ...]],
) -> ConvSpec | ConvSkip:
    if len(node.input) < 2 or not node.input[1]:
        return ConvSkip(idx, node, name, "Conv has no weight input")
    w_name = node.input[1]
    b_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if not consts.is_constant(w_name, ir_version):
        return ConvSkip(idx, node, name, "weight is not constant")
    if b_name is not None and not consts.is_constant(b_name, ir_version):
        return ConvSkip(idx, node, name, "bias is not constant")
    if consts.dtype(w_name) not in FLOAT_TYPES:
        return ConvSkip(idx, node, name, f"weight dtype {onnx.TensorProto.DataType.Name(consts.dtype(w_name) or 0)} is not float32")
    W = consts.value(w_name)
    if W is None:
        return ConvSkip(idx, node, name, "weight value cannot be read")
    if W.ndim != 4:
        kind = {3: "1-D conv", 5: "3-D conv"}.get(W.ndim, f"{W.ndim - 2}-D conv")
        return ConvSkip(idx, node, name, kind)
    a = attrs(node)
    group = int(a.get("group", 1))  # type: ignore[arg-type]
    kernel = tuple(int(v) for v in a.get("kernel_shape", W.shape[2:]))  # type: ignore[union-attr]
    if kernel != tuple(W.shape[2:]):
        return ConvSkip(idx, node, name, f"kernel_shape {list(kernel)} disagrees with weight shape {list(W.shape)}")
    strides = tuple(int(v) for v in a.get("strides", [1, 1]))  # type: ignore[union-attr]
    dilations = tuple(int(v) for v in a.get("dilations", [1, 1]))  # type: ignore[union-attr]
    if len(strides) != 2 or len(dilations) != 2:
        return ConvSkip(idx, node, name, "strides/dilations are not 2-D")
    if group < 1 or W.shape[0] % group != 0:
        return ConvSkip(idx, node, name, f"group {group} does not divide {W.shape[0]} output channels")
    B = None
    if b_name is not None:
        bv = consts.value(b_name)
        if bv is None or bv.shape != (W.shape[0],):
            return ConvSkip(idx, node, name, "bias shape does not match the weight")
        B = bv.astype(np.float32)
    in_shape = shapes.get(node.input[0])
    in4 = tuple(in_shape) if in_shape is not None and len(in_shape) == 4 else None
    if in4 is not None and in4[1] != W.shape[1] * group:
        return ConvSkip(
            idx, node, name, f"input has {in4[1]} channels but the weight expects {W.shape[1] * group}"
        )
    auto_pad = str(a.get("auto_pad", "NOTSET"))
    pads, reason = resolve_pads(
        auto_pad,
        list(a["pads"]) if "pads" in a else None,  # type: ignore[call-overload]
        kernel,  # type: ignore[arg-type]
        strides,  # type: ignore[arg-type]
        dilations,  # type: ignore[arg-type]
        None if in4 is None else (in4[2], in4[3]),
    )
    if pads is not None and len(pads) != 4:
        return ConvSkip(idx, node, name, "pads are not 2-D")
    out_shape = None
    if in4 is not None and pads is not None:
        oh = conv_out_size(in4[2], kernel[0], strides[0], dilations[0], pads[0], pads[2])
        ow = conv_out_size(in4[3], kernel[1], strides[1], dilations[1], pads[1], pads[3])
        if oh <= 0 or ow <= 0:
            return ConvSkip(idx, node, name, f"output size {oh}x{ow} is empty")
        out_shape = (in4[0], int(W.shape[0]), oh, ow)
    elif node.output[0] in shapes and len(shapes[node.output[0]]) == 4:
        out_shape = tuple(shapes[node.output[0]])  # type: ignore[assignment]
    return ConvSpec(
        index=idx,
        node=node,
        name=name,
        x=node.input[0],
        y=node.output[0],
        W=np.ascontiguousarray(W, dtype=np.float32),
        B=B,
        w_name=w_name,
        b_name=b_name,
        kernel=kernel,  # type: ignore[arg-type]
        strides=strides,  # type: ignore[arg-type]
        dilations=dilations,  # type: ignore[arg-type]
        group=group,
        pads=pads,
        auto_pad=auto_pad,
        in_shape=in4,  # type: ignore[arg-type]
        out_shape=out_shape,
        pads_reason=reason,
    )


# ---------------------------------------------------------------- building nodes


class NameScope:
    """Hands out node and tensor names not used anywhere in the graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used: set[str] = set()
        for n in graph.node:
            self.used.add(n.name)
            self.used.update(n.input)
            self.used.update(n.output)
        self.used.update(t.name for t in graph.initializer)
        self.used.update(i.name for i in graph.input)
        self.used.update(o.name for o in graph.output)
        self.used.update(v.name for v in graph.value_info)

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


@dataclass
class Replacement:
    """Nodes and initializers that replace one Conv node (same input and output tensor names)."""

    conv: ConvSpec
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]


class Builder:
    """Builds the chain that replaces one Conv: node names ``{pass}/{conv}/{role}`` made unique in the model,
    weights as new initializers named after their node, every node marked as made by the pass
    (``doc_string = "convopt:{pass}"``). A pass only says what each node computes."""

    def __init__(self, names: NameScope, pass_name: str, conv: ConvSpec) -> None:
        self.names, self.pass_name, self.conv = names, pass_name, conv
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

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
        self.initializers.append(tensor(w, weight))
        b = None
        if bias is not None:
            b = self.names.fresh(n + "/B")
            self.initializers.append(tensor(b, bias))
        out = y if y is not None else self.names.fresh(n + "/out")
        self.nodes.append(make_conv(n, x, w, b, out, kernel=(int(weight.shape[2]), int(weight.shape[3])),
                                    strides=strides, pads=pads, dilations=dilations, group=group,
                                    pass_name=self.pass_name))
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


def apply_replacements(model: onnx.ModelProto, replacements: list[Replacement]) -> onnx.ModelProto:
    """A copy of ``model`` with each replaced Conv swapped for its chain (in place, so order stays
    topological), new initializers added, and the constants only the old nodes used removed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    by_index = {r.conv.index: r for r in replacements}
    nodes: list[onnx.NodeProto] = []
    for idx, node in enumerate(m.graph.node):
        r = by_index.get(idx)
        if r is None:
            nodes.append(node)
        else:
            if node.output[0] != r.conv.y:
                raise RuntimeError(f"graph changed under a replacement for {r.conv.name}")
            nodes.extend(r.nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    new_inits = [t for r in replacements for t in r.initializers]
    m.graph.initializer.extend(new_inits)
    if m.ir_version < 4:  # IR 3 requires every initializer to be a graph input too
        m.graph.input.extend(
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new_inits
        )
    candidates = {r.conv.w_name for r in replacements} | {r.conv.b_name for r in replacements if r.conv.b_name}
    remove_unused_constants(m, candidates)
    return m


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Tensor names read by any node (subgraphs included) or produced as graph outputs."""
    used: set[str] = {o.name for o in graph.output}
    stack = [graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            used.update(n.input)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)
    return used


def remove_unused_constants(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Drop initializers and Constant nodes among ``candidates`` that nothing reads any more."""
    g = model.graph
    used = used_names(g)
    dead = {c for c in candidates if c not in used}
    if not dead:
        return
    keep_inits = [t for t in g.initializer if t.name not in dead]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    keep_nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output and n.output[0] in dead)]
    del g.node[:]
    g.node.extend(keep_nodes)
    keep_inputs = [i for i in g.input if i.name not in dead]
    del g.input[:]
    g.input.extend(keep_inputs)


def align_up(value: int, align: int) -> int:
    return int(math.ceil(value / align) * align) if align > 1 else int(value)


# ---------------------------------------------------------------- structural checks (used when loading)


def find_cycle(graph: onnx.GraphProto) -> list[str] | None:
    """Names of nodes that lie on or behind a cycle of the graph (None: the graph is acyclic).

    Kahn's algorithm, iterative (no recursion, so a deep or looping graph cannot exhaust the stack); node
    order is ignored, so an acyclic graph that is merely out of order is not reported here.
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


def _declared_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...]]:
    """Shapes written in the graph (inputs, outputs, value_info): None for a symbolic or missing dim."""
    out: dict[str, tuple[int | None, ...]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            out[vi.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
    return out


def model_problem(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None) -> str | None:
    """Why the model is malformed in a way onnx.checker lets through (None: no problem found).

    Looks for a cycle, a zero-sized graph input, and Convs whose constant weight disagrees with their own
    attributes or with their input (kernel_shape, group, channels, bias, strides/dilations/pads, an empty
    output). Such a model cannot run in any runtime, so it is refused rather than skipped. ``shapes``:
    known tensor shapes (e.g. from shape inference); the shapes written in the graph are used too.
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
            return f"graph input '{inp.name}' has a zero-sized dimension {list(shp)}"
    consts = ConstantTable(graph)
    known: dict[str, tuple[int | None, ...]] = dict(declared)
    known.update(shapes or {})
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        reason = _conv_problem(node, consts, known)
        if reason is not None:
            return f"Conv '{node_display_name(node)}': {reason}"
    return None


def _conv_problem(
    node: onnx.NodeProto, consts: ConstantTable, known: dict[str, tuple[int | None, ...]]
) -> str | None:
    a = attrs(node)
    w_shape: tuple[int, ...] | None = None
    if node.input[1] in consts._inits:
        w_shape = tuple(int(d) for d in consts._inits[node.input[1]].dims)
    elif node.input[1] in consts._const_nodes:
        v = consts.value(node.input[1])
        w_shape = None if v is None else tuple(int(d) for d in v.shape)
    if w_shape is None:
        return None  # weight computed at run time: nothing to compare
    if len(w_shape) < 3:
        return f"weight shape {list(w_shape)} has fewer than 3 dims"
    if 0 in w_shape:
        return f"weight has a zero-sized dimension {list(w_shape)}"
    nsp = len(w_shape) - 2
    kernel = a.get("kernel_shape")
    if kernel is not None and tuple(int(k) for k in kernel) != w_shape[2:]:  # type: ignore[union-attr]
        return f"kernel_shape {list(kernel)} disagrees with weight shape {list(w_shape)}"  # type: ignore[arg-type]
    group = int(a.get("group", 1))  # type: ignore[arg-type]
    if group < 1 or w_shape[0] % group != 0:
        return f"group {group} does not divide the {w_shape[0]} output channels of weight {list(w_shape)}"
    for key, length, low in (("strides", nsp, 1), ("dilations", nsp, 1), ("pads", 2 * nsp, 0)):
        if key in a:
            vals = list(a[key])  # type: ignore[call-overload]
            if len(vals) != length:
                return f"{key} {vals} should have {length} values for a {nsp}-D kernel"
            if any(int(v) < low for v in vals):
                return f"{key} {vals} must be >= {low}"
    if len(node.input) > 2 and node.input[2]:
        b = node.input[2]
        b_shape = tuple(int(d) for d in consts._inits[b].dims) if b in consts._inits else None
        if b_shape is not None and b_shape != (w_shape[0],):
            return f"bias shape {list(b_shape)} does not match the {w_shape[0]} output channels"
    x = known.get(node.input[0])
    if x is None or len(x) != nsp + 2:
        return None
    if x[1] is not None and x[1] != w_shape[1] * group:
        return f"input '{node.input[0]}' has {x[1]} channels but the weight expects {w_shape[1] * group} (group {group})"
    if 0 in x:
        return f"input '{node.input[0]}' has a zero-sized dimension {list(x)}"
    auto_pad = str(a.get("auto_pad", "NOTSET"))
    if auto_pad not in ("", "NOTSET", "VALID") or any(v is None for v in x[2:]):
        return None
    strides = [int(v) for v in a.get("strides", [1] * nsp)]  # type: ignore[union-attr]
    dil = [int(v) for v in a.get("dilations", [1] * nsp)]  # type: ignore[union-attr]
    pads = [int(v) for v in a.get("pads", [0] * 2 * nsp)] if auto_pad != "VALID" else [0] * 2 * nsp  # type: ignore[union-attr]
    sizes = [
        conv_out_size(int(x[2 + i]), w_shape[2 + i], strides[i], dil[i], pads[i], pads[nsp + i])  # type: ignore[arg-type]
        for i in range(nsp)
    ]
    if any(s <= 0 for s in sizes):
        return (
            f"output size {'x'.join(map(str, sizes))} is empty: the kernel {list(w_shape[2:])} "
            f"(dilation {dil}) is larger than the padded input {list(x[2:])}"
        )
    return None
