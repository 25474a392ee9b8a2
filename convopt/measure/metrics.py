"""Output-fidelity and accuracy metrics, pure numpy.

rel_l2 = ‖cand − ref‖₂ / ‖ref‖₂ over all elements; cosine = ⟨cand, ref⟩ / (‖cand‖‖ref‖);
top-1 agreement = % of samples whose argmax matches; top-5 overlap = mean |top5(ref) ∩ top5(cand)| / 5, in %.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convopt.errors import DataError
from convopt.measure.samples import is_ragged, items

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


@dataclass(frozen=True)
class OutputPartial:
    """One output of a candidate compared with the reference on one shard of the samples: the additive pieces
    behind :func:`compare_outputs`. ``diff_sq``, ``ref_sq``, ``cand_sq`` and ``dot`` are per sample, shape
    (n,), when ``per_sample`` (the output's rows are the samples: axis 0, or n equal runs of rows, or ragged
    per-sample outputs), else shape (1,): the shard's totals. ``agree`` (same top-1 class at every row of the
    sample) and ``shared`` (how many of the top-k classes are shared, k = min(5, classes), averaged over the
    sample's rows) are per sample, None when the output is not class scores (see :func:`class_scores`) or its
    rows cannot be told apart by sample. ``shape``: the output's shape over the shard; for ragged outputs
    the rows of every sample added up and the other dims their largest."""

    name: str
    shape: tuple[int, ...]
    per_sample: bool
    diff_sq: np.ndarray
    ref_sq: np.ndarray
    cand_sq: np.ndarray
    dot: np.ndarray
    max_abs: float
    classes: int | None = None
    agree: np.ndarray | None = None
    shared: np.ndarray | None = None


def sample_rows(arr: np.ndarray, n: int) -> np.ndarray | None:
    """``arr`` as (n, rest) when its rows are the n samples in order (axis 0, or n equal runs of rows)."""
    a = np.asarray(arr)
    if a.ndim == 0 or n == 0 or a.size % n or a.shape[0] % n:
        return None
    return a.reshape(n, -1)


def _row_agreement(rs: np.ndarray, cs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(same top-1 per row, top-k classes shared per row) of two (rows, C) class-score arrays."""
    k = min(TOP_K, rs.shape[1])
    rk, ck = top_k(rs, k), top_k(cs, k)
    shared = (rk[:, :, None] == ck[:, None, :]).any(axis=2).sum(axis=1)
    return np.argmax(rs, axis=1) == np.argmax(cs, axis=1), shared


def _agreement(r: np.ndarray, c: np.ndarray, n: int
               ) -> tuple[int | None, np.ndarray | None, np.ndarray | None]:
    """(classes, same top-1 per sample, top-k classes shared per sample) of two class-score outputs over n
    samples, else Nones. A sample with several rows (an OCR model's [T, 1, C] per sample: T positions) agrees
    when every one of its rows does, and shares the mean over its rows."""
    rs, cs = class_scores(r), class_scores(c)
    if rs is None or cs is None:
        return None, None, None
    agree, shared = _row_agreement(rs, cs)
    rows = rs.shape[0]
    if rows == n:
        return int(rs.shape[1]), agree, shared
    if n == 0 or rows % n:
        return int(rs.shape[1]), None, None  # rows that are not runs of the samples: no per-sample agreement
    per = rows // n
    return int(rs.shape[1]), agree.reshape(n, per).all(axis=1), shared.reshape(n, per).mean(axis=1)


def output_partial(r: np.ndarray, c: np.ndarray, n: int | None, name: str, index: int = 0) -> OutputPartial:
    """The pieces of output ``index`` (called ``name``) compared on ``n`` samples (None: the rows of axis 0 are
    the samples). Sums are float64. Raises ValueError when the shapes differ."""
    if is_ragged(r) or is_ragged(c):
        return _ragged_partial(r, c, name, index)
    r, c = np.asarray(r), np.asarray(c)
    if r.shape != c.shape:
        raise ValueError(f"output {index}: reference shape {r.shape} but candidate shape {c.shape}")
    rows = (r.shape[0] if r.ndim else 0) if n is None else n
    rs, cs = sample_rows(r, rows), sample_rows(c, rows)
    per_sample = rs is not None and cs is not None
    if not per_sample:
        rs, cs = r.reshape(1, -1), c.reshape(1, -1)
    r64, c64 = rs.astype(np.float64), cs.astype(np.float64)  # type: ignore[union-attr]
    d = c64 - r64
    diff_sq, ref_sq, cand_sq, dot = (np.einsum("ij,ij->i", a, b) for a, b in ((d, d), (r64, r64), (c64, c64), (r64, c64)))
    mab = float(np.max(np.abs(d))) if d.size else 0.0
    return OutputPartial(name, tuple(r.shape), per_sample, diff_sq, ref_sq, cand_sq, dot, mab,
                         *_agreement(r, c, rows))


def _ragged_partial(r: np.ndarray, c: np.ndarray, name: str, index: int) -> OutputPartial:
    """:func:`output_partial` of ragged outputs (one array per sample, as the model gave it for that sample)."""
    if not (is_ragged(r) and is_ragged(c)) or len(r) != len(c):
        raise ValueError(f"output {index}: {len(r)} reference samples but {len(c)} candidate samples")
    sums = np.zeros((4, len(r)))
    mab, agree, shared, classes = 0.0, [], [], set()
    for i, (ri, ci) in enumerate(zip(items(r), items(c))):
        if ri.shape != ci.shape:
            raise ValueError(f"output {index}, sample {i}: reference shape {ri.shape} but candidate shape {ci.shape}")
        r64, c64 = ri.astype(np.float64).ravel(), ci.astype(np.float64).ravel()
        d = c64 - r64
        sums[:, i] = (d @ d, r64 @ r64, c64 @ c64, r64 @ c64)
        mab = max(mab, float(np.max(np.abs(d))) if d.size else 0.0)
        rs, cs = class_scores(ri), class_scores(ci)
        if rs is not None and cs is not None:
            a, s = _row_agreement(rs, cs)
            agree.append(bool(a.all()))
            shared.append(float(s.mean()))
            classes.add(int(rs.shape[1]))
    scored = len(agree) == len(r) and len(classes) == 1
    shape = _ragged_shape(r)
    return OutputPartial(name, shape, True, sums[0], sums[1], sums[2], sums[3], mab,
                         classes.pop() if scored else None, np.array(agree, bool) if scored else None,
                         np.array(shared) if scored else None)


def _ragged_shape(a: np.ndarray) -> tuple[int, ...]:
    """Rows of every sample added up, the other dims their largest."""
    dims = [np.shape(x) for x in a]
    if not dims or not all(len(d) == len(dims[0]) and len(d) for d in dims):
        return (len(dims),)
    return (sum(d[0] for d in dims), *np.max([d[1:] for d in dims], axis=0).tolist())


def output_partials(ref: Sequence[np.ndarray], cand: Sequence[np.ndarray], names: Sequence[str] | None = None,
                    n: int | None = None) -> tuple[OutputPartial, ...]:
    """:func:`output_partial` for every output (same order); ValueError if the outputs do not line up."""
    if len(ref) != len(cand):
        raise ValueError(f"{len(ref)} reference outputs but {len(cand)} candidate outputs")
    return tuple(output_partial(r, c, n, names[k] if names is not None else str(k), k)
                 for k, (r, c) in enumerate(zip(ref, cand)))


SUMS = ("diff_sq", "ref_sq", "cand_sq", "dot")


def _totals(parts: Sequence[OutputPartial]) -> tuple[float, ...]:
    """Each of SUMS over every shard's pieces, concatenated in shard order: one sum whatever the sharding."""
    return tuple(float(np.sum(np.concatenate([getattr(p, f) for p in parts]))) for f in SUMS)


def _merged_shape(shapes: Sequence[tuple[int, ...]]) -> list[int]:
    """Rows of every shard added up, the other dims their largest (equal unless the outputs are ragged)."""
    if not shapes[0]:
        return []
    if any(len(s) != len(shapes[0]) for s in shapes):
        return [int(sum(s[0] if s else 0 for s in shapes))]
    return [int(sum(s[0] for s in shapes)), *(int(max(d)) for d in zip(*(s[1:] for s in shapes)))]


def _merge_output(parts: Sequence[OutputPartial], totals: tuple[float, ...]) -> dict[str, Any]:
    first = parts[0]
    diff_sq, ref_sq, cand_sq, dot = totals
    entry: dict[str, Any] = {
        "name": first.name,
        "shape": _merged_shape([p.shape for p in parts]),
        "rel_l2_error": _rel_l2(diff_sq, ref_sq),
        "cosine": _cosine(dot, ref_sq, cand_sq),
        "max_abs_error": float(np.max([p.max_abs for p in parts])),
        "classes": first.classes,
        "top1_agreement": None,
        "top5_overlap": None,
    }
    if first.classes is not None and all(p.agree is not None and p.shared is not None for p in parts):
        k = min(TOP_K, first.classes)
        agree = np.concatenate([p.agree for p in parts])  # type: ignore[misc]
        shared = np.concatenate([p.shared for p in parts])  # type: ignore[misc]
        entry["top1_agreement"] = float(np.mean(agree) * 100.0)
        entry["top5_overlap"] = float(np.mean(shared / k) * 100.0)
    return entry


def merge_outputs(shards: Sequence[Sequence[OutputPartial]]) -> dict[str, Any]:
    """:func:`compare_outputs`'s answer from the pieces of every shard (shards in sample order)."""
    per: list[dict[str, Any]] = []
    tot = [0.0, 0.0, 0.0, 0.0]
    for k in range(len(shards[0]) if shards else 0):
        parts = [s[k] for s in shards]
        totals = _totals(parts)
        per.append(_merge_output(parts, totals))
        tot = [a + b for a, b in zip(tot, totals)]
    tot_diff, tot_ref, tot_cand, tot_dot = tot
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


def compare_outputs(
    ref: Sequence[np.ndarray], cand: Sequence[np.ndarray], names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Compare candidate outputs with reference outputs (same order, axis 0 = samples).

    Returns ``{"outputs": [per-output dict], "rel_l2_error", "cosine", "max_abs_error", "top1_agreement",
    "top5_overlap"}``. Per output: name, shape, the three error metrics, and for classifier-like outputs
    (see :func:`class_scores`) classes, top1_agreement and top5_overlap (else None). Overall error metrics
    treat all outputs as one vector; overall agreement/overlap are the minimum over classifier-like outputs
    (None if there are none). Raises ValueError if the outputs do not line up.

    The sums are taken per sample, then over the samples (:func:`output_partials` + :func:`merge_outputs`), so
    the same figures come from the pieces of any split of the samples into shards.
    """
    return merge_outputs([output_partials(ref, cand, names)])


def check_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) class scores of ``scores`` and the integer labels (N,) they are judged against; DataError when
    the output is not class scores or the labels do not fit it. Ragged outputs count when every sample has
    one row of class scores."""
    s = _single_rows(scores) if is_ragged(scores) else class_scores(scores)
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
    return s, lab


def _single_rows(scores: np.ndarray) -> np.ndarray | None:
    """Ragged per-sample outputs as (n, C) class scores when each sample has exactly one row of them."""
    per = [class_scores(x) for x in items(scores)]
    if not per or any(p is None or p.shape[0] != 1 for p in per) or len({p.shape[1] for p in per}) != 1:  # type: ignore[union-attr]
        return None
    return np.concatenate(per)  # type: ignore[arg-type]


def label_hits(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: (label is the top-1 class, label is among the top-5), bool arrays (N,); DataError as
    :func:`check_labels`."""
    s, lab = check_labels(scores, labels)
    k = min(TOP_K, s.shape[1])
    return np.argmax(s, axis=1) == lab, (top_k(s, k) == lab[:, None]).any(axis=1)


def labelled_accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{"top1": %, "top5": %} of class scores (N, C) (or any classifier-like shape) against integer labels (N,)."""
    top1, top5 = label_hits(scores, labels)
    return {"top1": hit_rate(top1), "top5": hit_rate(top5)}


def hit_rate(hits: np.ndarray) -> float:
    """% of True in a bool array (the one formula of every labelled figure, whatever the sharding)."""
    return float(np.mean(hits) * 100.0)


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
