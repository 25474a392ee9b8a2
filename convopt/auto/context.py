"""Pricing a Conv's candidate rewrites in context: each candidate's predicted end-to-end saving, timed as the
layer's window (its producer, consumers and siblings: ``convopt.auto.window``) with the candidate in place,
paired round by round with the dense window at the deployment thread count.

Why not the layer alone (``convopt.auto.latency``): a single-layer model starts and ends in NCHW, so ORT
wraps it in ReorderInput/ReorderOutput and times it with a cold thread pool; the factor chain's extra nodes,
the layout its factor shapes force at the boundaries and the activation fusion then cost differently than in
the model. The window keeps them as the model has them (bench/results/thread_pricing.md measures both
against the whole model). ``scope="model"``: the whole model with only that layer replaced (the reference;
affordable for small models only).

Cost: per priced layer, one session per candidate plus the dense window (ORT optimizes each window: a few
ms to tens of ms), then ``warmup + repeats`` rounds of (1 + candidates) window runs. Windows with one
structure (repeated blocks) are timed once and cached, keyed by structure, candidate and ORT settings.
"""
from __future__ import annotations

import gc
import time
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from convopt.auto.latency import LayerLatencyCache, conv_key, settings_key, single_conv_model
from convopt.auto.window import GraphIndex, Window, context_window, whole
from convopt.core.plan import Choice, Plan, apply_plan, conv_table
from convopt.graph import ConvSpec, infer_tensor_shapes
from convopt.measure.model_file import model_file
from convopt.measure.ort import OPT_LEVELS, ORT_ERRORS, OrtSettings, make_session

Scope = Literal["window", "model"]
Rounds = Callable[[Sequence[Any], Mapping[str, np.ndarray], int, int], np.ndarray]
"""(sessions, feeds, warmup, repeats) → seconds per run, shape (repeats, sessions): ``paired_rounds`` or a
replacement (a benchmark's gate that keeps only rounds timed while the machine was quiet)."""
FUSED, FUSED_ADD = "fused activations", "fused adds"  # counted apart from op types in ``ort_ops``
PARTS = ("saved", "ci", "ms", "nodes", "reorders", "fused", "fused_add")  # what the cache holds per candidate
NOTCH = 1.57  # McGill et al.: median ± 1.57·IQR/√n is a ~95 % interval for the median


@dataclass(frozen=True)
class GraphDelta:
    """What a candidate changes in the graph ORT runs (after its fusions and NCHWc layout pass), against the
    dense window: nodes, NCHWc reorders (ReorderInput/ReorderOutput), Convs with a fused activation and
    Convs with a fused residual Add (negative: fusions lost)."""

    nodes: int
    reorders: int
    fused_activations: int
    fused_adds: int

    @classmethod
    def between(cls, dense: Counter[str], cand: Counter[str]) -> "GraphDelta":
        def nodes(c: Counter[str]) -> int:
            return sum(v for k, v in c.items() if k not in (FUSED, FUSED_ADD))

        def reorders(c: Counter[str]) -> int:
            return c["ReorderInput"] + c["ReorderOutput"]
        return cls(nodes(cand) - nodes(dense), reorders(cand) - reorders(dense), cand[FUSED] - dense[FUSED],
                   cand[FUSED_ADD] - dense[FUSED_ADD])

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.nodes, self.reorders, self.fused_activations, self.fused_adds)


@dataclass(frozen=True)
class Price:
    """One candidate in context: ``saved_ms`` = median over rounds of (dense − candidate) window time (> 0:
    the candidate is faster end to end), ``ci_ms`` its ~95 % half-width, ``ms`` the candidate window's median,
    ``graph`` what it changes in ORT's optimized graph."""

    key: str
    saved_ms: float
    ci_ms: float
    ms: float
    graph: GraphDelta
    cached: bool = False

    @property
    def pays(self) -> bool:
        """Faster beyond the noise of its own measurement."""
        return self.saved_ms > self.ci_ms


@dataclass(frozen=True)
class LayerPrices:
    """The candidates of one layer priced in one run: the dense window's median ms and each candidate's price,
    in the order given. ``scope`` is what was timed ("window", "model", or "layer" when the window could not
    be built and the Conv alone was timed); ``nodes`` the window's node count."""

    layer: str
    scope: str
    dense_ms: float
    prices: tuple[Price, ...]
    nodes: int

    def by_key(self) -> dict[str, Price]:
        return {p.key: p for p in self.prices}


def paired_rounds(sessions: Sequence[Any], feeds: Mapping[str, np.ndarray], warmup: int,
                  repeats: int) -> np.ndarray:
    """Seconds per run, shape (repeats, len(sessions)): each round runs every session once, starting at a
    rotating position (no session always runs right after the same one). GC paused while timing."""
    feeds = dict(feeds)
    for s in sessions:
        for _ in range(warmup):
            s.run(None, feeds)
    n = len(sessions)
    t = np.zeros((repeats, n))
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            for j in range(n):
                k = (r + j) % n
                t0 = time.perf_counter()
                sessions[k].run(None, feeds)
                t[r, k] = time.perf_counter() - t0
    finally:
        if was:
            gc.enable()
    return t


def summarize(times: np.ndarray) -> tuple[float, list[tuple[float, float, float]]]:
    """(dense median ms, [(saved ms, ci ms, candidate median ms)]) from paired rounds; column 0 is dense."""
    ms = times * 1e3
    out = []
    for j in range(1, ms.shape[1]):
        d = ms[:, 0] - ms[:, j]
        q1, med, q3 = np.percentile(d, [25, 50, 75])
        out.append((float(med), float(NOTCH * (q3 - q1) / np.sqrt(len(d))), float(np.median(ms[:, j]))))
    return float(np.median(ms[:, 0])), out


def ort_ops(model: onnx.ModelProto, settings: OrtSettings) -> Counter[str]:
    """Op counts of the graph ORT runs for ``model`` at ``settings`` (its optimized graph), plus the number
    of Conv nodes carrying a fused activation (``FUSED``) and a fused Add (``FUSED_ADD``: a 4th input)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = settings.threads, 4
    so.graph_optimization_level = OPT_LEVELS[settings.graph_optimization_level]
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        with model_file(model) as path:  # offloaded weights too
            ort.InferenceSession(str(path), so, providers=[settings.provider])
        g = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    c = Counter(n.op_type for n in g.node)
    convs = [n for n in g.node if n.op_type in ("Conv", "FusedConv")]
    c[FUSED] = sum(1 for n in convs if any(a.name == "activation" and a.s for a in n.attribute))
    c[FUSED_ADD] = sum(1 for n in convs if len(n.input) > 3 and n.input[3])
    return c


def nchwc_block(settings: OrtSettings) -> int | None:
    """The channel block of ORT's NCHWc Conv kernels on this CPU (MLAS: 16 with AVX-512, 8 with AVX2), read
    from how ORT lays out probe convs: a Conv with fewer input channels than the block reads NCHW directly,
    one with as many gets a ReorderInput. None when ORT does not use NCHWc here. Factor ranks below it add a
    reorder; ranks between multiples of it are padded up (rank 24 costs what 32 costs when it is 16)."""
    for c in (4, 8, 16, 32):
        w = onnx.numpy_helper.from_array(np.ones((32, c, 1, 1), np.float32), "w")
        g = onnx.helper.make_graph([onnx.helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, c, 8, 8])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32, 8, 8])], [w])
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])
        m.ir_version = 8
        ops = ort_ops(m, settings)
        if ops["ReorderOutput"] == 0:
            return None
        if ops["ReorderInput"]:
            return c
    return None


def random_feeds(shapes: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}


class ContextPricer:
    """Prices candidates of the Convs of one (BN-folded) model in context, at ``settings``' threads.

    ``convs``: the model's ConvSpecs by node name (``conv_table``); ``input_shapes``: hints for dynamic graph
    inputs (as for the driver); ``cache``: shared with auto mode's layer cache (its JSON file) if given;
    ``rounds``: how sessions are timed (``paired_rounds``)."""

    def __init__(self, model: onnx.ModelProto, convs: Mapping[str, ConvSpec], settings: OrtSettings, *,
                 scope: Scope = "window", input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                 cache: LayerLatencyCache | None = None, repeats: int = 100, warmup: int = 5,
                 rounds: Rounds | None = None) -> None:
        self.model, self.convs, self.settings, self.scope = model, convs, settings, scope
        self.repeats, self.warmup, self.rounds = repeats, warmup, rounds or paired_rounds
        self.cache = cache if cache is not None else LayerLatencyCache()
        self.index = GraphIndex(model)
        self.shapes = infer_tensor_shapes(model, dict(input_shapes) if input_shapes else None)
        self._window: tuple[str, tuple[Window, onnx.ModelProto, str]] | None = None

    def window(self, layer: str) -> tuple[Window, onnx.ModelProto, str]:
        """(window, its dense sub-model, scope timed) for ``layer``; the last layer's is kept (auto prices one
        layer after another: keeping every window would hold each weight several times over)."""
        if self._window is None or self._window[0] != layer:
            conv = self.convs[layer]
            try:
                w, sub = (whole if self.scope == "model" else _window_of)(self.index, conv, self.shapes)
                self._window = (layer, (w, sub, self.scope))
            except KeyError:  # a boundary tensor of unknown shape, or a cut ORT refuses: time the Conv alone
                assert conv.in_shape is not None
                sub = single_conv_model(conv, conv.in_shape[0])
                w = Window(layer, (conv.index,), ("x",), ("y",), {"x": conv.in_shape}, conv_key(conv, conv.in_shape[0]))
                self._window = (layer, (w, sub, "layer"))
        return self._window[1]

    def layer_share(self, layer: str) -> float:
        """The layer's share of its window's Conv MACs (1.0 when it is timed alone): how auto mode reads a
        window's dense time as the layer's own (``dense_ms × share``), to keep a per-layer speedup."""
        w, _, scope = self.window(layer)
        if scope == "layer":
            return 1.0
        nodes = self.model.graph.node
        total = sum(self.convs[n.name].macs or 0 for n in (nodes[i] for i in w.nodes) if n.name in self.convs)
        own = self.convs[layer].macs or 0
        return float(own / total) if total and own else 1.0

    def candidate(self, layer: str, choice: Choice) -> onnx.ModelProto:
        """The window of ``layer`` with ``choice`` applied (its factors reused when it has them)."""
        w, sub, scope = self.window(layer)
        if scope == "model":
            return apply_plan(sub, Plan({layer: choice}), self.convs).model
        name = layer if scope == "window" else self.convs[layer].name
        convs = conv_table(sub, {**self.shapes, **_io_shapes(self.convs[layer], scope)})
        return apply_plan(sub, Plan({name: choice}), convs).model

    def _key(self, layer: str, what: str) -> str:
        w, _, scope = self.window(layer)
        return f"ctx:{scope}:{w.key}|{what}|{settings_key(self.settings)}|r{self.repeats}"

    def price(self, layer: str, choices: Sequence[Choice]) -> LayerPrices:
        """Each choice's predicted end-to-end saving for ``layer``; uncached ones timed in one paired run."""
        w, sub, scope = self.window(layer)
        keys = [self._key(layer, c.key) for c in choices]
        todo = [i for i, k in enumerate(keys) if self.cache.get(k + "|saved") is None]
        dense_k = self._key(layer, "dense")
        if todo or self.cache.get(dense_k) is None:
            models = [self.candidate(layer, choices[i]) for i in todo]
            dense, rows = self.time([sub] + models, w.shapes)
            self.cache.put(dense_k, dense)
            base = ort_ops(sub, self.settings) if todo else Counter()
            for i, m, row in zip(todo, models, rows):
                delta = GraphDelta.between(base, ort_ops(m, self.settings)).as_tuple()
                for part, v in zip(PARTS, row + delta):
                    self.cache.put(f"{keys[i]}|{part}", v)
        dense = self.cache.get(dense_k)
        assert dense is not None
        prices = []
        for i, k in enumerate(keys):
            v = [self.cache.get(f"{k}|{p}") or 0.0 for p in PARTS]
            prices.append(Price(choices[i].key, v[0], v[1], v[2], GraphDelta(*(int(x) for x in v[3:])),
                                cached=i not in todo))
        return LayerPrices(layer, scope, float(dense), tuple(prices), len(w))

    def time(self, models: Sequence[onnx.ModelProto], shapes: Mapping[str, tuple[int, ...]]
             ) -> tuple[float, list[tuple[float, float, float]]]:
        """Time ``models`` (the first is the reference) in paired rounds on one random input."""
        sessions = [make_session(m, self.settings) for m in models]
        return summarize(self.rounds(sessions, random_feeds(shapes), self.warmup, self.repeats))


def _window_of(ix: GraphIndex, conv: ConvSpec, shapes: Mapping[str, tuple[int, ...]]
               ) -> tuple[Window, onnx.ModelProto]:
    w, sub = context_window(ix, conv, shapes)
    try:
        make_session(sub, OrtSettings(threads=1))  # ORT accepts the cut (types it cannot know raise here)
    except ORT_ERRORS as exc:
        raise KeyError(str(exc)) from exc
    return w, sub


def _io_shapes(conv: ConvSpec, scope: str) -> dict[str, tuple[int, ...]]:
    if scope != "layer":
        return {}
    assert conv.in_shape is not None and conv.out_shape is not None
    return {"x": conv.in_shape, "y": conv.out_shape}


def price_in_context(model: onnx.ModelProto, convs: Mapping[str, ConvSpec], layer: str, choices: Sequence[Choice],
                     settings: OrtSettings, *, scope: Scope = "window", repeats: int = 100) -> LayerPrices:
    """One-shot form of ``ContextPricer(...).price(layer, choices)``."""
    return ContextPricer(model, convs, settings, scope=scope, repeats=repeats).price(layer, choices)


__all__ = ["ContextPricer", "GraphDelta", "LayerPrices", "Price", "nchwc_block", "ort_ops", "paired_rounds",
           "price_in_context", "summarize"]
