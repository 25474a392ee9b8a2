"""Data-aware factors: refit each rewritten layer's last factor (and its bias) by least squares so the layer
reproduces the *original* layer's output given the input it actually sees in the already-rewritten model.

Layers are refit in topological order, one calibration run each, so every refit corrects the error
accumulated upstream (sequential refitting). Intermediate tensors come from ORT runs on a copy of the model
with the wanted tensors added as graph outputs; pixels are subsampled (same positions for input patches and
targets) and the normal equations are accumulated batch by batch (convopt.auto.lstsq).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convopt.auto.lstsq import ConvGeom, NormalEquations, im2col_at, pixels_at, relu_error, relu_refit, sample_positions
from convopt.auto.spill import Spill
from convopt.core.plan import Plan, apply_plan
from convopt.graph import ConvSpec, attrs, peak_live_bytes, used_names
from convopt.graph.edit import pruned
from convopt.graph.offload import array
from convopt.graph.linear import nchw
from convopt.limits import trim_freed_memory
from convopt.measure.data import EvalData
from convopt.measure.mapped import evict
from convopt.measure.model_file import model_file
from convopt.measure.ort import OrtSettings, make_session, session_batch
from convopt.measure.samples import rows as sample_rows
from convopt.pages import drop_all_pages, tmp_on_disk, to_file

Say = Callable[[str], None]


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Every tensor name a node's subgraphs (If/Loop/Scan bodies) read: an over-approximation of the
    outer-scope tensors they need."""
    out: set[str] = set()
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            out |= used_names(g)
    return out


ACTIVATION_BYTES = 16 << 20  # what one batch of the requested activations may take (at least one sample)


def iter_batches(model: onnx.ModelProto, names: list[str], data: EvalData, settings: OrtSettings,
                 max_batch: int = 16, sample_bytes: int = 0):
    """Yield (start, [arrays of ``names``]) for ``data`` run through ``model`` batch by batch, each batch
    holding at most ACTIVATION_BYTES per its largest per-sample size: ``sample_bytes`` (what the run itself
    holds: :func:`run_bytes`) or the requested arrays', learnt from the first sample, run alone.
    A model of fixed batch runs at its own; ragged data one sample at a time."""
    with model_file(*pruned(model, names)) as path:  # the model's own weights, written: no pruned copy
        sess = make_session(path, settings, arena=False)  # outputs only: no memory arena
    fixed = _fixed(sess)
    if fixed:
        batch = session_batch(sess, settings)
    else:
        batch = 1 if data.ragged else min(session_batch(sess, settings), max_batch)
    start = 0
    if batch > 1 and not fixed:
        first = _run(sess, names, data, 0, 1, fixed)
        yield 0, first
        evict(data)  # mapped data (convopt.measure.mapped): the batch's pages leave memory once it is used
        start, sample_bytes = 1, max(1, sample_bytes, sum(o.nbytes for o in first))
        del first
        batch = max(1, min(batch, ACTIVATION_BYTES // sample_bytes))
    for lo in range(start, data.n, batch):
        yield lo, _run(sess, names, data, lo, batch, fixed)
        evict(data)


def _run(sess, names: list[str], data: EvalData, start: int, batch: int, fixed: bool) -> list[np.ndarray]:
    """``names`` for samples start … start + batch − 1 (a fixed-batch model gets the last sample repeated)."""
    take = min(batch, data.n - start)
    feeds = {}
    for inp in sess.get_inputs():
        arr = sample_rows(data.inputs[inp.name], start, start + batch)
        if arr.shape[0] < batch and fixed:
            arr = np.concatenate([arr, np.repeat(arr[-1:], batch - arr.shape[0], axis=0)])
        feeds[inp.name] = np.ascontiguousarray(arr)
    outs = sess.run(names, feeds)
    # a tensor whose rows are the samples' rows (a Gemm's (b·rows, C)) keeps the real samples' rows
    return [o[: take * (o.shape[0] // batch)] if o.shape[0] % batch == 0 else o for o in outs]


def _fixed(sess) -> bool:
    return any(isinstance(i.shape[0], int) and i.shape[0] > 0 for i in sess.get_inputs() if i.shape)


@dataclass
class Targets:
    """Original outputs of each layer at sampled pixels: positions (P, 3) (sample, row, col) and Y (P, O);
    ``relu``: the layers whose output only feeds Relu nodes (their refit matches the response after it)."""

    pos: dict[str, np.ndarray]
    y: Mapping[str, np.ndarray]  # collect_targets: a Spill, read back one layer at a time
    relu: dict[str, bool] = field(default_factory=dict)
    sample_bytes: int = 0  # what a run of the original holds per sample (run_bytes): it bounds the refit batches

    def close(self) -> None:
        """Remove the targets set aside on disk now (rather than when garbage-collected)."""
        if isinstance(self.y, Spill):
            self.y.close()


def feeds_only_relu(model: onnx.ModelProto, tensor: str) -> bool:
    """True when ``tensor`` is read by at least one node, only by Relu nodes, and is not a graph output."""
    if any(o.name == tensor for o in model.graph.output):
        return False
    readers = [n for n in model.graph.node if tensor in n.input] + \
        [n for n in model.graph.node if tensor in _subgraph_names(n)]
    return bool(readers) and all(n.op_type == "Relu" for n in readers)


def layer_rngs(seed: int, names: Sequence[str]) -> dict[str, np.random.Generator]:
    """One generator per layer (seeded by ``seed`` and the layer's place): the pixels drawn for a layer do not
    depend on how the samples are batched, nor on the other layers run with it."""
    return {n: np.random.default_rng([seed, i]) for i, n in enumerate(names)}


def activation_bytes(shape: Sequence[int] | None) -> int:
    """float32 bytes of one sample of a tensor of ``shape`` (batch first; 0 when unknown)."""
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
        return 0
    return 4 * int(np.prod(shape[1:]))


def largest_activation(specs: Iterable[ConvSpec]) -> int:
    """float32 bytes per sample of the largest input or output among ``specs`` (0 when none is known)."""
    return max((activation_bytes(s) for c in specs for s in (c.in_shape, c.out_shape)), default=0)


def run_bytes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], specs: Iterable[ConvSpec]) -> int:
    """float32 bytes per sample that a run of ``model`` holds at least, besides the arrays asked of it: its
    activations alive at once at their peak (``peak_live_bytes`` over ``shapes``, the model's tensor shapes
    at batch 1, as the driver inferred them with the user's input shapes), and never less than the largest
    input or output among ``specs``."""
    return max(peak_live_bytes(model, shapes), largest_activation(specs))


def collect_targets(model: onnx.ModelProto, layers: dict[str, str], data: EvalData, settings: OrtSettings,
                    rows: int = 16000, seed: int = 0, specs: Mapping[str, ConvSpec] | None = None,
                    sample_bytes: int = 0) -> Targets:
    """Runs of the original ``model`` over ``data``; ``layers`` maps layer name → its output tensor. Keeps
    about ``rows`` pixels per layer (spread evenly over the samples); ``specs`` (by layer) let a Gemm's rows be
    seen as pixels (convopt.graph.linear.nchw), and group the layers so that one sample's outputs of a group
    take at most ACTIVATION_BYTES (one run per group: a run holds every output it is asked for).
    ``sample_bytes``: what a run of ``model`` holds per sample (:func:`run_bytes`), which bounds the batches
    here and in the refits."""
    names = list(layers)
    rngs = layer_rngs(seed, names)
    pos: dict[str, list[np.ndarray]] = {k: [] for k in names}
    ys: dict[str, list[np.ndarray]] = {k: [] for k in names}
    per = max(1, rows // max(data.n, 1))
    for group in _output_groups(names, specs):
        for start, outs in iter_batches(model, [layers[k] for k in group], data, settings, sample_bytes=sample_bytes):
            for k, y in zip(group, outs):
                if specs is not None and k in specs:
                    y = nchw(y, specs[k], 1 if data.ragged else None)
                p = sample_positions(y.shape[0], y.shape[2], y.shape[3], per, rngs[k])
                ys[k].append(pixels_at(y, p).astype(np.float32))
                p[:, 0] += start
                pos[k].append(p)
    y = Spill()  # memory: the targets wait on disk; each refit reads its layer's
    for k in names:
        y.put(k, np.concatenate(ys.pop(k)))
    return Targets({k: np.concatenate(v) for k, v in pos.items()}, y,
                   {k: feeds_only_relu(model, layers[k]) for k in names}, sample_bytes)


def _output_groups(names: list[str], specs: Mapping[str, ConvSpec] | None) -> list[list[str]]:
    """``names`` in order, cut into groups whose outputs take at most ACTIVATION_BYTES per sample (a layer of
    unknown size counts 0; one larger layer is a group alone)."""
    groups: list[list[str]] = [[]]
    size = 0
    for k in names:
        b = activation_bytes(specs[k].out_shape) if specs is not None and k in specs else 0
        if groups[-1] and size + b > ACTIVATION_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += b
    return [g for g in groups if g]


@dataclass
class RefitInfo:
    """One layer's refit: its output error on the sampled calibration pixels before (data-free last factor)
    and after; when kept, the new weight and bias of the last factor."""

    layer: str
    rel_error_before: float
    rel_error_after: float
    kept: bool
    rows: int
    weight: np.ndarray | None = field(default=None, repr=False)
    bias: np.ndarray | None = field(default=None, repr=False)


def _init_index(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: i for i, t in enumerate(model.graph.initializer)}


def last_factor(model: onnx.ModelProto, y_name: str) -> onnx.NodeProto:
    for n in model.graph.node:
        if y_name in n.output:
            if n.op_type not in ("Conv", "Gemm"):
                raise ValueError(f"the producer of {y_name} is {n.op_type}, not Conv or Gemm")
            return n
    raise ValueError(f"no node produces {y_name}")


RELU_ROWS_BYTES = 512 << 20  # cap on the patch rows held in memory for a ReLU-aware refit


def refit_layer(model: onnx.ModelProto, layer: str, y_name: str, targets: Targets, data: EvalData,
                settings: OrtSettings, ridge: float = 1e-5, rows: int | None = None) -> RefitInfo:
    """Refit, in place, the weight and bias of the Conv producing ``y_name`` (must be group 1) on the input
    it sees in ``model``; the refit is kept only if it lowers the error on the calibration pixels. When the
    original layer feeds only a ReLU (``targets.relu``), the fit and the errors are those after the ReLU
    (lstsq.relu_refit); otherwise they are linear least squares on the raw output."""
    node = last_factor(model, y_name)
    a = attrs(node)
    if int(a.get("group", 1)) != 1:  # type: ignore[arg-type]
        return RefitInfo(layer, float("nan"), float("nan"), False, 0)
    idx = _init_index(model)
    W = array(model.graph.initializer[idx[node.input[1]]]).astype(np.float64)
    if node.op_type == "Gemm":  # y = z Wᵀ (+ b), W (O, r) (convopt emits transB=1): a 1×1 conv on (r, rows, 1)
        assert rows is not None and int(a.get("transB", 0)) == 1  # type: ignore[arg-type]
        W = W.reshape(*W.shape, 1, 1)
    O = W.shape[0]
    has_b = len(node.input) > 2 and bool(node.input[2])
    b = array(model.graph.initializer[idx[node.input[2]]]).astype(np.float64) if has_b else np.zeros(O)
    geom = ConvGeom(tuple(W.shape[2:]), tuple(a.get("strides", [1, 1])),  # type: ignore[arg-type]
                    tuple(a.get("pads", [0, 0, 0, 0])), tuple(a.get("dilations", [1, 1])))  # type: ignore[arg-type]
    pos, Y = targets.pos[layer], targets.y[layer].astype(np.float64)
    order = np.argsort(pos[:, 0], kind="stable")
    pos, Y = pos[order], Y[order]
    bounds = np.searchsorted(pos[:, 0], np.arange(data.n + 1))
    F = int(np.prod(W.shape[1:]))
    ne = NormalEquations(F, O)
    relu = targets.relu.get(layer, False) and len(pos) * (F + O) * 4 <= RELU_ROWS_BYTES
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for start, (z,) in iter_batches(model, [node.input[0]], data, settings, sample_bytes=targets.sample_bytes):
        if node.op_type == "Gemm":  # ragged data: one sample per batch, whatever its rows
            z = z.reshape(-1, z.shape[0] if data.ragged else rows, z.shape[-1]).transpose(0, 2, 1)[..., None]
        lo, hi = bounds[start], bounds[min(start + z.shape[0], data.n)]
        if hi <= lo:
            continue
        p = pos[lo:hi].copy()
        p[:, 0] -= start
        x = im2col_at(z, geom, p)
        ne.add(x, Y[lo:hi])
        if relu:
            xs.append(x.astype(np.float32))
            ys.append(Y[lo:hi])
    trim_freed_memory()  # the batches' session and activations are freed: the solve below does not stack on them
    if relu and xs:
        X, Yr = np.concatenate(xs), np.concatenate(ys)
        before = relu_error(X, Yr, W.reshape(O, -1), b)
        Wn, bn, after = relu_refit(ne, X, Yr, ridge)
    else:
        before = ne.rel_error(W.reshape(O, -1), b)
        Wn, bn = ne.solve(ridge)
        after = ne.rel_error(Wn, bn)
    if not (np.isfinite(after) and after < before):
        return RefitInfo(layer, before, before, False, ne.rows)
    W32, b32 = Wn.reshape(W.shape).astype(np.float32), bn.astype(np.float32)
    _write_last_factor(model, node, idx, W32, b32)
    return RefitInfo(layer, before, after, True, ne.rows, W32, b32)


def _write_last_factor(model: onnx.ModelProto, node: onnx.NodeProto, idx: dict[str, int], W: np.ndarray,
                       b: np.ndarray) -> None:
    """Set the weight and bias of ``node`` (adding a bias input when it has none), in place."""
    stored = model.graph.initializer[idx[node.input[1]]]
    W = W.reshape(tuple(stored.dims))  # a Gemm's weight stays (O, r)
    stored.CopyFrom(numpy_helper.from_array(W, node.input[1]))
    if len(node.input) > 2 and node.input[2]:
        model.graph.initializer[idx[node.input[2]]].CopyFrom(numpy_helper.from_array(b, node.input[2]))
        return
    bname = node.input[1] + "/refit_B"
    model.graph.initializer.append(numpy_helper.from_array(b, bname))
    if model.ir_version < 4:  # IR 3: every initializer is also a graph input
        model.graph.input.append(helper.make_tensor_value_info(bname, onnx.TensorProto.FLOAT, [len(b)]))
    node.input.append(bname)


def refit_sequential(model: onnx.ModelProto, layers: list[tuple[str, str]], targets: Targets, data: EvalData,
                     settings: OrtSettings, say: Say | None = None,
                     rows: Mapping[str, int] | None = None, copy: bool = True
                     ) -> tuple[onnx.ModelProto, list[RefitInfo]]:
    """A copy of ``model`` (``copy`` False: ``model`` itself, a caller's private one, refit in place) with each
    (layer, output tensor) in ``layers`` refit in the given (topological) order, each on the activations of the
    model with all earlier refits applied (``rows``: a Gemm layer's rows per sample)."""
    m = model
    if copy:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    infos = []
    for i, (layer, y) in enumerate(layers, 1):
        info = refit_layer(m, layer, y, targets, data, settings, rows=(rows or {}).get(layer))
        infos.append(info)
        trim_freed_memory()  # the layer's session, activations and normal equations are freed
        drop_all_pages()  # and the set-aside arrays read (the fit data, the plan's factors) leave memory
        if say:
            say(f"  refit {i}/{len(layers)} {layer}: layer error {info.rel_error_before:.3f} -> "
                f"{info.rel_error_after:.3f}")
    return m, infos


RefitCache = dict[tuple[tuple[str, str], ...], RefitInfo]  # the plan up to a layer (graph order) → its refit


def fit_plan(model: onnx.ModelProto, plan: Plan, convs: Mapping[str, ConvSpec], targets: Targets,
             data: EvalData, settings: OrtSettings, say: Say | None = None,
             cache: RefitCache | None = None) -> tuple[Plan, list[RefitInfo]]:
    """``plan`` with the last factor of every planned layer refit in graph order on the activations of
    ``model`` with the plan (and the earlier refits) applied: the factors carry the refits, so applying the
    returned plan gives the refit model. A layer's refit depends only on the plan up to it: with ``cache``,
    the refits of the longest already-seen prefix are reused, not recomputed (the cache then holds this plan's
    refits only: auto's steps grow one plan, so an older plan's other prefixes never come back)."""
    order = [n for n in convs if n in plan]
    keys = [tuple((n, plan.choices[n].key) for n in order[:i + 1]) for i in range(len(order))]
    cache = {} if cache is None else cache
    done = 0
    while done < len(order) and keys[done] in cache:
        done += 1
    infos = [cache[k] for k in keys[:done]]
    prefix = _with_refits(plan, infos)
    applied = apply_plan(model, prefix, convs)
    rows = {n: c.in_shape[2] for n, c in convs.items() if c.op == "Gemm" and c.in_shape is not None}
    _, fresh = refit_sequential(applied.model, [(n, convs[n].y) for n in order[done:]], targets, data, settings, say,
                                rows, copy=False)  # the applied model is ours alone: no second copy
    for key in set(cache) - set(keys[:done]):  # memory: only this plan's prefixes can serve a later, longer plan
        del cache[key]
    fresh = set_aside(fresh)
    for key, info in zip(keys[done:], fresh):
        cache[key] = info
    return _with_refits(applied.plan, fresh), infos + fresh


def set_aside(infos: list[RefitInfo]) -> list[RefitInfo]:
    """``infos`` with the kept refits' weights and biases moved to one file, mapped read-only (convopt.pages),
    where the temporary folder is on a disk. Every step's plan carries its refits through the search, but a
    step's model is built from them only at its check and at the end (``apply_plan`` then drops their pages
    again): held in memory, they grew by each step's refits. The same values."""
    kept = [i for i in infos if i.kept and i.weight is not None and i.bias is not None]
    if not kept or not tmp_on_disk():
        return infos
    mapped = iter(to_file([a for i in kept for a in (i.weight, i.bias)], "convopt-refits-"))  # type: ignore[misc]
    moved = {id(i): replace(i, weight=next(mapped), bias=next(mapped)) for i in kept}
    return [moved.get(id(i), i) for i in infos]


def _with_refits(plan: Plan, infos: list[RefitInfo]) -> Plan:
    """``plan`` with the refit last factors of ``infos`` that were kept."""
    choices = dict(plan.items())
    for info in infos:
        if info.kept:
            c = choices[info.layer]
            assert c.factors is not None and info.weight is not None and info.bias is not None
            choices[info.layer] = c.with_factors(c.factors.with_last(info.weight, info.bias))
    return Plan(choices)
