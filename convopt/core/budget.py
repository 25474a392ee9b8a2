"""The accuracy budget and all arithmetic on it, in one place.

A decision keeps a rewrite only when the one-sided upper confidence bound of each loss the budget limits is
within it (``certify``); the bounds come from the per-sample outcomes of the decision data (see
convopt.measure.stats). Point estimates (``check``, ``usage``) only rank candidates, never keep one. Every
message names the bound, the threshold applied and where the threshold comes from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from convopt.errors import InputError
from convopt.measure import stats
from convopt.measure.measurement import Accuracy, Outcomes

_EPS = 1e-9  # comparisons forgive float round-off in the last digits
LIMITS = ("max_accuracy_drop", "min_agreement", "max_rel_error", "max_metric_drop")


@dataclass(frozen=True)
class Certificate:
    """A decision on one model: ``ok`` when every bound is within its limit; ``bounds``: the upper bound of each
    limited loss (top-1 drop and disagreement in points, relative error, metric drop in its units)."""

    ok: bool
    reason: str | None
    bounds: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    confidence: float = 0.95


@dataclass(frozen=True)
class Budget:
    """How much a rewrite may cost. max_accuracy_drop: points of labelled top-1 (or of top-1 agreement when
    there are no labels); min_agreement: % top-1 agreement with the original; max_rel_error: relative L2 error
    of the outputs; max_metric_drop: a task metric's mean score, in its own units. ``confidence``: of every
    decision's bound. ``source`` says where the limits come from (shown in every message)."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    max_rel_error: float | None = None
    max_metric_drop: float | None = None
    confidence: float = 0.95
    source: str = "given"

    def __post_init__(self) -> None:
        for name in LIMITS:
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise InputError(f"--{name.replace('_', '-')} must be a non-negative number, got {v}")
        if self.min_agreement is not None and self.min_agreement > 100:
            raise InputError(f"--min-agreement is a percentage (0..100), got {self.min_agreement}")
        if not 0.5 <= self.confidence < 1.0:
            raise InputError(f"--confidence must be in [0.5, 1), got {self.confidence}")

    @property
    def is_empty(self) -> bool:
        """True when no limit is set."""
        return all(getattr(self, n) is None for n in LIMITS)

    def defaulted(self, scored: bool) -> "Budget":
        """This budget, or when it sets no limit the default: 1 point of top-1 (labelled, else agreement) for a
        model with class scores, else 0.05 relative error."""
        if not self.is_empty:
            return self
        if scored:
            return Budget(max_accuracy_drop=1.0, confidence=self.confidence, source="default")
        return Budget(max_rel_error=0.05, confidence=self.confidence, source="default")

    @classmethod
    def default(cls, scored: bool) -> "Budget":
        return cls().defaulted(scored)

    def validate(self, scored: bool, labelled: bool, metric: bool = False) -> None:
        """InputError when these data cannot measure a limit."""
        needs_classes = self.min_agreement is not None or (self.max_accuracy_drop is not None and not labelled)
        if needs_classes and not scored:
            raise InputError("--max-accuracy-drop (without labels) and --min-agreement need a class-score output, "
                             "but the model has none; use --max-rel-error or a --metric")
        if self.max_metric_drop is not None and not metric:
            raise InputError("--max-metric-drop needs --metric")

    def flag(self, name: str) -> str:
        """'--max-accuracy-drop 1.0' (and where it comes from, when not given by the user)."""
        f = f"--{name.replace('_', '-')} {float(getattr(self, name))}"
        return f if self.source == "given" else f"{f} ({self.source})"

    # -- point estimates: ranking only ----------------------------------------------------------------------

    def check(self, acc: Accuracy) -> str | None:
        """Which limits the point estimates in ``acc`` break, else None (ranks candidates; never keeps one)."""
        reasons: list[str] = []
        for name, value, _ in self._points(acc):
            if value is None or not math.isfinite(value) or value > self._loss_limit(name) + _EPS:
                reasons.append(_point_reason(name, value, acc, self.flag(name)))
        return "; ".join(reasons) or None

    def usage(self, acc: Accuracy) -> float:
        """The largest share of any limit the point estimates use (≤ 1 within; inf when unmeasurable)."""
        parts = [_ratio(v, self._loss_limit(n)) for n, v, _ in self._points(acc)]
        return max(parts) if parts else 0.0

    def _points(self, acc: Accuracy) -> list[tuple[str, float | None, str]]:
        out = []
        what = "top-1 drop" if acc.labelled else "top-1 disagreement"
        if self.max_accuracy_drop is not None:
            out.append(("max_accuracy_drop", acc.top1_drop, f"{what} (points)"))
        if self.min_agreement is not None:
            out.append(("min_agreement", None if acc.top1_agreement is None else 100.0 - acc.top1_agreement,
                        "top-1 disagreement (points)"))
        if self.max_rel_error is not None:
            out.append(("max_rel_error", acc.rel_l2_error, "relative L2 error"))
        if self.max_metric_drop is not None:
            out.append(("max_metric_drop", acc.metric_drop, f"{acc.metric or 'metric'} drop"))
        return out

    def _loss_limit(self, name: str) -> float:
        """The limit as a bound on a loss (min_agreement → allowed disagreement)."""
        v = float(getattr(self, name))
        return 100.0 - v if name == "min_agreement" else v

    # -- confidence bounds: every decision ------------------------------------------------------------------

    def certify(self, o: Outcomes | None, looks: int = 1) -> Certificate:
        """Keep-or-not on the per-sample outcomes of the decision data: every limited loss's upper bound at
        ``confidence`` (split over ``looks`` decisions, Bonferroni) must be within its limit."""
        c = 1.0 - (1.0 - self.confidence) / max(looks, 1)
        if o is None or o.n == 0:
            return Certificate(False, "no per-sample outcomes to bound the loss on", {}, 0, c)
        bounds, reasons = {}, []
        for name in LIMITS:
            if getattr(self, name) is None:
                continue
            bound, what = _bound(name, o, c)
            bounds[name] = bound
            if not bound <= self._loss_limit(name) + _EPS:
                shown = "cannot be bounded" if not math.isfinite(bound) else f"≤ {bound:.3g}"
                reasons.append(f"{what} {shown} at {c:.1%} on {o.n} samples{_flips(o, name)}, over "
                               f"{self.flag(name)}")
        return Certificate(not reasons, "; ".join(reasons) or None, bounds, o.n, c)

    def feasibility(self, n: int, labelled: bool, looks: int = 1) -> str | None:
        """Why ``n`` decision samples cannot certify the top-1 limits even for a model that flips nothing
        (with the number of samples that could), else None."""
        c = 1.0 - (1.0 - self.confidence) / max(looks, 1)
        for name in ("max_accuracy_drop", "min_agreement"):
            if getattr(self, name) is None:
                continue
            limit = self._loss_limit(name) / 100.0
            best = 100.0 * (stats.paired_drop_upper(0, 0, n, c) if labelled and name == "max_accuracy_drop"
                            else stats.rate_upper(0, n, c))
            if best > limit * 100.0 + _EPS:
                need = stats.samples_for_zero_flips(limit, c) if limit > 0 else None
                return (f"{n} decision samples cannot certify {self.flag(name)} at {c:.0%} even for a rewrite that "
                        f"flips no prediction (the best bound they give is {best:.2f} points)"
                        + (f"; it takes about {need} samples" if need else ""))
        return None

    def to_dict(self) -> dict[str, object]:
        return {**{n: getattr(self, n) for n in LIMITS}, "confidence": self.confidence, "source": self.source}


def _point_reason(name: str, v: float | None, acc: Accuracy, flag: str) -> str:
    known = v is not None and math.isfinite(v)
    if name == "max_accuracy_drop":
        what = "top-1" if acc.labelled else "top-1 agreement"
        return f"{what} dropped {f'{v:.2f} points' if known else 'an unmeasurable amount'} (> {flag})"
    if name == "min_agreement":
        return f"top-1 agreement {f'{100.0 - v:.2f}%' if known else 'unmeasurable'} (< {flag})"  # type: ignore[operator]
    if name == "max_rel_error":
        return f"relative L2 error {f'{v:.4g}' if known else 'not finite'} (> {flag})"
    return f"{acc.metric or 'the metric'} dropped {f'{v:.4g}' if known else 'an unmeasurable amount'} (> {flag})"


def _flips(o: Outcomes, name: str) -> str:
    if name == "max_accuracy_drop" and o.flips is not None:
        return f" ({o.flips[0]} right→wrong, {o.flips[1]} wrong→right)"
    if name in ("max_accuracy_drop", "min_agreement") and o.disagreements is not None:
        return f" ({o.disagreements} predictions changed)"
    return ""


def _bound(name: str, o: Outcomes, c: float) -> tuple[float, str]:
    """The upper bound of the loss ``name`` limits, and its name."""
    if name == "max_accuracy_drop" and o.flips is not None:
        return 100.0 * stats.paired_drop_upper(*o.flips, o.n, c), "top-1 drop (points)"
    if name in ("max_accuracy_drop", "min_agreement"):
        k = o.disagreements
        return (math.inf if k is None else 100.0 * stats.rate_upper(k, o.n, c)), "top-1 disagreement (points)"
    if name == "max_rel_error":
        if not np.all(np.isfinite(o.err_sq)):
            return math.inf, "relative L2 error"
        return stats.rel_error_upper(o.err_sq, o.ref_sq, c), "relative L2 error"
    if o.score_before is None or o.score_after is None:
        return math.inf, "metric drop"
    b, a = o.score_before, o.score_after
    if np.all(np.isin(b, (0.0, 1.0))) and np.all(np.isin(a, (0.0, 1.0))):  # pass/fail metric: paired flips
        n10, n01 = int(np.sum((b == 1) & (a == 0))), int(np.sum((b == 0) & (a == 1)))
        return stats.paired_drop_upper(n10, n01, o.n, c), "metric drop"
    return stats.mean_upper(b - a, c), "metric drop"


def _ratio(v: float | None, limit: float) -> float:
    if v is None or not math.isfinite(v):
        return float("inf")
    return float(v) / limit if limit > 0 else (0.0 if v <= 0 else float("inf"))
