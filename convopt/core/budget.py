"""The accuracy budget and all arithmetic on it, in one place: which limits a measurement breaks (with the
threshold actually applied), how much of the budget it uses, and the tightened or loosened budgets the
strategies decide with."""
from __future__ import annotations

import math
from dataclasses import dataclass

from convopt.errors import InputError
from convopt.measure.measurement import Accuracy

_EPS = 1e-9  # comparisons forgive float round-off in the last digits


@dataclass(frozen=True)
class Budget:
    """How much a rewrite may cost. max_accuracy_drop: points of labelled top-1 (or of top-1 agreement when
    there are no labels); min_agreement: % top-1 agreement with the original; max_rel_error: relative L2
    error of the outputs. ``source`` says where the limits come from (shown in every message)."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    max_rel_error: float | None = None
    source: str = "given"

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "min_agreement", "max_rel_error"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise InputError(f"--{name.replace('_', '-')} must be a non-negative number, got {v}")
        if self.min_agreement is not None and self.min_agreement > 100:
            raise InputError(f"--min-agreement is a percentage (0..100), got {self.min_agreement}")

    @property
    def is_empty(self) -> bool:
        """True when no limit is set."""
        return self.max_accuracy_drop is None and self.min_agreement is None and self.max_rel_error is None

    @classmethod
    def default(cls, scored: bool) -> "Budget":
        """1 point of top-1 (labelled, else agreement) for a model with class scores, else 0.05 relative error."""
        if scored:
            return cls(max_accuracy_drop=1.0, source="default")
        return cls(max_rel_error=0.05, source="default")

    def validate(self, scored: bool, labelled: bool) -> None:
        """InputError when these data cannot measure a limit (agreement without any class-score output)."""
        needs_classes = self.min_agreement is not None or (self.max_accuracy_drop is not None and not labelled)
        if needs_classes and not scored:
            raise InputError("--max-accuracy-drop (without labels) and --min-agreement need a class-score output, "
                             "but the model has none; use --max-rel-error")

    def _flag(self, name: str) -> str:
        flag = f"--{name.replace('_', '-')} {float(getattr(self, name))}"
        return flag if self.source == "given" else f"{flag}: {self.source}"

    def check(self, acc: Accuracy) -> str | None:
        """A reason naming every limit ``acc`` breaks and the threshold applied ('; '-joined), else None.
        A figure that could not be computed (None, NaN) breaks any limit on it."""
        reasons: list[str] = []
        if self.max_accuracy_drop is not None:
            drop, what = acc.top1_drop, "top-1" if acc.labelled else "top-1 agreement"
            if drop is None or not drop <= self.max_accuracy_drop + _EPS:
                shown = "an unmeasurable amount" if drop is None else f"{drop:.2f} points"
                reasons.append(f"{what} dropped {shown} (> {self._flag('max_accuracy_drop')})")
        if self.min_agreement is not None:
            agree = acc.top1_agreement
            if agree is None or not agree >= self.min_agreement - _EPS:
                shown = "unmeasurable" if agree is None else f"{agree:.2f}%"
                reasons.append(f"top-1 agreement {shown} (< {self._flag('min_agreement')})")
        if self.max_rel_error is not None:
            rel = acc.rel_l2_error
            if rel is None or not rel <= self.max_rel_error:
                shown = "not finite" if rel is None or not math.isfinite(rel) else f"{rel:.4g}"
                reasons.append(f"relative L2 error {shown} (> {self._flag('max_rel_error')})")
        return "; ".join(reasons) or None

    def usage(self, acc: Accuracy) -> float:
        """The largest share of any limit ``acc`` uses (≤ 1 within budget; negative when accuracy improved;
        inf when a limit cannot be measured)."""
        parts: list[float] = []
        if self.max_accuracy_drop is not None:
            parts.append(_ratio(acc.top1_drop, self.max_accuracy_drop))
        if self.min_agreement is not None:
            agree = acc.top1_agreement
            parts.append(_ratio(None if agree is None else 100.0 - agree, 100.0 - self.min_agreement))
        if self.max_rel_error is not None:
            parts.append(_ratio(acc.rel_l2_error, self.max_rel_error))
        return max(parts) if parts else 0.0

    def held_back(self, margin: float) -> "Budget":
        """This budget with ``margin`` of each accuracy limit held back (at most 20 % of a relative-error one)."""
        keep = 1.0 - margin
        return Budget(
            max_accuracy_drop=None if self.max_accuracy_drop is None else self.max_accuracy_drop * keep,
            min_agreement=None if self.min_agreement is None else 100.0 - (100.0 - self.min_agreement) * keep,
            max_rel_error=None if self.max_rel_error is None else self.max_rel_error * max(keep, 0.8),
            source=f"{self.source}, {margin:.0%} held back")

    def loosened(self, points: float) -> "Budget":
        """This budget with ``points`` of slack on the top-1 limits (relative error unchanged)."""
        return Budget(
            max_accuracy_drop=None if self.max_accuracy_drop is None else self.max_accuracy_drop + points,
            min_agreement=None if self.min_agreement is None else max(0.0, self.min_agreement - points),
            max_rel_error=self.max_rel_error, source=f"{self.source}, loosened by {points:.2g} points")

    def to_dict(self) -> dict[str, object]:
        return {"max_accuracy_drop": self.max_accuracy_drop, "min_agreement": self.min_agreement,
                "max_rel_error": self.max_rel_error, "source": self.source}


def _ratio(v: float | None, limit: float) -> float:
    if v is None or not math.isfinite(v):
        return float("inf")
    return float(v) / limit if limit > 0 else (0.0 if v <= 0 else float("inf"))
