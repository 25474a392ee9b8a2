"""Latency of several models measured in one interleaved run: warm up each, then a, b, a, b, ... per repeat.

Interleaving spreads machine noise (frequency scaling, other load) evenly over the models, so the ratio
of medians (speedup) is fairer than timing each model in its own block.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from convopt.measure.ort import OrtSettings, make_session


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock time of one ``session.run`` on one batch, in milliseconds (quartiles: linear interpolation)."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    min_ms: float
    mean_ms: float
    repeats: int
    warmup: int
    batch: int = 1

    @classmethod
    def from_times(cls, seconds: Sequence[float], warmup: int, batch: int = 1) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        return cls(float(med), float(q1), float(q3), float(q3 - q1), float(ms.min()), float(ms.mean()),
                   len(ms), warmup, batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def speedup(base: LatencyStats, cand: LatencyStats) -> float:
    """base.median / cand.median: > 1 means the candidate is faster."""
    return base.median_ms / cand.median_ms if cand.median_ms > 0 else float("inf")


def time_sessions(
    sessions: Sequence[ort.InferenceSession], feeds: Mapping[str, np.ndarray], settings: OrtSettings
) -> list[LatencyStats]:
    """Warm up each session ``settings.warmup`` times, then time ``settings.repeats`` rounds of one run per
    session in turn (round-robin) with time.perf_counter. The garbage collector is paused while timing."""
    feeds = dict(feeds)
    batch = int(next(iter(feeds.values())).shape[0]) if feeds and np.ndim(next(iter(feeds.values()))) else 1
    for s in sessions:
        for _ in range(settings.warmup):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(settings.repeats):
            for i, s in enumerate(sessions):
                t0 = time.perf_counter()
                s.run(None, feeds)
                times[i].append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [LatencyStats.from_times(t, settings.warmup, batch) for t in times]


def measure_latency(
    models: Sequence[onnx.ModelProto | bytes], feeds: Mapping[str, np.ndarray], settings: OrtSettings
) -> list[LatencyStats]:
    """Build one session per model (once), then time them interleaved on the same ``feeds`` (one batch)."""
    return time_sessions([make_session(m, settings) for m in models], feeds, settings)
