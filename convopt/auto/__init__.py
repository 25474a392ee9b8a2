"""Auto mode: data-aware factors and latency-aware per-layer choice under an accuracy budget."""
from __future__ import annotations

from convopt.auto.latency import LayerLatencyCache
from convopt.auto.optimize import auto_optimize
from convopt.auto.search import AutoOptions, split_eval_data

__all__ = ["AutoOptions", "LayerLatencyCache", "auto_optimize", "split_eval_data"]
