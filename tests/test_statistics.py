"""Accuracy claims that hold on data convopt never saw: decisions on confidence bounds (simulated with known
flip rates), three data roles that never mix, and the guards that need no statistics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from convopt.cli import app
from convopt.core.budget import Budget
from convopt.core.instruments import BudgetGuard, Step
from convopt.core.plan import Plan
from convopt.measure import stats
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.measurement import Outcomes
from convopt.measure.ort import OrtSettings
from convopt.render import validate_report

FAST = OrtSettings(threads=1, warmup=1, repeats=3, batch_size=64)
runner = CliRunner()


def _paired(rng: np.random.Generator, n: int, q10: float, q01: float, acc: float = 0.7) -> Outcomes:
    """n samples whose prediction goes right→wrong with probability q10 and wrong→right with q01."""
    u = rng.random(n)
    before = rng.random(n) < acc
    down, up = u < q10 / acc, u < q01 / (1 - acc)
    after = np.where(before, ~down, up)
    return Outcomes(np.arange(n), np.zeros(n), np.ones(n), before == after, before, after)


@pytest.mark.parametrize("n,q10,q01", [(200, 0.02, 0.01), (500, 0.015, 0.005), (300, 0.03, 0.0)])
def test_a_drop_at_or_above_the_budget_is_kept_at_most_one_in_twenty_times(n: int, q10: float, q01: float) -> None:
    """True drop = q10 − q01 = the budget (the hardest case for the rule): over many draws, the fraction of
    certified decisions stays at or below 1 − confidence (5 %), within simulation error."""
    budget = Budget(max_accuracy_drop=100 * (q10 - q01), confidence=0.95)
    rng = np.random.default_rng(7)
    runs = 2000
    kept = sum(budget.certify(_paired(rng, n, q10, q01)).ok for _ in range(runs))
    assert kept / runs <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / runs), kept / runs


def test_a_lossless_rewrite_is_certified_when_the_data_suffice() -> None:
    """Honesty is not bought by never rewriting: no flips on 600 samples certify a 1-point budget."""
    rng = np.random.default_rng(3)
    assert Budget(max_accuracy_drop=1.0).certify(_paired(rng, 600, 0.0, 0.0)).ok
    assert not Budget(max_accuracy_drop=1.0).certify(_paired(rng, 200, 0.0, 0.0)).ok  # 200 cannot: 1.35 pt


def test_bounds_of_disagreement_and_relative_error() -> None:
    o = Outcomes(np.arange(400), np.full(400, 1e-4), np.ones(400), np.r_[np.zeros(4, bool), np.ones(396, bool)])
    cert = Budget(min_agreement=97.0, max_rel_error=0.02).certify(o)
    assert cert.ok and 1.0 < cert.bounds["min_agreement"] < 3.0 and cert.bounds["max_rel_error"] >= 0.01
    cert = Budget(min_agreement=99.0).certify(o)
    assert not cert.ok and "4 predictions changed" in cert.reason and "--min-agreement 99.0" in cert.reason
    assert Budget(max_accuracy_drop=1.0).certify(None).ok is False


def test_bonferroni_looks_widen_the_bound() -> None:
    o = _paired(np.random.default_rng(0), 500, 0.004, 0.0)
    one, three = Budget(max_accuracy_drop=2.0).certify(o), Budget(max_accuracy_drop=2.0).certify(o, looks=3)
    assert three.bounds["max_accuracy_drop"] > one.bounds["max_accuracy_drop"]
    assert three.confidence == pytest.approx(1 - 0.05 / 3)


def test_too_few_samples_is_an_answer_with_the_samples_needed() -> None:
    msg = Budget(max_accuracy_drop=1.0).feasibility(100, labelled=True)
    need = stats.samples_for_zero_flips(0.01, 0.95)
    assert msg is not None and "100 decision samples cannot certify --max-accuracy-drop 1.0" in msg
    assert f"about {need} samples" in msg and 250 < need < 300
    assert Budget(max_accuracy_drop=1.0).feasibility(need, labelled=True) is None
    assert Budget(max_rel_error=0.05).feasibility(10, labelled=False) is None


# -- through the evaluator: a candidate whose true disagreement rate is known ---------------------------------


def _classifier(flip_threshold: float | None) -> onnx.ModelProto:
    """logits = x[:, :4]; with ``flip_threshold``, class scores 0 and 1 swap where x[:, 4] > threshold, so the
    top-1 changes on exactly the samples where x4 > threshold and class 0 or 1 is the top one."""
    nodes = [helper.make_node("Slice", ["x", "s0", "s4", "ax"], ["logits"], name="logits")]
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("s0", [0]), ("s4", [4]), ("ax", [1]), ("s5", [5]))]
    if flip_threshold is not None:
        swap = np.eye(4, dtype=np.float32)[[1, 0, 2, 3]]
        inits += [numpy_helper.from_array(swap, "P"), numpy_helper.from_array(np.float32(flip_threshold), "t")]
        nodes += [helper.make_node("Slice", ["x", "s4", "s5", "ax"], ["h"], name="h"),
                  helper.make_node("Greater", ["h", "t"], ["g"], name="g"),
                  helper.make_node("MatMul", ["logits", "P"], ["swapped"], name="swap"),
                  helper.make_node("Where", ["g", "swapped", "logits"], ["out"], name="where")]
    else:
        nodes.append(helper.make_node("Identity", ["logits"], ["out"], name="out"))
    g = helper.make_graph(nodes, "clf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_through_the_evaluator_a_candidate_over_budget_is_rarely_kept() -> None:
    """x4 ~ U(0, 1) > 0.96 on 4 % of samples; the swap changes the top-1 when class 0 or 1 leads (half of
    them): a true disagreement of 2 points, twice the 1-point budget. Fresh data each run."""
    original, candidate = _classifier(None), _classifier(0.96)
    budget = Budget(max_accuracy_drop=1.0)
    runs, kept, seen = 60, 0, []
    for seed in range(runs):
        x = np.random.default_rng(seed).random((300, 5), dtype=np.float32)
        ev = Evaluator(original, EvalData({"x": x}, None, f"seed {seed}"), FAST, measure_latency=False)
        step = Step("candidate", Plan(), candidate, [])
        kept += BudgetGuard(ev, budget).after_step(step).ok
        seen.append(step.measure(ev).accuracy.top1_drop)
    assert 1.2 < float(np.mean(seen)) < 2.8  # the simulated rate is what the evaluator measures
    assert kept / runs <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / runs)


# -- the three roles through the CLI ---------------------------------------------------------------------------


@pytest.fixture()
def digits(tmp_path: Path) -> tuple[Path, Path]:
    """A 4-class 'classifier' (x[:, :4] are its logits) and 240 labelled samples it gets right 85 % of."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((240, 5)).astype(np.float32)
    labels = x[:, :4].argmax(1)
    wrong = rng.random(240) < 0.15
    labels[wrong] = (labels[wrong] + 1) % 4
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    p = tmp_path / "m.onnx"
    p.write_bytes(_conv_classifier().SerializeToString())
    return p, tmp_path / "d.npz"


def _conv_classifier() -> onnx.ModelProto:
    """x (N, 5) → reshape (N, 5, 1, 1) → 3×3 conv with pad 1 on a 1×1 map (only the centre tap sees data)
    → (N, 4): the same logits as x[:, :4] when the centre tap is the identity; factorizable."""
    W = np.zeros((4, 5, 3, 3), np.float32)
    W[np.arange(4), np.arange(4), 1, 1] = 1.0
    W += np.random.default_rng(1).standard_normal(W.shape).astype(np.float32) * 0.01
    nodes = [helper.make_node("Reshape", ["x", "shape4"], ["x4"], name="r4"),
             helper.make_node("Conv", ["x4", "W"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["y", "shape2"], ["out"], name="r2")]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array([-1, 5, 1, 1], np.int64), "shape4"),
             numpy_helper.from_array(np.array([-1, 4], np.int64), "shape2")]
    g = helper.make_graph(nodes, "cc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_report_data_never_reach_a_decision(digits: tuple[Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    decided: list[np.ndarray] = []
    measured: list[tuple[str, str]] = []
    real_certify, real_measure = Budget.certify, Evaluator.measure

    def certify(self: Budget, o: Outcomes | None, looks: int = 1):  # type: ignore[no-untyped-def]
        decided.append(np.array([]) if o is None else o.index.copy())
        measured.append(("decision", "select"))
        return real_certify(self, o, looks)

    def measure(self: Evaluator, candidate: onnx.ModelProto, desc: str = "", *, timed: bool = True):  # type: ignore[no-untyped-def]
        measured.append(("measure", self.role))
        return real_measure(self, candidate, desc, timed=timed)

    monkeypatch.setattr(Budget, "certify", certify)
    monkeypatch.setattr(Evaluator, "measure", measure)
    model, data = digits
    rep = tmp_path / "r.json"
    r = runner.invoke(app, ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--data", str(data),
                            "--strategy", "uniform", "--passes", "factorize,depthwise", "--rank-fraction", "0.5",
                            "--keep-slower", "--repeats", "2", "--max-accuracy-drop", "20", "--report", str(rep), "-q"])
    assert r.exit_code == 0, r.output
    d = json.loads(rep.read_text())
    validate_report(d)
    roles = d["settings"]["data"]
    assert roles["select"]["samples"] + roles["report"]["samples"] == 240 and roles["fit"] is None
    report_ids = set(range(240)) - {int(i) for ids in decided for i in ids}
    assert decided and len(report_ids) == roles["report"]["samples"]  # every decision saw only select samples
    first_report = next(i for i, (_, role) in enumerate(measured) if role == "report")
    assert all(kind == "measure" for kind, _ in measured[first_report:])  # no decision after the report
    assert d["final"]["role"] == "report" and d["final"]["samples"] == roles["report"]["samples"]
    b = d["budget"]
    assert b["decision_samples"] == roles["select"]["samples"] and b["report_samples"] == roles["report"]["samples"]


def test_original_at_chance_on_the_labels_is_exit_2(digits: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = digits
    z = np.load(data)
    shuffled = np.random.default_rng(5).permutation(z["labels"])
    np.savez(tmp_path / "bad.npz", x=z["x"], labels=(shuffled + 1) % 4)
    r = runner.invoke(app, ["optimize", str(model), "--data", str(tmp_path / "bad.npz"), "-q",
                            "--strategy", "uniform"])
    assert r.exit_code == 2 and "no better than chance" in r.output and "--preprocess" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_uniform_mode_applies_the_default_budget_and_no_budget_skips_it(digits: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    model, data = digits
    rep = tmp_path / "r.json"
    base = ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--data", str(data), "--strategy", "uniform",
            "--passes", "depthwise", "--rank-fraction", "0.1", "--keep-slower", "--repeats", "2", "--report",
            str(rep), "-q"]
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    d = json.loads(rep.read_text())
    p = d["passes"][-1]
    assert p["status"] == "rolled_back" and "--max-accuracy-drop 1.0 (default)" in p["rollback_reason"]
    assert d["budget"]["limits"]["source"] == "default"
    r = runner.invoke(app, base + ["--no-budget"])
    assert r.exit_code == 0, r.output
    d = json.loads(rep.read_text())
    assert d["passes"][-1]["status"] == "kept" and d["budget"]["certified"] is False


def test_too_few_samples_warns_and_the_report_says_so(digits: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = digits
    rep = tmp_path / "r.json"
    r = runner.invoke(app, ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--data", str(data),
                            "--strategy", "uniform", "--passes", "factorize", "--full-rank", "--repeats", "2",
                            "--keep-slower", "--report", str(rep)])
    assert r.exit_code == 0, r.output
    assert "120 decision samples cannot certify --max-accuracy-drop 1.0 (default)" in r.output
    b = json.loads(rep.read_text())["budget"]
    assert b["message"] and "it takes about" in b["message"]
