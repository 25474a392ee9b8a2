"""What a measurement of one model against the original holds: accuracy figures, per-output comparisons, and
latency timed interleaved with the original. Typed records; ``to_dict`` only at the report boundary."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from convopt.measure.latency import LatencyStats


def finite(v: float | None) -> float | None:
    """``v`` as a float, or None when it is None or not finite (JSON has no NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Accuracy:
    """A candidate's outputs against the original's on the same samples. Agreement and overlap in % (None
    without a class-score output); ``top1_drop``: points of labelled top-1 lost when there are labels, else
    100 − agreement; ``top1_drop_ci95``: half-width of its 95 % interval on these samples."""

    top1_agreement: float | None = None
    top5_overlap: float | None = None
    rel_l2_error: float | None = None
    cosine: float | None = None
    max_abs_error: float | None = None
    labelled_top1: float | None = None
    labelled_top5: float | None = None
    top1_drop: float | None = None
    top1_drop_ci95: float | None = None

    @property
    def labelled(self) -> bool:
        return self.labelled_top1 is not None

    def to_dict(self) -> dict[str, float | None]:
        return {f.name: finite(getattr(self, f.name)) for f in fields(self)}


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
    """One model measured against the original on the evaluation data."""

    desc: str
    samples: int
    data_source: str
    accuracy: Accuracy
    outputs: tuple[dict[str, Any], ...]
    latency: LatencyComparison | None
    scored_output: str | None = None
    warning: str | None = None
    seconds: float = 0.0

    @property
    def speedup(self) -> float | None:
        return None if self.latency is None else self.latency.speedup

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: plain floats and lists, non-finite numbers as None."""
        return {
            "desc": self.desc,
            "samples": self.samples,
            "data": self.data_source,
            "warning": self.warning,
            "scored_output": self.scored_output,
            "accuracy": self.accuracy.to_dict(),
            "outputs": [{k: (finite(v) if isinstance(v, float) else v) for k, v in o.items()} for o in self.outputs],
            "latency": self.latency.to_dict() if self.latency is not None else None,
            "seconds": finite(self.seconds),
        }
