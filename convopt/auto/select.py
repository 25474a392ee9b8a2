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


def grid_steps(n: int, max_checks: int) -> list[int]:
    """The steps 1..n to check: all of them when n <= max_checks, else ``max_checks`` spread evenly
    (1 and n included)."""
    if n <= 0:
        return []
    if n <= max_checks:
        return list(range(1, n + 1))
    return sorted({1 + round(i * (n - 1) / (max_checks - 1)) for i in range(max_checks)})


def monotone_fit(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (isotonic regression, pool adjacent
    violators). A step of the greedy sequence only adds rewrites, so its true accuracy cost does not fall as
    the step grows; the measured one does, by sampling noise. Fitting a monotone curve pools neighbouring
    steps instead of trusting one lucky (or unlucky) measurement."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    out: list[float] = []
    for m, w in blocks:
        out.extend([m] * int(w))
    return out


def largest_within(steps: list[int], usage: list[float], limit: float = 1.0) -> int:
    """The largest step whose monotone-fitted budget usage is at most ``limit`` (0 when none is)."""
    fitted = monotone_fit(usage)
    return max((k for k, u in zip(steps, fitted) if u <= limit + 1e-9), default=0)
