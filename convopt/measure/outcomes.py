"""Per-sample outcomes of a candidate against the original, and the accuracy figures (with intervals) they
give, from the per-sample pieces every executor merges in sample order (convopt.measure.shards). Pure numpy."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from convopt.measure import stats
from convopt.measure.measurement import LEVEL, Accuracy, Outcomes, drop_interval
from convopt.measure.shards import Comparison


def outcomes(original: Comparison, cand: Comparison, index: np.ndarray, *, labelled: bool) -> Outcomes:
    """Per-sample outcomes of ``cand`` from its comparison with the original's outputs and the original's own
    (``original``: the original against itself): squared error and reference norm over all outputs, agreement
    on the class-score output, right/wrong before and after when ``labelled``, a task metric's scores."""
    before = after = None
    if labelled and cand.agree is not None:
        before, after = original.correct, cand.correct
    return Outcomes(index, cand.err_sq, cand.ref_sq, cand.agree, before, after, original.scores, cand.scores)


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
