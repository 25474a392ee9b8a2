"""Metrics on constructed outputs with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from convopt.errors import DataError
from convopt.measure.metrics import class_scores, compare_outputs, labelled_accuracy


def test_identical_outputs() -> None:
    ref = [np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)]
    r = compare_outputs(ref, [ref[0].copy()])
    assert r["top1_agreement"] == 100.0 and r["top5_overlap"] == 100.0
    assert r["rel_l2_error"] == 0.0 and r["max_abs_error"] == 0.0
    assert r["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert r["outputs"][0]["classes"] == 10 and r["outputs"][0]["shape"] == [6, 10]


def test_one_swapped_argmax_in_four_is_75_percent() -> None:
    ref = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.7, 0.2, 0.1]], np.float32)
    cand = ref.copy()
    cand[1] = [0.8, 0.1, 0.1]  # argmax 1 → 0
    r = compare_outputs([ref], [cand])
    assert r["top1_agreement"] == 75.0
    assert r["top5_overlap"] == 100.0  # 3 classes: top-k uses k = 3, always the same set


def test_known_l2_cosine_and_max_abs() -> None:
    ref = np.array([[3.0, 4.0]])  # ‖ref‖ = 5
    cand = np.array([[3.0, 5.0]])  # diff (0, 1): rel = 1/5; cos = (9 + 20) / (5·√34)
    r = compare_outputs([ref], [cand])
    assert r["rel_l2_error"] == pytest.approx(0.2, rel=1e-12)
    assert r["cosine"] == pytest.approx(29 / (5 * math.sqrt(34)), rel=1e-12)
    assert r["max_abs_error"] == 1.0
    assert compare_outputs([ref], [-ref])["cosine"] == pytest.approx(-1.0)
    assert compare_outputs([ref], [2 * ref])["rel_l2_error"] == pytest.approx(1.0)


def test_overall_metrics_pool_all_outputs_and_take_worst_agreement() -> None:
    a_ref, b_ref = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 2.0], [2.0, 0.0]])
    a_cand, b_cand = a_ref.copy(), np.array([[0.0, 2.0], [0.0, 2.0]])  # b: one of two argmaxes moves
    r = compare_outputs([a_ref, b_ref], [a_cand, b_cand], names=["a", "b"])
    assert [o["name"] for o in r["outputs"]] == ["a", "b"]
    assert r["outputs"][0]["top1_agreement"] == 100.0 and r["outputs"][1]["top1_agreement"] == 50.0
    assert r["top1_agreement"] == 50.0
    # pooled: ‖diff‖² = 4 + 4 = 8, ‖ref‖² = 2 + 8 = 10
    assert r["rel_l2_error"] == pytest.approx(math.sqrt(8 / 10))
    assert r["outputs"][1]["rel_l2_error"] == pytest.approx(math.sqrt(8 / 8))
    assert r["max_abs_error"] == 2.0


def test_top5_overlap_counts_shared_classes() -> None:
    ref = np.arange(10, dtype=np.float32)[None, :].repeat(2, axis=0)  # top-5: 9, 8, 7, 6, 5
    cand = ref.copy()
    cand[0, [9, 8]] = -1  # sample 0 top-5 now 7, 6, 5, 4, 3: shares 3 of 5
    r = compare_outputs([ref], [cand])
    assert r["top5_overlap"] == pytest.approx((3 / 5 + 5 / 5) / 2 * 100)
    assert r["top1_agreement"] == 50.0


@pytest.mark.parametrize(
    "shape, classes",
    [((4, 10), 10), ((4, 1000, 1, 1), 1000), ((4, 1, 7), 7), ((1, 5), 5),
     ((4, 3, 8, 8), None), ((4,), None), ((4, 1), None), ((4, 1, 1), None)],
)
def test_class_scores_shapes(shape: tuple[int, ...], classes: int | None) -> None:
    s = class_scores(np.zeros(shape, np.float32))
    assert (s.shape if s is not None else None) == ((shape[0], classes) if classes else None)


def test_non_classifier_outputs_have_no_agreement() -> None:
    x = np.ones((2, 3, 4, 4), np.float32)
    r = compare_outputs([x], [x * 1.1])
    assert r["top1_agreement"] is None and r["top5_overlap"] is None
    assert r["rel_l2_error"] == pytest.approx(0.1, rel=1e-6)
    assert compare_outputs([np.arange(4)], [np.arange(4)])["top1_agreement"] is None  # ints, (N,)


def test_zero_reference_and_nan_candidate() -> None:
    z = np.zeros((2, 3))
    assert compare_outputs([z], [z])["rel_l2_error"] == 0.0
    assert compare_outputs([z], [z])["cosine"] == 1.0
    r = compare_outputs([z], [z + 1])
    assert r["rel_l2_error"] == math.inf and r["cosine"] == 0.0
    bad = compare_outputs([np.ones((2, 3))], [np.full((2, 3), np.nan)])
    assert math.isnan(bad["rel_l2_error"]) and math.isnan(bad["max_abs_error"])


def test_mismatched_outputs_raise() -> None:
    with pytest.raises(ValueError, match="2 reference outputs but 1"):
        compare_outputs([np.zeros(2), np.zeros(2)], [np.zeros(2)])
    with pytest.raises(ValueError, match=r"output 0: reference shape \(2, 3\) but candidate shape \(2, 4\)"):
        compare_outputs([np.zeros((2, 3))], [np.zeros((2, 4))])


def test_labelled_accuracy_known_answers() -> None:
    scores = np.array([
        [0.1, 0.5, 0.2, 0.0, 0.0, 0.0, 0.9],  # top-1 6, top-5 {6, 1, 2, 0, 3}
        [0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1],  # top-1 0
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.3],  # top-1 5
        [0.3, 0.2, 0.1, 0.0, 0.4, 0.5, 0.6],  # top-5 {6, 5, 4, 0, 1}
    ], np.float32)[:, :, None, None]
    labels = np.array([6, 0, 1, 2])  # right, right, wrong (1 is in top-5 by tie order), wrong (2 not in top-5)
    acc = labelled_accuracy(scores, labels)
    assert acc == {"top1": 50.0, "top5": 75.0}


def test_labelled_accuracy_refuses_bad_labels() -> None:
    with pytest.raises(DataError, match="not class scores"):
        labelled_accuracy(np.zeros((2, 3, 4, 4)), np.array([0, 1]))
    with pytest.raises(DataError, match=r"labels range 0..10 but the model scores 10 classes \(0..9\)"):
        labelled_accuracy(np.zeros((2, 10)), np.array([0, 10]))
    with pytest.raises(DataError, match="one label per sample"):
        labelled_accuracy(np.zeros((2, 10)), np.array([0, 1, 2]))


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(2, 12)),
           elements=st.floats(-100, 100, width=32, allow_nan=False, allow_subnormal=False)),
    st.sampled_from([0.125, 0.5, 1.0, 2.0, 8.0]),
)
def test_properties_positive_scaling(ref: np.ndarray, scale: float) -> None:
    """Scaling by c > 0 keeps every argmax and top-5 set, gives cosine 1 and rel error |c − 1|
    (powers of two scale exactly, so no ties appear from rounding; float32 like ORT outputs, whose squares
    cannot underflow in the float64 sums)."""
    r = compare_outputs([ref], [ref * scale])
    if np.any(ref):
        assert r["cosine"] == pytest.approx(1.0, abs=1e-9)
        assert r["rel_l2_error"] == pytest.approx(abs(scale - 1), abs=1e-9)
    assert r["top1_agreement"] == 100.0 and r["top5_overlap"] == 100.0
    assert 0 <= r["rel_l2_error"] and -1 - 1e-12 <= r["cosine"] <= 1 + 1e-12


def _onehot(idx: list[int], classes: int = 3) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[idx]


def test_top1_drop_ci95_paired_known_answer_and_width_from_flips_only() -> None:
    from convopt.measure.metrics import top1_drop_ci95

    labels = np.array([0] * 100)
    ref = _onehot([0] * 100)  # all right before
    # 3 flipped to wrong, 1 ... none can flip to right: n10 = 3, n01 = 0, n = 100
    cand = _onehot([1, 1, 1] + [0] * 97)
    se = math.sqrt(3 - 9 / 100) / 100
    assert top1_drop_ci95(ref, cand, labels) == pytest.approx(1.96 * se * 100)
    # no flips: a zero-width interval; identical predictions cannot move the drop
    assert top1_drop_ci95(ref, ref, labels) == 0.0
    # 10 lost and 10 gained: drop 0, but the interval is wide
    ref2 = _onehot([0] * 10 + [1] * 10 + [0] * 80)
    cand2 = _onehot([1] * 10 + [0] * 10 + [0] * 80)
    assert top1_drop_ci95(ref2, cand2, labels) == pytest.approx(1.96 * math.sqrt(20) / 100 * 100)


def test_top1_drop_ci95_without_labels_is_the_disagreement_proportion_interval() -> None:
    from convopt.measure.metrics import top1_drop_ci95

    ref = _onehot([0] * 50)
    cand = _onehot([1] * 5 + [0] * 45)
    assert top1_drop_ci95(ref, cand) == pytest.approx(1.96 * math.sqrt(0.1 * 0.9 / 50) * 100)
    assert top1_drop_ci95(np.zeros((4, 3, 8, 8)), np.zeros((4, 3, 8, 8))) is None  # not class scores
