"""Global choice of one candidate (or none) per layer: greedy by latency saved per unit of accuracy cost, and
the grid of its steps that are tested (in order) on the decision data.

Pure Python: candidates are (layer, key, saved_ms, cost) records; a configuration is priced by a callable.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

EPS_COST = 1e-6


@dataclass(frozen=True)
class Choice:
    """A candidate for one layer: ``saved_ms`` = dense ms − candidate ms (single-layer, measured);
    ``cost`` = the candidate's own accuracy cost (its layer's output error; larger is worse)."""

    layer: str
    key: str
    saved_ms: float
    cost: float


Config = dict[str, Choice]  # layer → chosen candidate
ConfigCost = Callable[[Mapping[str, float]], float]  # {layer: its choice's cost} → the configuration's cost


def additive(costs: Mapping[str, float]) -> float:
    return float(sum(costs.values()))


def greedy_sequence(choices: list[Choice], cost: ConfigCost = additive, eps: float = EPS_COST) -> list[Config]:
    """Configurations of growing saving: start with every layer dense; at each step take the upgrade (a layer's
    first candidate, or a switch to a candidate of that layer saving more) with the best marginal ratio
    Δsaved / Δcost, where ``cost`` prices a whole configuration (Δcost floored at ``eps``). Candidates that
    save nothing are never used. Returns [config_0 = {}, config_1, ...]; the last one has no upgrade left."""
    by_layer: dict[str, list[Choice]] = {}
    for c in choices:
        if c.saved_ms > 0:
            by_layer.setdefault(c.layer, []).append(c)
    current: Config = {}
    seq: list[Config] = [dict(current)]
    costs: dict[str, float] = {}
    now = cost(costs)
    while True:
        best: tuple[float, float, Choice, float] | None = None
        for layer, cands in by_layer.items():
            cur_saved = current[layer].saved_ms if layer in current else 0.0
            for c in cands:
                d_saved = c.saved_ms - cur_saved
                if d_saved <= 0:
                    continue
                after = cost({**costs, layer: c.cost})
                ratio = d_saved / max(after - now, eps)
                if best is None or (ratio, d_saved) > best[:2]:
                    best = (ratio, d_saved, c, after)
        if best is None:
            return seq
        current[best[2].layer], costs[best[2].layer], now = best[2], best[2].cost, best[3]
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
