"""Global choice of one candidate (or none) per layer: greedy by latency saved per unit of accuracy cost,
then an end-to-end check along the greedy sequence that backs off until the budget holds.

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


def search_prefix(n: int, ok: Callable[[int], bool], start: int | None = None) -> tuple[int, list[tuple[int, bool]]]:
    """Largest k in [0, n] with ok(k), assuming ok is (roughly) monotone non-increasing in k and ok(0) holds.

    Tries ``start`` (default n) first, then bisects; every call is logged as (k, result). Never returns a k
    that was not verified (k = 0 is taken as verified)."""
    log: list[tuple[int, bool]] = []
    lo, hi = 0, n + 1  # ok(lo) known true, hi: first known false (n + 1: unknown)
    k = n if start is None else max(0, min(n, start))
    first = True
    while True:
        if not first:
            if hi - lo <= 1:
                break
            k = (lo + hi) // 2
        first = False
        if k == 0:
            break
        res = ok(k)
        log.append((k, res))
        if res:
            lo = k
            if k == n:
                break
        else:
            hi = k
    return lo, log
