"""Per-sample outcomes of a candidate against the original, and the accuracy figures (with intervals) they
give. Pure numpy: the same functions run in-process or on a worker that holds a shard of the data."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from convopt.measure import stats
from convopt.measure.measurement import LEVEL, Accuracy, Outcomes, drop_interval
from convopt.measure.metrics import class_scores


def _per_sample(arr: np.ndarray, n: int) -> np.ndarray | None:
    """``arr`` as (n, rest) when its rows are the samples in order (axis 0, or n equal runs of rows)."""
    a = np.asarray(arr)
    if a.ndim == 0 or n == 0 or a.size % n or a.shape[0] % n:
        return None
    return a.reshape(n, -1)


def outcomes(ref: Sequence[np.ndarray], cand: Sequence[np.ndarray], index: np.ndarray,
             scored: int | None, labels: np.ndarray | None) -> Outcomes:
    """Squared error and reference norm per sample over all outputs; agreement on the class-score output
    ``scored``; right/wrong before and after with ``labels``."""
    n = int(index.size)
    err, norm = np.zeros(n), np.zeros(n)
    for r, c in zip(ref, cand):
        rs, cs = _per_sample(r, n), _per_sample(c, n)
        if rs is None or cs is None:
            err[:], norm[:] = np.nan, np.nan  # outputs not split by sample: no per-sample figure
            break
        d = cs.astype(np.float64) - rs.astype(np.float64)
        err += np.einsum("ij,ij->i", d, d)
        norm += np.einsum("ij,ij->i", rs.astype(np.float64), rs.astype(np.float64))
    agree = before = after = None
    if scored is not None:
        rsc, csc = class_scores(ref[scored]), class_scores(cand[scored])
        if rsc is not None and csc is not None:
            rtop, ctop = np.argmax(rsc, axis=1), np.argmax(csc, axis=1)
            agree = rtop == ctop
            if labels is not None:
                before, after = rtop == labels, ctop == labels
    return Outcomes(index, err, norm, agree, before, after)


def with_intervals(acc: Accuracy, o: Outcomes) -> Accuracy:
    """``acc`` with its 95 % intervals from the per-sample outcomes."""
    rel = None
    if np.all(np.isfinite(o.err_sq)):
        rel = stats.rel_error_interval(o.err_sq, o.ref_sq, LEVEL)
    acc = replace(acc, top1_drop_interval=drop_interval(o), rel_l2_error_interval=rel)
    if o.score_before is not None and o.score_after is not None:
        d = o.score_before - o.score_after
        acc = replace(acc, metric_score=float(np.mean(o.score_after)), metric_drop=float(np.mean(d)),
                      metric_drop_interval=stats.mean_interval(d, LEVEL))
    return acc
