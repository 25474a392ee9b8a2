"""Shards: the samples cut into consecutive ranges of whole batches, each one run and compared on its own
(in-process or on a Ray worker), and the pieces merged in sample order.

Every figure is rebuilt from per-sample pieces concatenated in sample order (``merge``), so the answer does
not depend on where a shard ran: the same plan gives byte-identical figures in every executor. Pure numpy and
ONNX Runtime; nothing here knows about Ray.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from convopt.errors import DataError, RewriteError
from convopt.measure.data import EvalData
from convopt.measure.mapped import evict
from convopt.measure.metrics import OutputPartial, label_hits, merge_outputs, output_partials
from convopt.measure.ort import ORT_ERRORS, OrtSettings, Progress, batch_feeds, data_batch, run_model
from convopt.measure.plugin import TaskMetric

DEFAULT_SHARD_SIZE = 256
"""Samples per shard, about: small enough to spread 2 000 samples over a few workers and to re-run cheaply
when a worker dies, large enough that a task's overhead (a few ms on Ray) stays small beside its run."""


@dataclass(frozen=True)
class ShardPlan:
    """``n`` samples in ``count`` consecutive ranges, each of whole batches of ``batch`` samples (the last
    range may end in a short batch), as even as whole batches allow. The plan depends on the data and the
    model's batch only, never on the executor: the batches, and so every output, are the same everywhere."""

    n: int
    batch: int
    count: int

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        batches = math.ceil(self.n / self.batch)
        base, extra = divmod(batches, self.count)
        out, b = [], 0
        for i in range(self.count):
            nb = base + (1 if i < extra else 0)
            out.append((b * self.batch, min(self.n, (b + nb) * self.batch)))
            b += nb
        return tuple(out)


def plan_shards(n: int, batch: int, shard_size: int = DEFAULT_SHARD_SIZE) -> ShardPlan:
    """About ``shard_size`` samples per shard, in whole batches, at least one shard and one batch per shard."""
    if n < 1 or batch < 1 or shard_size < 1:
        raise ValueError(f"cannot shard {n} samples in batches of {batch} into shards of {shard_size}")
    batches = math.ceil(n / batch)
    return ShardPlan(n, batch, max(1, min(batches, math.ceil(n / shard_size))))


def shard_data(data: EvalData, start: int, stop: int) -> EvalData:
    """Samples [start, stop) of ``data`` as views (inputs, labels and sample ids), same source (a shard holds
    whole samples: ragged ones too, one array each)."""
    return data.rows(start, stop)


@dataclass(frozen=True)
class ShardRun:
    """Where and how long one shard ran: ``seconds`` running and comparing it, ``setup`` making the ORT
    sessions it needed first (a worker makes each once: per worker, not per shard), ``worker`` names the
    process, ``restarted`` when it was a worker restarted after a crash (its shard re-run)."""

    index: int
    start: int
    stop: int
    seconds: float
    worker: str = "local"
    restarted: bool = False
    setup: float = 0.0


@dataclass(frozen=True)
class ShardPartial:
    """A model against the original on one shard: per-output pieces, the class-score output ``scored``,
    label hits (top-1, top-5) per sample when judged on labels, a task metric's per-sample scores."""

    outputs: tuple[OutputPartial, ...]
    scored: int | None
    correct: np.ndarray | None
    top5: np.ndarray | None
    scores: np.ndarray | None
    run: ShardRun


def run_shard(session: ort.InferenceSession, shard: EvalData, settings: OrtSettings, what: str | None,
              progress: Progress | None = None) -> list[np.ndarray]:
    """Every output of ``session`` over the shard; ORT refusing it is a DataError for the original (``what``
    None) and a RewriteError naming ``what`` for a candidate."""
    try:
        return run_model(session, shard, settings, progress)
    except ORT_ERRORS as e:
        if what is None:
            raise DataError(f"ONNX Runtime cannot run the model on {shard.source}: {e}") from None
        raise RewriteError(f"ONNX Runtime cannot run {what}: {e}") from None


def compare_shard(ref: Sequence[np.ndarray], cand: Sequence[np.ndarray], shard: EvalData, names: Sequence[str],
                  *, labelled: bool, metric: TaskMetric | None, what: str | None, run: ShardRun) -> ShardPartial:
    """The pieces of ``cand`` against ``ref`` on one shard (``labelled``: judge top-1/top-5 on the shard's
    labels). A candidate whose outputs do not line up is a RewriteError naming ``what``."""
    try:
        outputs = output_partials(ref, cand, names, shard.n)
    except ValueError as e:
        raise RewriteError(f"{what or 'the model'} changed its outputs: {e}") from None
    scored = next((k for k, o in enumerate(outputs) if o.agree is not None), None)  # class scores per sample
    correct = top5 = None
    if labelled and scored is not None and shard.labels is not None:
        correct, top5 = label_hits(cand[scored], shard.labels)
    scores = None if metric is None else metric.score(dict(zip(names, cand)), shard.labels, shard.inputs)
    return ShardPartial(outputs, scored, correct, top5, scores, run)


def timed_run(index: int, start: int, stop: int, t0: float, worker: str = "local",
              restarted: bool = False) -> ShardRun:
    return ShardRun(index, start, stop, time.perf_counter() - t0, worker, restarted)


@dataclass(frozen=True)
class Comparison:
    """A model against the original over every shard, in sample order: ``figures`` as
    :func:`convopt.measure.metrics.compare_outputs` gives them, per-sample squared error and reference norm over
    all outputs (NaN when an output is not split by sample), agreement on the ``scored`` output, label hits and
    task-metric scores (None when not judged), and where each shard ran."""

    figures: dict[str, Any]
    err_sq: np.ndarray
    ref_sq: np.ndarray
    agree: np.ndarray | None
    correct: np.ndarray | None
    top5: np.ndarray | None
    scores: np.ndarray | None
    scored: int | None
    runs: tuple[ShardRun, ...]


def _per_sample_sums(p: ShardPartial) -> tuple[np.ndarray, np.ndarray]:
    n = p.run.stop - p.run.start
    err, norm = np.zeros(n), np.zeros(n)
    if not all(o.per_sample for o in p.outputs):
        return np.full(n, np.nan), np.full(n, np.nan)  # outputs not split by sample: no per-sample figure
    for o in p.outputs:
        err += o.diff_sq
        norm += o.ref_sq
    return err, norm


def _joined(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    return None if not parts or any(p is None for p in parts) else np.concatenate(parts)  # type: ignore[arg-type]


def merge(parts: Sequence[ShardPartial]) -> Comparison:
    """One Comparison from the pieces of every shard, given in sample order."""
    sums = [_per_sample_sums(p) for p in parts]
    scored = parts[0].scored
    agree = None if scored is None else _joined([p.outputs[scored].agree for p in parts])
    return Comparison(
        figures=merge_outputs([p.outputs for p in parts]),
        err_sq=np.concatenate([s[0] for s in sums]), ref_sq=np.concatenate([s[1] for s in sums]),
        agree=agree, correct=_joined([p.correct for p in parts]), top5=_joined([p.top5 for p in parts]),
        scores=_joined([p.scores for p in parts]), scored=scored, runs=tuple(p.run for p in parts))


Reducer = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]
"""Maps one batch's tensors (name → array, samples on axis 0, padding rows dropped; ragged data: one sample per
batch) to arrays that are summed over the batches of a shard, then over the shards."""


def add_in_order(sums: Iterable[Sequence[np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Σ of the arrays, element by element, in the order given (every executor adds in sample order); holds
    only the running total, so ``sums`` may be a generator."""
    total: tuple[np.ndarray, ...] | None = None
    for part in sums:
        arrays = tuple(np.asarray(a) for a in part)
        if total is None:
            total = arrays
            continue
        if [a.shape for a in arrays] != [t.shape for t in total]:
            raise ValueError(f"the reducer returned shapes {[a.shape for a in arrays]} after "
                             f"{[t.shape for t in total]}; return the same shapes for every batch")
        total = tuple(t + a for t, a in zip(total, arrays))
    if total is None:
        raise ValueError("nothing to reduce: no samples")
    return total


def reduce_shard(session: ort.InferenceSession, names: Sequence[str], shard: EvalData, reducer: Reducer,
                 settings: OrtSettings) -> tuple[np.ndarray, ...]:
    """Σ over the shard's batches of ``reducer`` applied to the tensors ``names`` (outputs of ``session``)."""
    return add_in_order(reducer(t) for t in _batches(session, names, shard, settings))


def _batches(session: ort.InferenceSession, names: Sequence[str], shard: EvalData,
             settings: OrtSettings) -> Iterator[dict[str, np.ndarray]]:
    batch = data_batch(session, shard, settings)  # ragged samples: one at a time
    for start in range(0, shard.n, batch):
        take = min(batch, shard.n - start)
        try:
            outs = session.run(list(names), batch_feeds(session, shard, start, batch))
        except ORT_ERRORS as e:
            raise DataError(f"ONNX Runtime cannot run the model on {shard.source}: {e}") from None
        evict(shard)  # mapped data (convopt.measure.mapped) leave memory once each batch is read
        yield {n: (o[:take] if np.ndim(o) and o.shape[0] == batch else o) for n, o in zip(names, outs)}
