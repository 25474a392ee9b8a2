"""The measuring instrument around passes: the original model's outputs are computed once; every candidate
is compared with them (accuracy) and timed interleaved with the original in one run (latency).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort

from convopt.errors import DataError, ModelLoadError, RewriteError
from convopt.handoff import Handoff
from convopt.measure.data import EvalData
from convopt.measure.latency import speedup, time_sessions
from convopt.measure import stats
from convopt.measure.executor import Candidate, EvaluationSpec, Executor, LocalExecutor
from convopt.measure.measurement import ACCURACY_KEYS, Accuracy, LatencyComparison, Measurement
from convopt.measure.metrics import hit_rate
from convopt.measure.outcomes import outcomes, with_intervals
from convopt.measure.plugin import TaskMetric
from convopt.measure.ort import (ORT_ERRORS, OrtSettings, Progress, latency_feeds, make_session, release_shared_arena,
                                 session_batch)
from convopt.measure.shards import Comparison


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
    """Measures candidates against ``original`` on ``data`` (one data role: ``role``) with ``settings``.

    The original runs once (reference outputs, kept where the executor runs the shards; labelled accuracy
    when ``data`` has labels; the task metric's scores when ``metric`` is given, called once per shard);
    raises ModelLoadError if ORT cannot load it, DataError if the data does not fit it (missing input arrays,
    ORT refusing the arrays, labels without a class-score output, or labels on which the original scores no
    better than chance).

    ``executor`` runs the models over the data and compares them (default: in this process, shard after
    shard; a RayExecutor runs the shards on a cluster and keeps the original's outputs there). Latency is
    always timed here, on this machine, whatever the executor.

    Memory: the original's outputs come from a session without memory arena, dropped once they are computed;
    the session that times the original (ORT's defaults, as deployed) is made at the first timing and kept.
    ``timing_from``: another evaluator of the same model and settings whose timing session this one shares
    (the select and report evaluators time the same original: one session, not two).
    """

    def __init__(
        self,
        original: onnx.ModelProto,
        data: EvalData,
        settings: OrtSettings,
        *,
        measure_latency: bool = True,
        progress: bool = False,
        metric: TaskMetric | None = None,
        role: str = "evaluation",
        executor: Executor | None = None,
        timing_from: Evaluator | None = None,
    ) -> None:
        self.data, self.settings, self.role = data, settings, role
        self.measure_latency, self.progress, self.metric = measure_latency, progress, metric
        self._timing = _OriginalTiming(original, settings) if timing_from is None else timing_from._timing
        if self._timing.model is not original or self._timing.settings != settings:
            raise ValueError("timing_from must be an evaluator of the same model with the same settings")
        try:
            session = make_session(original, settings, arena=False)  # the original's outputs only
        except ORT_ERRORS as e:
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {e}") from None
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.executor: Executor = executor if executor is not None else LocalExecutor()
        self._evaluation = self.executor.evaluation(EvaluationSpec(
            original, data, settings, session_batch(session, settings), tuple(self.output_names),
            labelled=data.labels is not None and metric is None, metric=metric, role=role), session)
        self._feeds = latency_feeds(session, data, settings)  # ragged data: its timing sample
        del session  # the evaluation drops it after the reference run
        self._original = self._compare(None, "original model")
        self.scored_index = self._original.scored
        self.original_accuracy: dict[str, float] | None = None
        if data.labels is not None and metric is None:
            self.original_accuracy = self._check_labels()
        self.reference_scores = self._original.scores
        self._baseline: Measurement | None = None

    @property
    def reference(self) -> list[np.ndarray]:
        """The original's outputs over the data (axis 0 = samples), fetched from where the executor keeps them."""
        return self._evaluation.reference_outputs()

    def _check_labels(self) -> dict[str, float]:
        """The original's labelled accuracy; DataError when the labels cannot be judged on this model."""
        ref = self._original
        if self.scored_index is None or ref.correct is None or ref.top5 is None:
            raise DataError(
                f"labels were given but no model output is class scores (output shapes "
                f"{[o['shape'] for o in ref.figures['outputs']]}); drop the labels to compare with the original")
        acc = {"top1": hit_rate(ref.correct), "top5": hit_rate(ref.top5)}
        classes, n = ref.figures["outputs"][self.scored_index]["classes"], self.data.n
        k = int(round(acc["top1"] * n / 100.0))
        low = stats.rate_interval(k, n, 0.95)[0]
        if low <= 1.0 / classes:
            raise DataError(
                f"the original model scores {acc['top1']:.1f} % top-1 on these labels ({n} samples, "
                f"{classes} classes: no better than chance); check --preprocess or the labels")
        return acc

    # -- running ------------------------------------------------------------------------------------------

    def _compare(self, candidate: Candidate | None, label: str) -> Comparison:
        with _progress(self.progress, f"evaluating {label}", self.data.n) as cb:
            return self._evaluation.compare(candidate, cb)

    def _latency(self, candidate: ort.InferenceSession | None) -> LatencyComparison | None:
        if not self.measure_latency:
            return None
        if candidate is None:
            (orig,) = time_sessions([self._timing.session()], self._feeds, self.settings)
            return LatencyComparison(orig, orig, 1.0)
        orig, cand = time_sessions([self._timing.session(), candidate], self._feeds, self.settings)
        return LatencyComparison(cand, orig, speedup(orig, cand))

    def _measurement(self, desc: str, cmp: Comparison, latency: LatencyComparison | None,
                     t0: float) -> Measurement:
        fig = cmp.figures
        acc = Accuracy(**{k: fig[k] for k in ("top1_agreement", "top5_overlap", "rel_l2_error", "cosine",
                                              "max_abs_error")})
        if self.metric is not None:
            acc = replace(acc, metric=self.metric.name)
        if self.original_accuracy is not None and cmp.correct is not None and cmp.top5 is not None:
            top1 = hit_rate(cmp.correct)
            acc = replace(acc, labelled_top1=top1, labelled_top5=hit_rate(cmp.top5),
                          top1_drop=self.original_accuracy["top1"] - top1)
        elif acc.top1_agreement is not None:
            acc = replace(acc, top1_drop=100.0 - acc.top1_agreement)
        o = outcomes(self._original, cmp, self.data.index, labelled=self.original_accuracy is not None)
        return Measurement(
            desc=desc, samples=self.data.n, data_source=self.data.source, accuracy=with_intervals(acc, o),
            outputs=tuple(fig["outputs"]), latency=latency,
            scored_output=self.output_names[self.scored_index] if self.scored_index is not None else None,
            warning=self.data.warning, seconds=time.perf_counter() - t0, outcomes=o, role=self.role)

    # -- public -------------------------------------------------------------------------------------------

    def baseline(self, latency: LatencyComparison | None = None) -> Measurement:
        """The original against itself (agreement 100, error 0), its labelled accuracy and its latency:
        ``latency`` when the original was timed already (``time_models``'s first figure), else timed here."""
        if self._baseline is None:
            t0 = time.perf_counter()
            timing = latency if latency is not None else self._latency(None)
            self._baseline = self._measurement("original", self._original, timing, t0)
        return self._baseline

    def session(self, candidate: onnx.ModelProto, desc: str = "", *, timed: bool = True) -> ort.InferenceSession:
        """An ORT session of a rewritten model with the original's inputs and outputs (else RewriteError);
        ``timed`` False: for its outputs only (no memory arena)."""
        what = f"the rewritten model ({desc})" if desc else "the rewritten model"
        try:
            session = make_session(candidate, self.settings, arena=timed)
        except ORT_ERRORS as e:
            raise RewriteError(f"ONNX Runtime cannot load {what}: {e}") from None
        for kind, got, want in (("inputs", [i.name for i in session.get_inputs()], self.input_names),
                                ("outputs", [o.name for o in session.get_outputs()], self.output_names)):
            if got != want:
                raise RewriteError(f"{what} has {kind} {got}, the original has {want}")
        return session

    def measure(self, candidate: onnx.ModelProto | Handoff, desc: str = "", *, timed: bool = True) -> Measurement:
        """Compare ``candidate`` with the cached reference outputs and (``timed``) time it interleaved with the
        original. A Handoff of it is let go once its session exists, unless the executor ships the proto
        (memory: the model is not held beside its session). A candidate ORT cannot load or run, or whose
        outputs differ in number or shape, is a RewriteError."""
        t0 = time.perf_counter()
        timed = timed and self.measure_latency
        model = candidate.take() if isinstance(candidate, Handoff) else candidate
        session = self.session(model, desc, timed=timed)
        let_go = isinstance(candidate, Handoff) and not self._evaluation.needs_model
        shipped = None if let_go else model
        del model  # a let-go model's last reference
        what = f"the rewritten model ({desc})" if desc else "the rewritten model"
        cmp = self._compare(Candidate(shipped, session, what), desc or "candidate")
        if timed:
            release_shared_arena()  # the comparison's activations (a batch of samples) go before the timing
        return self._measurement(desc, cmp, self._latency(session) if timed else None, t0)

    def release_timing(self) -> None:
        """Drop the session that times the original (shared with ``timing_from`` evaluators) until the next
        timing makes it again, and give the shared arena's free regions back: a caller between timings (auto
        mode's refits) holds one model's worth and one run's activations less."""
        self._timing.release()
        release_shared_arena()

    def time_models(self, candidates: list[onnx.ModelProto]) -> tuple[LatencyComparison, list[LatencyComparison]]:
        """The original and every candidate timed in ONE interleaved run: (the original against itself, each
        candidate against the original), so every figure of a table shares one baseline."""
        sessions = [self._timing.session()] + [self.session(m) for m in candidates]
        times = time_sessions(sessions, self._feeds, self.settings)
        orig = times[0]
        return LatencyComparison(orig, orig, 1.0), [LatencyComparison(t, orig, speedup(orig, t)) for t in times[1:]]


class _OriginalTiming:
    """The session that times the original (ORT's defaults: what the user deploys), made at first use and
    shared by the evaluators of one model and settings."""

    def __init__(self, model: onnx.ModelProto, settings: OrtSettings) -> None:
        self.model, self.settings = model, settings
        self._session: ort.InferenceSession | None = None

    def release(self) -> None:
        self._session = None

    def session(self) -> ort.InferenceSession:
        if self._session is None:
            try:
                self._session = make_session(self.model, self.settings)
            except ORT_ERRORS as e:
                raise ModelLoadError(f"ONNX Runtime cannot load the model: {e}") from None
        return self._session


__all__ = ["ACCURACY_KEYS", "Accuracy", "Evaluator", "LatencyComparison", "Measurement"]
