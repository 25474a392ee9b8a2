"""Auto mode: data-aware factors (sequential least-squares refits on calibration data) and a latency-aware
per-layer choice of rewrite under an accuracy budget. Entry point: :func:`auto_optimize`."""
from __future__ import annotations

from convopt.auto.latency import LayerLatencyCache
from convopt.auto.optimize import AUTO_PASSES, DEFAULT_BUDGET, auto_optimize, split_eval_data

__all__ = ["AUTO_PASSES", "DEFAULT_BUDGET", "LayerLatencyCache", "auto_optimize", "split_eval_data"]
