"""The measuring instrument around passes: the original model's outputs are computed once; every candidate
is compared with them (accuracy) and timed interleaved with the original in one run (latency).
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from convopt.errors import DataError, InputError, ModelLoadError, RewriteError
from convopt.measure.data import EvalData
from convopt.measure.latency import LatencyStats, speedup, time_sessions
from convopt.measure.metrics import class_scores, compare_outputs, labelled_accuracy, top1_drop_ci95
from convopt.measure.ort import (
    ORT_ERRORS, OrtSettings, Progress, batch_feeds, latency_batch, make_session, run_model,
)

ACCURACY_KEYS = (
    "top1_agreement", "top5_overlap", "rel_l2_error", "cosine", "max_abs_error",
    "labelled_top1", "labelled_top5", "top1_drop", "top1_drop_ci95",
)
"""Keys of Measurement.accuracy. top1_drop: points of labelled top-1 lost vs the original when there are
labels, else 100 − top1_agreement; None when neither applies. top1_drop_ci95: half-width of its 95 %
confidence interval on these samples (metrics.top1_drop_ci95)."""

_EPS = 1e-9  # budget comparisons forgive float round-off in the last digits


@dataclass(frozen=True)
class Budget:
    """How much a pass may cost. max_accuracy_drop: points of labelled top-1 (or of top-1 agreement when there
    are no labels); min_agreement: % top-1 agreement with the original; max_rel_error: relative L2 error."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    max_rel_error: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "min_agreement", "max_rel_error"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise InputError(f"--{name.replace('_', '-')} must be a non-negative number, got {v}")
        if self.min_agreement is not None and self.min_agreement > 100:
            raise InputError(f"--min-agreement is a percentage (0..100), got {self.min_agreement}")

    @property
    def is_empty(self) -> bool:
        """True when no limit is set (every pass is kept on accuracy grounds)."""
        return self.max_accuracy_drop is None and self.min_agreement is None and self.max_rel_error is None


@dataclass(frozen=True)
class LatencyComparison:
    """Candidate and original timed in the same interleaved run; speedup = original / candidate median."""

    candidate: LatencyStats
    original: LatencyStats
    speedup: float

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.to_dict(), "original": self.original.to_dict(),
                "speedup": _finite(self.speedup)}


@dataclass(frozen=True)
class Measurement:
    """One model measured against the original on the evaluation data (keys of accuracy: ACCURACY_KEYS)."""

    desc: str
    samples: int
    data_source: str
    accuracy: dict[str, float | None]
    outputs: tuple[dict[str, Any], ...]
    latency: LatencyComparison | None
    scored_output: str | None = None
    warning: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: plain floats and lists, non-finite numbers as None."""
        return {
            "desc": self.desc,
            "samples": self.samples,
            "data": self.data_source,
            "warning": self.warning,
            "scored_output": self.scored_output,
            "accuracy": {k: _finite(v) for k, v in self.accuracy.items()},
            "outputs": [{k: (_finite(v) if isinstance(v, float) else v) for k, v in o.items()} for o in self.outputs],
            "latency": self.latency.to_dict() if self.latency is not None else None,
            "seconds": _finite(self.seconds),
        }


def _finite(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@contextmanager
def _progress(enabled: bool, label: str, total: int) -> Iterator[Progress | None]:
    """A rich progress bar on stderr when enabled and stderr is a terminal; else no callback."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

    with RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


class Evaluator:
    """Measures candidates against ``original`` on ``data`` with ``settings``.

    The original runs once here (reference outputs, and labelled accuracy when ``data`` has labels);
    raises ModelLoadError if ORT cannot load it, DataError if the data does not fit it (missing input
    arrays, ORT refusing the arrays, labels without a class-score output).
    """

    def __init__(
        self,
        original: onnx.ModelProto,
        data: EvalData,
        settings: OrtSettings,
        *,
        measure_latency: bool = True,
        progress: bool = False,
    ) -> None:
        self.data = data
        self.settings = settings
        self.measure_latency = measure_latency
        self.progress = progress
        try:
            self._session = make_session(original, settings)
        except ORT_ERRORS as e:
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {e}") from None
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        try:
            self.reference = self._run(self._session, "original model")
        except ORT_ERRORS as e:
            raise DataError(f"ONNX Runtime cannot run the model on {data.source}: {e}") from None
        self.scored_index = next((k for k, r in enumerate(self.reference) if class_scores(r) is not None), None)
        self.original_accuracy: dict[str, float] | None = None
        if data.labels is not None:
            if self.scored_index is None:
                raise DataError(
                    f"labels were given but no model output is class scores (output shapes "
                    f"{[list(r.shape) for r in self.reference]}); drop the labels to compare with the original"
                )
            self.original_accuracy = labelled_accuracy(self.reference[self.scored_index], data.labels)
        self._feeds = batch_feeds(self._session, data, 0, latency_batch(self._session, settings))
        self._baseline: Measurement | None = None

    # -- running ------------------------------------------------------------------------------------------

    def _run(self, session: ort.InferenceSession, label: str) -> list[np.ndarray]:
        with _progress(self.progress, f"evaluating {label}", self.data.n) as cb:
            return run_model(session, self.data, self.settings, cb)

    def _latency(self, candidate: ort.InferenceSession | None) -> LatencyComparison | None:
        if not self.measure_latency:
            return None
        if candidate is None:
            (orig,) = time_sessions([self._session], self._feeds, self.settings)
            return LatencyComparison(orig, orig, 1.0)
        orig, cand = time_sessions([self._session, candidate], self._feeds, self.settings)
        return LatencyComparison(cand, orig, speedup(orig, cand))

    def _measurement(self, desc: str, outputs: list[np.ndarray], latency: LatencyComparison | None,
                     t0: float) -> Measurement:
        cmp = compare_outputs(self.reference, outputs, self.output_names)
        acc: dict[str, float | None] = {k: cmp[k] for k in ("top1_agreement", "top5_overlap", "rel_l2_error",
                                                             "cosine", "max_abs_error")}
        acc["labelled_top1"] = acc["labelled_top5"] = None
        if self.original_accuracy is not None and self.scored_index is not None and self.data.labels is not None:
            lab = labelled_accuracy(outputs[self.scored_index], self.data.labels)
            acc["labelled_top1"], acc["labelled_top5"] = lab["top1"], lab["top5"]
            acc["top1_drop"] = self.original_accuracy["top1"] - lab["top1"]
            acc["top1_drop_ci95"] = top1_drop_ci95(self.reference[self.scored_index], outputs[self.scored_index],
                                                   self.data.labels)
        else:
            agree = acc["top1_agreement"]
            acc["top1_drop"] = None if agree is None else 100.0 - agree
            acc["top1_drop_ci95"] = None if agree is None or self.scored_index is None else top1_drop_ci95(
                self.reference[self.scored_index], outputs[self.scored_index])
        return Measurement(
            desc=desc,
            samples=self.data.n,
            data_source=self.data.source,
            accuracy=acc,
            outputs=tuple(cmp["outputs"]),
            latency=latency,
            scored_output=self.output_names[self.scored_index] if self.scored_index is not None else None,
            warning=self.data.warning,
            seconds=time.perf_counter() - t0,
        )

    # -- public -------------------------------------------------------------------------------------------

    def baseline(self) -> Measurement:
        """The original against itself (agreement 100, error 0), its labelled accuracy and its latency."""
        if self._baseline is None:
            t0 = time.perf_counter()
            self._baseline = self._measurement("original", self.reference, self._latency(None), t0)
        return self._baseline

    def measure(self, candidate: onnx.ModelProto, desc: str = "") -> Measurement:
        """Compare ``candidate`` with the cached reference outputs and time it interleaved with the original.
        A candidate ORT cannot load or run, or whose outputs differ in number or shape, is a RewriteError."""
        t0 = time.perf_counter()
        what = f"the rewritten model ({desc})" if desc else "the rewritten model"
        try:
            session = make_session(candidate, self.settings)
        except ORT_ERRORS as e:
            raise RewriteError(f"ONNX Runtime cannot load {what}: {e}") from None
        for kind, got, want in (("inputs", [i.name for i in session.get_inputs()], self.input_names),
                                ("outputs", [o.name for o in session.get_outputs()], self.output_names)):
            if got != want:
                raise RewriteError(f"{what} has {kind} {got}, the original has {want}")
        try:
            outputs = self._run(session, desc or "candidate")
        except ORT_ERRORS as e:
            raise RewriteError(f"ONNX Runtime cannot run {what}: {e}") from None
        try:
            return self._measurement(desc, outputs, self._latency(session), t0)
        except ValueError as e:
            raise RewriteError(f"{what} changed its outputs: {e}") from None

    def validate_budget(self, budget: Budget) -> None:
        """InputError if the budget asks for something these data cannot measure (agreement without any
        class-score output)."""
        needs_classes = budget.min_agreement is not None or (
            budget.max_accuracy_drop is not None and self.data.labels is None)
        if needs_classes and self.scored_index is None:
            raise InputError(
                "--max-accuracy-drop (without labels) and --min-agreement need a class-score output, but the "
                f"model's outputs have shapes {[list(r.shape) for r in self.reference]}; use --max-rel-error"
            )

    def check(self, m: Measurement, budget: Budget) -> str | None:
        """A human reason when ``m`` breaks ``budget`` (all broken limits, joined by '; '), else None.
        A metric that could not be computed (None, NaN) breaks any limit on it."""
        reasons: list[str] = []
        acc = m.accuracy
        if budget.max_accuracy_drop is not None:
            drop = acc.get("top1_drop")
            what = "top-1" if acc.get("labelled_top1") is not None else "top-1 agreement"
            if drop is None or not drop <= budget.max_accuracy_drop + _EPS:
                shown = "an unmeasurable amount" if drop is None else f"{drop:.2f} points"
                reasons.append(f"{what} dropped {shown} (> --max-accuracy-drop {float(budget.max_accuracy_drop)})")
        if budget.min_agreement is not None:
            agree = acc.get("top1_agreement")
            if agree is None or not agree >= budget.min_agreement - _EPS:
                shown = "unmeasurable" if agree is None else f"{agree:.2f}%"
                reasons.append(f"top-1 agreement {shown} (< --min-agreement {float(budget.min_agreement)})")
        if budget.max_rel_error is not None:
            rel = acc.get("rel_l2_error")
            if rel is None or not rel <= budget.max_rel_error:
                shown = "not finite" if rel is None or not math.isfinite(rel) else f"{rel:.4g}"
                reasons.append(f"relative L2 error {shown} (> --max-rel-error {float(budget.max_rel_error)})")
        return "; ".join(reasons) or None
