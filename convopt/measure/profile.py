"""Each Conv's share of a model's run time, from ONNX Runtime's own profiler (``SessionOptions.enable_profiling``).

One session at the settings' threads runs the model on random inputs for a short while; the profile's
per-node kernel times are summed and attributed back to the model's Conv nodes. ORT rewrites the graph before
it runs it (it fuses a Conv with the activation or Add after it, and its NCHWc layout pass renames nodes after
their output tensor, ``<tensor>_nchwc``), so a profiled node is matched by name first (every node of the copy
that is profiled gets a unique name) and then by the tensor it writes, walking back from a fused activation or
Add to the Conv that feeds it. What cannot be attributed to a Conv counts as "other" time. Shares are of the
summed kernel time: what the session's threads spent in operators.

Why the profiler, not each layer timed alone: the shares then describe the model as ORT runs it (fusions, the
NCHWc layout and its reorders included), in one session and a few seconds.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from convopt.errors import DataError, ShapeError
from convopt.graph import graph_inputs, input_dtype, resolve_input_shapes
from convopt.measure.model_file import model_file
from convopt.measure.ort import ORT_ERRORS, OrtSettings

FUSED_AFTER = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Add", "Sum", "HardSwish", "Mul"}
NAME_PREFIX = "convopt_profiled_"


@dataclass(frozen=True)
class LayerTimes:
    """Kernel milliseconds per run for each Conv (by its convopt name), all operators together, how many
    runs were profiled and at how many threads (0: ORT's default)."""

    per_conv: dict[str, float]
    total_ms: float
    runs: int
    threads: int

    def share(self, name: str) -> float | None:
        ms = self.per_conv.get(name)
        return None if ms is None or self.total_ms <= 0 else ms / self.total_ms


def random_feeds(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None) -> dict[str, np.ndarray]:
    """Seeded random inputs of every real graph input's resolved shape (ShapeError names the --input-shape)."""
    shapes = resolve_input_shapes(model, input_shapes)
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in graph_inputs(model):
        dtype = input_dtype(vi)
        x = rng.standard_normal(shapes[vi.name]) if dtype.kind == "f" else rng.integers(0, 2, shapes[vi.name])
        feeds[vi.name] = np.asarray(x, dtype=dtype)
    return feeds


def _renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, node in enumerate(m.graph.node):
        node.name = f"{NAME_PREFIX}{i}"
    return m


def _attribution(model: onnx.ModelProto, conv_names: dict[int, str]) -> tuple[dict[str, int], dict[str, int]]:
    """(profiled node name → node index, tensor name → producing node index)."""
    by_name = {f"{NAME_PREFIX}{i}": i for i in range(len(model.graph.node))}
    producer = {out: i for i, n in enumerate(model.graph.node) for out in n.output}
    return by_name, producer


def _conv_of(i: int, model: onnx.ModelProto, producer: dict[str, int], convs: dict[int, str]) -> str | None:
    """The Conv node ``i`` is, or the Conv a fused activation/Add at ``i`` follows (up to three steps back)."""
    for _ in range(4):
        if i in convs:
            return convs[i]
        node = model.graph.node[i]
        if node.op_type not in FUSED_AFTER:
            return None
        fed = [producer[t] for t in node.input if t in producer]
        from_conv = [j for j in fed if j in convs]
        nxt = from_conv or [j for j in fed if model.graph.node[j].op_type in FUSED_AFTER]
        if not nxt:
            return None
        i = nxt[0]
    return None


def _profile_events(session_file: str, warmup: int) -> tuple[list[dict[str, object]], int]:
    """The kernel-time events of the runs after the first ``warmup`` ones, and how many runs those are."""
    with open(session_file, encoding="utf-8") as f:
        events = [e for e in json.load(f) if isinstance(e, dict)]
    runs = sorted((float(e.get("ts", 0)), float(e.get("dur", 0))) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    cutoff = runs[warmup - 1][0] + runs[warmup - 1][1] if len(runs) > warmup else 0.0
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
               and float(e.get("ts", 0)) >= cutoff]
    return kernels, max(len(runs) - warmup, 1)


def layer_times(model: onnx.ModelProto, conv_nodes: dict[int, str], settings: OrtSettings,
                input_shapes: dict[str, tuple[int, ...]] | None = None, seconds: float = 2.0,
                max_runs: int = 200) -> LayerTimes:
    """Profile ``model`` for about ``seconds`` (at least 3 runs after 2 warm-up runs) and return each Conv's
    kernel time; ``conv_nodes`` maps node index → convopt's name for the Conv."""
    feeds = random_feeds(model, input_shapes)
    renamed = _renamed(model)
    with tempfile.TemporaryDirectory(prefix="convopt-profile-") as tmp:
        session = _profiling_session(renamed, settings, Path(tmp))
        try:
            for _ in range(2):
                session.run(None, feeds)
            runs, t0 = 0, time.perf_counter()
            while runs < 3 or (time.perf_counter() - t0 < seconds and runs < max_runs):
                session.run(None, feeds)
                runs += 1
        except ORT_ERRORS as exc:
            raise DataError(f"ONNX Runtime could not run the model on random inputs to time it: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        events, runs = _profile_events(session.end_profiling(), warmup=2)
    return _sum(events, renamed, conv_nodes, runs, settings.threads)


def _profiling_session(model: onnx.ModelProto, settings: OrtSettings, folder: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(folder / "profile")
    so.intra_op_num_threads = settings.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 4
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
    try:
        with model_file(model) as path:  # offloaded weights too
            return ort.InferenceSession(str(path), sess_options=so, providers=[settings.provider])
    except ORT_ERRORS as exc:
        raise DataError(f"ONNX Runtime refused the model: {str(exc).strip().splitlines()[0]}") from None


def _sum(events: list[dict[str, object]], model: onnx.ModelProto, convs: dict[int, str], runs: int,
         threads: int) -> LayerTimes:
    by_name, producer = _attribution(model, convs)
    per: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in events:
        us = float(e.get("dur", 0) or 0)  # type: ignore[arg-type]
        total += us
        name = str(e["name"])[: -len("_kernel_time")]
        i = by_name.get(name)
        if i is None:
            i = producer.get(name.removesuffix("_nchwc"))
        conv = None if i is None else _conv_of(i, model, producer, convs)
        if conv is not None:
            per[conv] += us
    scale = 1e-3 / max(runs, 1)
    return LayerTimes({k: v * scale for k, v in per.items()}, total * scale, runs, threads)


__all__ = ["LayerTimes", "ShapeError", "layer_times", "random_feeds"]
