"""Output-fidelity and accuracy metrics, pure numpy.

rel_l2 = ‖cand − ref‖₂ / ‖ref‖₂ over all elements; cosine = ⟨cand, ref⟩ / (‖cand‖‖ref‖);
top-1 agreement = % of samples whose argmax matches; top-5 overlap = mean |top5(ref) ∩ top5(cand)| / 5, in %.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convopt.errors import DataError

TOP_K = 5


def class_scores(arr: np.ndarray) -> np.ndarray | None:
    """(N, C) view of a classifier-like output, else None.

    Classifier-like: floating point, and each sample's output has exactly one dim of size ≥ 2 once its
    size-1 dims are squeezed (so (N, 1000), (N, 1000, 1, 1) and (N, 1, 10) qualify; (N, 3, 8, 8) and (N,)
    do not).
    """
    a = np.asarray(arr)
    if a.ndim < 2 or not np.issubdtype(a.dtype, np.floating):
        return None
    per_sample = [d for d in a.shape[1:] if d != 1]
    if len(per_sample) != 1 or per_sample[0] < 2:
        return None
    return a.reshape(a.shape[0], per_sample[0])


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class indices by decreasing score; ties keep the lower index first (stable)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _rel_l2(diff_sq: float, ref_sq: float) -> float:
    if ref_sq == 0.0:
        return 0.0 if diff_sq == 0.0 else float("inf")
    return float(np.sqrt(diff_sq / ref_sq))


def _cosine(dot: float, a_sq: float, b_sq: float) -> float:
    if a_sq == 0.0 and b_sq == 0.0:
        return 1.0
    if a_sq == 0.0 or b_sq == 0.0:
        return 0.0
    return float(dot / np.sqrt(a_sq * b_sq))


def _agreement(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement %, top-5 overlap %) of two (N, C) score arrays."""
    k = min(TOP_K, ref.shape[1])
    agree = float(np.mean(np.argmax(ref, axis=1) == np.argmax(cand, axis=1)) * 100.0)
    rk, ck = top_k(ref, k), top_k(cand, k)
    shared = (rk[:, :, None] == ck[:, None, :]).any(axis=2).sum(axis=1)
    return agree, float(np.mean(shared / k) * 100.0)


def compare_outputs(
    ref: Sequence[np.ndarray], cand: Sequence[np.ndarray], names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Compare candidate outputs with reference outputs (same order, axis 0 = samples).

    Returns ``{"outputs": [per-output dict], "rel_l2_error", "cosine", "max_abs_error", "top1_agreement",
    "top5_overlap"}``. Per output: name, shape, the three error metrics, and for classifier-like outputs
    (see :func:`class_scores`) classes, top1_agreement and top5_overlap (else None). Overall error metrics
    treat all outputs as one vector; overall agreement/overlap are the minimum over classifier-like outputs
    (None if there are none). Raises ValueError if the outputs do not line up.
    """
    if len(ref) != len(cand):
        raise ValueError(f"{len(ref)} reference outputs but {len(cand)} candidate outputs")
    per: list[dict[str, Any]] = []
    tot_diff = tot_ref = tot_cand = tot_dot = 0.0
    for k, (r, c) in enumerate(zip(ref, cand)):
        r = np.asarray(r)
        c = np.asarray(c)
        if r.shape != c.shape:
            raise ValueError(f"output {k}: reference shape {r.shape} but candidate shape {c.shape}")
        r64, c64 = r.astype(np.float64).ravel(), c.astype(np.float64).ravel()
        d = c64 - r64
        diff_sq, ref_sq, cand_sq, dot = float(d @ d), float(r64 @ r64), float(c64 @ c64), float(r64 @ c64)
        mab = float(np.max(np.abs(d))) if d.size else 0.0
        entry: dict[str, Any] = {
            "name": names[k] if names is not None else str(k),
            "shape": list(r.shape),
            "rel_l2_error": _rel_l2(diff_sq, ref_sq),
            "cosine": _cosine(dot, ref_sq, cand_sq),
            "max_abs_error": mab,
            "classes": None,
            "top1_agreement": None,
            "top5_overlap": None,
        }
        rs, cs = class_scores(r), class_scores(c)
        if rs is not None and cs is not None:
            entry["classes"] = int(rs.shape[1])
            entry["top1_agreement"], entry["top5_overlap"] = _agreement(rs, cs)
        per.append(entry)
        tot_diff += diff_sq
        tot_ref += ref_sq
        tot_cand += cand_sq
        tot_dot += dot
    agreements = [e["top1_agreement"] for e in per if e["top1_agreement"] is not None]
    overlaps = [e["top5_overlap"] for e in per if e["top5_overlap"] is not None]
    return {
        "outputs": per,
        "rel_l2_error": _rel_l2(tot_diff, tot_ref),
        "cosine": _cosine(tot_dot, tot_ref, tot_cand),
        "max_abs_error": float(np.max([e["max_abs_error"] for e in per])) if per else 0.0,
        "top1_agreement": min(agreements) if agreements else None,
        "top5_overlap": min(overlaps) if overlaps else None,
    }


def labelled_accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{"top1": %, "top5": %} of class scores (N, C) (or any classifier-like shape) against integer labels (N,)."""
    s = class_scores(scores)
    if s is None:
        raise DataError(
            f"labels were given but the model output has shape {tuple(np.shape(scores))}, which is not class "
            "scores (samples, classes); drop the labels to compare outputs with the original instead"
        )
    lab = np.asarray(labels)
    if lab.shape != (s.shape[0],):
        raise DataError(f"{s.shape[0]} outputs but labels have shape {lab.shape}; give one label per sample")
    if lab.size and (lab.min() < 0 or lab.max() >= s.shape[1]):
        raise DataError(
            f"labels range {int(lab.min())}..{int(lab.max())} but the model scores {s.shape[1]} classes "
            f"(0..{s.shape[1] - 1}); check that the labels belong to this model"
        )
    k = min(TOP_K, s.shape[1])
    top1 = float(np.mean(np.argmax(s, axis=1) == lab) * 100.0)
    top5 = float(np.mean((top_k(s, k) == lab[:, None]).any(axis=1)) * 100.0)
    return {"top1": top1, "top5": top5}


def top1_drop_ci95(ref_scores: np.ndarray, cand_scores: np.ndarray, labels: np.ndarray | None = None) -> float | None:
    """Half-width, in points, of the 95 % confidence interval of the top-1 drop measured on these samples.

    With labels the drop is paired: (n₁₀ − n₀₁) / n, where n₁₀ samples were right before and wrong after and
    n₀₁ the reverse; its standard error is √(n₁₀ + n₀₁ − (n₁₀ − n₀₁)²/n) / n. Only flipped samples carry
    information, so a rewrite that changes many predictions has a wide interval even when the drop is near 0.
    Without labels the drop is 100 − agreement, a proportion p of n: standard error √(p(1 − p)/n).
    None when the outputs are not class scores (or when there are no samples)."""
    r, c = class_scores(ref_scores), class_scores(cand_scores)
    if r is None or c is None or r.shape[0] == 0:
        return None
    n = r.shape[0]
    if labels is None:
        p = float(np.mean(np.argmax(r, axis=1) != np.argmax(c, axis=1)))
        se = np.sqrt(p * (1.0 - p) / n)
    else:
        lab = np.asarray(labels)
        before, after = np.argmax(r, axis=1) == lab, np.argmax(c, axis=1) == lab
        n10, n01 = float(np.sum(before & ~after)), float(np.sum(~before & after))
        se = np.sqrt(max(n10 + n01 - (n10 - n01) ** 2 / n, 0.0)) / n
    return float(1.96 * se * 100.0)
