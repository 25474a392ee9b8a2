"""What a measurement of one model against the original holds: per-sample outcomes (what every bound is
computed from), accuracy figures with their intervals, per-output comparisons, and latency timed interleaved
with the original. Typed records; ``to_dict`` only at the report boundary."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from convopt.measure import stats
from convopt.measure.latency import LatencyStats

Interval = tuple[float, float]
LEVEL = 0.95  # the level of every interval shown to the user


def finite(v: float | None) -> float | None:
    """``v`` as a float, or None when it is None or not finite (JSON has no NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Outcomes:
    """Per-sample outcomes of a candidate against the original on the same n samples (arrays of length n):
    ``correct_before/after`` (labelled top-1 of the original / candidate, None without labels), ``agree``
    (same top-1 class, None without a class-score output), ``err_sq`` and ``ref_sq`` (squared error and squared
    norm of the reference over all outputs of the sample), ``score_before/after`` (a task metric's per-sample
    scores, None without one), and ``index`` (which samples of the data they are)."""

    index: np.ndarray
    err_sq: np.ndarray
    ref_sq: np.ndarray
    agree: np.ndarray | None = None
    correct_before: np.ndarray | None = None
    correct_after: np.ndarray | None = None
    score_before: np.ndarray | None = None
    score_after: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.index.size)

    @property
    def flips(self) -> tuple[int, int] | None:
        """(right → wrong, wrong → right) with labels, else None."""
        if self.correct_before is None or self.correct_after is None:
            return None
        b, a = self.correct_before, self.correct_after
        return int(np.sum(b & ~a)), int(np.sum(~b & a))

    @property
    def disagreements(self) -> int | None:
        return None if self.agree is None else int(np.sum(~self.agree))


def drop_interval(o: Outcomes, level: float = LEVEL) -> Interval | None:
    """Interval of the top-1 drop in points: paired over flips with labels, else 100 − agreement."""
    if o.flips is not None:
        lo, hi = stats.paired_drop_interval(*o.flips, o.n, level)
        return 100.0 * lo, 100.0 * hi
    if o.disagreements is not None:
        lo, hi = stats.rate_interval(o.disagreements, o.n, level)
        return 100.0 * lo, 100.0 * hi
    return None


@dataclass(frozen=True)
class Accuracy:
    """A candidate's outputs against the original's on the same samples. Agreement and overlap in % (None
    without a class-score output); ``top1_drop``: points of labelled top-1 lost when there are labels, else
    100 − agreement; ``metric_*``: a task metric's mean score; each ``*_interval`` its 95 % interval."""

    top1_agreement: float | None = None
    top5_overlap: float | None = None
    rel_l2_error: float | None = None
    cosine: float | None = None
    max_abs_error: float | None = None
    labelled_top1: float | None = None
    labelled_top5: float | None = None
    top1_drop: float | None = None
    top1_drop_interval: Interval | None = None
    rel_l2_error_interval: Interval | None = None
    metric: str | None = None
    metric_score: float | None = None
    metric_drop: float | None = None
    metric_drop_interval: Interval | None = None

    @property
    def labelled(self) -> bool:
        return self.labelled_top1 is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v if isinstance(v, str) or v is None else (
                [finite(v[0]), finite(v[1])] if isinstance(v, tuple) else finite(v))
        return out


ACCURACY_KEYS = tuple(f.name for f in fields(Accuracy))


@dataclass(frozen=True)
class LatencyComparison:
    """Candidate and original timed in the same interleaved run; speedup = original / candidate median."""

    candidate: LatencyStats
    original: LatencyStats
    speedup: float

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.to_dict(), "original": self.original.to_dict(),
                "speedup": finite(self.speedup)}


@dataclass(frozen=True)
class Measurement:
    """One model measured against the original on one data role (``role``: select or report)."""

    desc: str
    samples: int
    data_source: str
    accuracy: Accuracy
    outputs: tuple[dict[str, Any], ...]
    latency: LatencyComparison | None
    scored_output: str | None = None
    warning: str | None = None
    seconds: float = 0.0
    outcomes: Outcomes | None = None
    role: str = "evaluation"

    @property
    def speedup(self) -> float | None:
        return None if self.latency is None else self.latency.speedup

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: plain floats and lists, non-finite numbers as None (outcomes are not written)."""
        return {
            "desc": self.desc,
            "role": self.role,
            "samples": self.samples,
            "data": self.data_source,
            "warning": self.warning,
            "scored_output": self.scored_output,
            "accuracy": self.accuracy.to_dict(),
            "outputs": [{k: (finite(v) if isinstance(v, float) else v) for k, v in o.items()} for o in self.outputs],
            "latency": self.latency.to_dict() if self.latency is not None else None,
            "seconds": finite(self.seconds),
        }
