"""Global choice of one candidate (or none) per layer: greedy by latency saved per unit of accuracy cost, and
the grid of its steps that are tested (in order) on the decision data.

Pure Python: candidates are (layer, key, saved_ms, cost) records; verification is a callback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

EPS_COST = 1e-6


@dataclass(frozen=True)
class Choice:
    """A candidate for one layer: ``saved_ms`` = dense ms − candidate ms (single-layer, measured);
    ``cost`` = accuracy cost when applied alone (larger is worse; any non-negative proxy)."""

    layer: str
    key: str
    saved_ms: float
    cost: float


Config = dict[str, Choice]  # layer → chosen candidate


def greedy_sequence(choices: list[Choice], eps: float = EPS_COST) -> list[Config]:
    """Configurations of growing saving: start with every layer dense; at each step take the upgrade (a layer's
    first candidate, or a switch to a candidate of that layer saving more) with the best marginal ratio
    (Δsaved / Δcost, Δcost floored at ``eps``). Candidates that save nothing are never used. Returns
    [config_0 = {}, config_1, ...]; the last one has no upgrade left."""
    by_layer: dict[str, list[Choice]] = {}
    for c in choices:
        if c.saved_ms > 0:
            by_layer.setdefault(c.layer, []).append(c)
    current: Config = {}
    seq: list[Config] = [dict(current)]
    while True:
        best: tuple[float, float, Choice] | None = None
        for layer, cands in by_layer.items():
            cur = current.get(layer)
            cur_saved = cur.saved_ms if cur else 0.0
            cur_cost = cur.cost if cur else 0.0
            for c in cands:
                d_saved = c.saved_ms - cur_saved
                if d_saved <= 0:
                    continue
                ratio = d_saved / max(c.cost - cur_cost, eps)
                key = (ratio, d_saved)
                if best is None or key > best[:2]:
                    best = (ratio, d_saved, c)
        if best is None:
            return seq
        current[best[2].layer] = best[2]
        seq.append(dict(current))


def grid_steps(n: int, max_checks: int) -> list[int]:
    """The steps 1..n to test, fixed before any test: all of them when n <= max_checks, else at most
    ``max_checks`` spaced geometrically from 1 to n (dense where a tight budget binds, each a similar share
    of the sequence's remaining rewrites further on)."""
    if n <= 0:
        return []
    if n <= max_checks:
        return list(range(1, n + 1))
    ratio = n ** (1.0 / (max_checks - 1))
    return sorted({min(n, max(1, round(ratio ** i))) for i in range(max_checks)} | {n})
