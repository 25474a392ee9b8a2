"""Shape inference: the static shapes of a graph's tensors, by ONNX shape inference on a weight-free skeleton,
and (for what inference cannot reach) one ONNX Runtime run on zeros.

Graph-input shapes come from :mod:`convopt.graph.shapes` (the one resolver, lenient here: an input of unknown
shape stays unknown and the tensors behind it have no static shape).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from convopt.graph.shapes import Dim, declared_dims, graph_input_shapes, static_shape

SKELETON_MAX_ELEMENTS = 4096  # larger initializers become typed graph inputs in a shape skeleton


def shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` for shape inference only: initializers above SKELETON_MAX_ELEMENTS elements are
    replaced by graph inputs of the same type and shape, so inference never copies the weights (a model's
    bulk). Small initializers (shape vectors, axes, indices) keep their values, which inference may need."""
    m = onnx.ModelProto()
    copy_fields(model, m, skip=("graph",))
    src, g = model.graph, m.graph
    copy_fields(src, g, skip=("initializer", "input"))
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


def copy_fields(src: object, dst: object, skip: tuple[str, ...]) -> None:
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


def infer_skeleton(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ONNX shape inference on ``shape_skeleton(model)``, best effort: None when inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(shape_skeleton(model), check_type=False, strict_mode=False)
    except Exception:  # inference raises several C++-bound types; callers treat it as a help, not a verdict
        return None


def inferred_dims(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Declared dims of every tensor value that shape inference gives a shape (value_info, outputs, inputs);
    empty when inference fails."""
    inferred = infer_skeleton(model)
    if inferred is None:
        return {}
    g = inferred.graph
    out: dict[str, tuple[Dim, ...]] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        dims = declared_dims(vi)
        if dims is not None:
            out[vi.name] = dims
    return out


def _with_fixed_inputs(
    model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...] | None], skeleton: bool = False
) -> onnx.ModelProto:
    """A copy of ``model`` (or of its skeleton) whose graph inputs declare the known ``shapes``, value_info
    cleared so inference starts afresh."""
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
        if len(dims) != len(shp):  # an input that declared no shape: give it the hint's rank
            del dims[:]
            dims.extend(onnx.TensorShapeProto.Dimension() for _ in shp)
        for d, v in zip(dims, shp):
            d.Clear()
            d.dim_value = int(v)
    return m


def infer_tensor_shapes(
    model: onnx.ModelProto,
    hints: Mapping[str, Sequence[int]] | None = None,
    wanted: Iterable[str] = (),
) -> dict[str, tuple[int, ...]]:
    """Static shapes of the graph's tensors (batch 1 where dynamic), by ONNX shape inference; tensors in
    ``wanted`` that inference cannot reach (experimental ops, for one) are measured by one ORT run on zeros.
    A tensor whose shape stays unknown (a dynamic input dim without a hint) is absent, never a guess."""
    in_shapes = graph_input_shapes(model, hints)
    shapes: dict[str, tuple[int, ...]] = {}
    inferred = infer_skeleton(_with_fixed_inputs(model, in_shapes, skeleton=True))  # no weight copies
    if inferred is not None:
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            s = static_shape(declared_dims(vi))
            if s is not None:
                shapes[vi.name] = s
        del inferred
    for t in model.graph.initializer:
        shapes.setdefault(t.name, tuple(int(d) for d in t.dims))
    missing = [n for n in dict.fromkeys(wanted) if n not in shapes]
    known = {k: v for k, v in in_shapes.items() if v is not None}
    if missing and len(known) == len(in_shapes):
        shapes.update(_ort_shapes(_with_fixed_inputs(model, known), missing, known))
    return shapes


def _ort_shapes(
    model: onnx.ModelProto, names: list[str], in_shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    import onnxruntime as ort  # local: passes and graph code never need ORT otherwise

    from convopt.graph.offload import serialized

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
        sess = ort.InferenceSession(serialized(m), opts, providers=["CPUExecutionProvider"])
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


def peak_live_bytes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> int:
    """float32 bytes of activations alive at once, at most, when the main graph's nodes run in their order, per
    sample (``shapes`` at batch 1, as :func:`infer_tensor_shapes` gives them): each tensor is alive from the node
    that makes it (a graph input: from the start) to its last reader (a graph output: to the end). Weights are
    not counted, nor tensors of unknown shape. What a run of the model holds besides the arrays asked of it,
    before ORT's own reuse of buffers (which only lowers it)."""
    nodes = list(model.graph.node)
    inits = {t.name for t in model.graph.initializer}
    last: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            last[t] = i
    end = len(nodes)
    for o in model.graph.output:
        last[o.name] = end

    def size(t: str) -> int:
        s = shapes.get(t)
        return 4 * math.prod(s) if s is not None and t not in inits and all(d > 0 for d in s) else 0

    frees: Counter[int] = Counter()  # node index → bytes whose last reader it is
    live = 0
    for i in model.graph.input:
        if i.name in last:
            live += size(i.name)
            frees[last[i.name]] += size(i.name)
    peak = live
    for i, n in enumerate(nodes):
        made = [t for t in n.output if t]
        live += sum(size(t) for t in made)
        peak = max(peak, live)
        for t in made:
            frees[last.get(t, i)] += size(t)  # an output nobody reads dies at once
        live -= frees.pop(i, 0)
    return peak
