"""Evaluator: reference outputs once, candidates compared with them, budgets checked."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convopt.errors import DataError, InputError, ModelLoadError, RewriteError
from convopt.measure.data import EvalData
from convopt.core.budget import Budget
from convopt.measure.evaluator import ACCURACY_KEYS, Accuracy, Evaluator, Measurement
from convopt.measure.ort import OrtSettings
from tests.test_measure_helpers import classifier_weights, image_model_output_model, tiny_classifier

FAST = OrtSettings(warmup=1, repeats=3, batch_size=4, threads=1)


def data(n: int = 12, labels: np.ndarray | None = None) -> EvalData:
    x = np.random.default_rng(7).normal(size=(n, 3, 8, 8)).astype(np.float32)
    return EvalData({"X": x}, labels, "test data")


def with_bias(model: onnx.ModelProto, bias: np.ndarray) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, t in enumerate(m.graph.initializer):
        if t.name == "B":
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), "B"))
    return m


def test_baseline_is_the_original_against_itself() -> None:
    ev = Evaluator(tiny_classifier("N"), data(), FAST)
    b = ev.baseline()
    assert b.accuracy.top1_agreement == 100.0 and b.accuracy.top5_overlap == 100.0
    assert b.accuracy.rel_l2_error == 0.0 and b.accuracy.max_abs_error == 0.0
    assert b.accuracy.labelled_top1 is None and b.accuracy.top1_drop == 0.0
    assert b.latency is not None and b.latency.speedup == 1.0 and b.latency.candidate.repeats == 3
    assert b.latency.candidate.batch == 1  # dynamic batch: timed at settings.latency_batch (default 1)
    assert b.samples == 12 and b.scored_output == "Y" and ev.baseline() is b


def test_candidate_agreement_against_cached_reference() -> None:
    ev = Evaluator(tiny_classifier("N"), data(), FAST)
    ref_argmax = ev.reference[0].argmax(axis=1)
    _, b = classifier_weights()
    forced = b.copy()
    forced[3] += 100.0  # class 3 wins everywhere
    m = ev.measure(with_bias(tiny_classifier("N"), forced), "bias")
    expected = float(np.mean(ref_argmax == 3) * 100)
    assert 0 < expected < 100  # the case is informative
    assert m.accuracy.top1_agreement == pytest.approx(expected)
    assert m.accuracy.top1_drop == pytest.approx(100 - expected)
    assert m.accuracy.rel_l2_error > 1 and m.desc == "bias"
    same = ev.measure(tiny_classifier("N"), "same")
    assert same.accuracy.top1_agreement == 100.0 and same.accuracy.rel_l2_error < 1e-6
    assert same.latency is not None and same.latency.original.repeats == 3
    assert same.latency.speedup == pytest.approx(same.latency.original.median_ms / same.latency.candidate.median_ms)


def test_labelled_accuracy_of_original_and_candidate() -> None:
    probe = Evaluator(tiny_classifier("N"), data(), FAST, measure_latency=False)
    labels = probe.reference[0].argmax(axis=1).copy()
    labels[:3] = (labels[:3] + 1) % 4  # 9 of 12 right
    ev = Evaluator(tiny_classifier("N"), data(labels=labels), FAST, measure_latency=False)
    assert ev.original_accuracy is not None and ev.original_accuracy["top1"] == pytest.approx(75.0)
    assert ev.baseline().accuracy.labelled_top1 == pytest.approx(75.0)
    _, b = classifier_weights()
    forced = b.copy()
    forced[0] += 100.0
    m = ev.measure(with_bias(tiny_classifier("N"), forced))
    assert m.accuracy.labelled_top1 == pytest.approx(np.mean(labels == 0) * 100)
    assert m.accuracy.labelled_top5 == 100.0  # 4 classes: every label is in the top 4
    assert m.accuracy.top1_drop == pytest.approx(75.0 - np.mean(labels == 0) * 100)
    assert m.latency is None


def test_fixed_batch_model_timed_at_its_batch() -> None:
    ev = Evaluator(tiny_classifier(1), data(5), FAST)
    assert ev.baseline().latency.candidate.batch == 1
    assert ev.reference[0].shape == (5, 4)


def measurement(**acc: float | None) -> Measurement:
    return Measurement("m", 10, "d", Accuracy(**acc), (), None)


def test_check_reasons() -> None:
    labelled = measurement(labelled_top1=58.5, top1_drop=2.3, top1_agreement=96.0, rel_l2_error=0.02)
    assert Budget(max_accuracy_drop=1.0).check(labelled.accuracy) == "top-1 dropped 2.30 points (> --max-accuracy-drop 1.0)"
    assert Budget(max_accuracy_drop=2.3).check(labelled.accuracy) is None
    assert Budget(min_agreement=99.0).check(labelled.accuracy) == "top-1 agreement 96.00% (< --min-agreement 99.0)"
    assert Budget(max_rel_error=0.01).check(labelled.accuracy) == "relative L2 error 0.02 (> --max-rel-error 0.01)"
    assert Budget(max_accuracy_drop=3, min_agreement=95, max_rel_error=0.05).check(labelled.accuracy) is None
    both = Budget(max_accuracy_drop=1.0, max_rel_error=0.01).check(labelled.accuracy)
    assert both is not None and both.count(";") == 1
    unlabelled = measurement(top1_agreement=97.5, top1_drop=2.5, rel_l2_error=None)
    assert Budget(max_accuracy_drop=0.5).check(unlabelled.accuracy) == (
        "top-1 agreement dropped 2.50 points (> --max-accuracy-drop 0.5)")
    assert Budget(max_rel_error=1.0).check(unlabelled.accuracy) == "relative L2 error not finite (> --max-rel-error 1.0)"
    assert Budget().check(unlabelled.accuracy) is None and Budget().is_empty and not Budget(min_agreement=1).is_empty


def test_budget_validation() -> None:
    with pytest.raises(InputError, match="--max-accuracy-drop must be a non-negative"):
        Budget(max_accuracy_drop=-1)
    with pytest.raises(InputError, match="percentage"):
        Budget(min_agreement=150)
    x = np.random.default_rng(0).random((3, 2, 4, 4), dtype=np.float32)
    ev = Evaluator(image_model_output_model(), EvalData({"X": x}, None, "t"), FAST, measure_latency=False)
    scored, labelled = ev.scored_index is not None, ev.data.labels is not None
    with pytest.raises(InputError, match="use --max-rel-error"):
        Budget(min_agreement=99).validate(scored, labelled)
    Budget(max_rel_error=0.01).validate(scored, labelled)
    assert ev.baseline().accuracy.top1_agreement is None and ev.baseline().accuracy.top1_drop is None


def test_labels_without_class_scores_is_a_data_error() -> None:
    x = np.zeros((3, 2, 4, 4), np.float32)
    with pytest.raises(DataError, match="no model output is class scores"):
        Evaluator(image_model_output_model(), EvalData({"X": x}, np.array([0, 1, 0]), "t"), FAST)


def test_broken_candidates_are_rewrite_errors() -> None:
    ev = Evaluator(tiny_classifier("N"), data(), FAST, measure_latency=False)
    w, b = classifier_weights(classes=5)
    with pytest.raises(RewriteError, match="changed its outputs"):
        ev.measure(tiny_classifier("N", weights=(w, b), classes=5), "wider")
    broken = tiny_classifier("N")
    del broken.graph.initializer[1]  # bias B gone: ORT cannot load it
    with pytest.raises(RewriteError, match=r"cannot load the rewritten model \(dropped B\)"):
        ev.measure(broken, "dropped B")
    renamed = tiny_classifier("N")
    renamed.graph.output[0].name = "Z"
    renamed.graph.node[-1].output[0] = "Z"
    with pytest.raises(RewriteError, match=r"has outputs \['Z'\], the original has \['Y'\]"):
        ev.measure(renamed)


def test_unloadable_original_and_missing_inputs() -> None:
    broken = tiny_classifier("N")
    del broken.graph.initializer[1]
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load the model"):
        Evaluator(broken, data(), FAST)
    with pytest.raises(DataError, match=r"no array for model input 'X'; it has \['Z'\]"):
        Evaluator(tiny_classifier("N"), EvalData({"Z": np.zeros((2, 3, 8, 8), np.float32)}, None, "t"), FAST)


def test_measurement_to_dict_is_strict_json() -> None:
    ev = Evaluator(tiny_classifier("N"), data(), FAST)
    _, b = classifier_weights()
    nan_bias = b.copy()
    nan_bias[1] = np.nan
    d = ev.measure(with_bias(tiny_classifier("N"), nan_bias), "nan").to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["accuracy"]["rel_l2_error"] is None and back["outputs"][0]["max_abs_error"] is None
    assert set(back["accuracy"]) == set(ACCURACY_KEYS)
    assert back["latency"]["candidate"]["repeats"] == 3 and back["data"] == "test data"


def test_progress_is_silent_when_stderr_is_not_a_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    Evaluator(tiny_classifier("N"), data(), FAST, measure_latency=False, progress=True).measure(tiny_classifier("N"))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_select_and_report_share_one_timing_session_and_drop_the_reference_session() -> None:
    model = tiny_classifier("N")
    select = Evaluator(model, data(), FAST)
    report = Evaluator(model, data(6), FAST, timing_from=select)
    for ev in (select, report):  # the original's outputs are computed; the session that made them is gone
        assert ev._evaluation._session is None and len(ev.reference[0]) == ev.data.n
    assert report.baseline().latency is not None and select.baseline().latency is not None
    assert report._timing.session() is select._timing.session()
    assert select._timing.session().get_session_options().enable_cpu_mem_arena  # timed as deployed
    with pytest.raises(ValueError, match="same model with the same settings"):
        Evaluator(model, data(), OrtSettings(threads=1), timing_from=select)


def test_released_timing_session_is_made_again_at_the_next_timing() -> None:
    """release_timing drops the original's timing session for every evaluator sharing it; the next timing
    makes a new one, and the candidate is still timed against the original."""
    model = tiny_classifier("N")
    select = Evaluator(model, data(), FAST)
    report = Evaluator(model, data(6), FAST, timing_from=select)
    first = select._timing.session()
    select.release_timing()
    assert select._timing._session is None and report._timing._session is None
    m = select.measure(tiny_classifier("N"))
    assert m.latency is not None and m.latency.speedup > 0
    again = report._timing._session
    assert again is not None and again is not first and select._timing.session() is again


def test_a_handed_off_candidate_is_measured_alike_and_let_go_once_its_session_exists(monkeypatch) -> None:
    """Evaluator.measure of a Handoff: the same figures as of the model itself; the handoff is emptied, and
    the local executor is given the session alone (no proto held beside it). An evaluation that ships the
    proto (Ray's) still gets it. A Step hands its model off once, and holds it no longer."""
    from convopt.core.instruments import Step
    from convopt.core.plan import Plan
    from convopt.handoff import Handoff
    from convopt.measure.executor import LocalEvaluation

    model, cand = tiny_classifier("N"), with_bias(tiny_classifier("N"), np.full(4, 0.3))
    ev = Evaluator(model, data(), FAST, measure_latency=False)
    given: list[object] = []
    real = LocalEvaluation.compare
    monkeypatch.setattr(LocalEvaluation, "compare", lambda self, c, p=None: (given.append(c and c.model), real(self, c, p))[1])
    plain = ev.measure(cand, "plain")
    handoff = Handoff(cand)
    handed = ev.measure(handoff, "handed")
    assert handed.accuracy == plain.accuracy
    assert given == [cand, None]
    with pytest.raises(RuntimeError, match="already taken"):
        handoff.take()
    monkeypatch.setattr(LocalEvaluation, "needs_model", True)
    ev.measure(Handoff(cand), "shipped")
    assert given[-1] is cand
    step = Step("s", Plan(), cand, [])
    assert step.hand_off().take() is cand
    with pytest.raises(RuntimeError, match="handed off"):
        step.model
