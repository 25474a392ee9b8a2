"""Measurement around passes: baseline and per-pass measurements, rollback on a broken budget,
exit codes of the CI gate, and a report that validates against its schema."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from convopt.cli import app
from convopt.measure.data import load_eval_data
from convopt.core.budget import Budget
from convopt.measure.evaluator import Evaluator
from convopt.measure.ort import OrtSettings
from convopt.passes.base import RankPolicy
from convopt.uniform import optimize_uniform as optimize
from convopt.render import validate_report

from tests.helpers import NO_SHARED, SHARED, SHARED_MODELS, conv_model

runner = CliRunner()
FAST = OrtSettings(warmup=1, repeats=3)


def _classifier(tmp_path: Path) -> tuple[onnx.ModelProto, Path]:
    """Conv 5×5 → Relu → GlobalAveragePool → Flatten: 32 'classes' from a 16×16 image."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    W = rng.standard_normal((32, 8, 5, 5)).astype(np.float32)
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv5", pads=[2, 2, 2, 2]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
            helper.make_node("Flatten", ["p"], ["y"], name="flat"),
        ],
        "clf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(W, "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    p = tmp_path / "clf.onnx"
    p.write_bytes(m.SerializeToString())
    return m, p


def test_impossible_budget_rolls_the_pass_back(tmp_path: Path) -> None:
    model, _ = _classifier(tmp_path)
    select, report = (Evaluator(model, load_eval_data(model, None, random_samples=16, seed=s), FAST) for s in (0, 1))
    result = optimize(model, ["factorize"], RankPolicy(mode="fraction", value=0.1), select=select, report=report,
                      budget=Budget(max_rel_error=1e-9))
    p = result.report.passes[-1]
    assert p.name == "factorize" and len(p.rewritten) == 1
    assert p.status == "rolled_back" and "error" in (p.rollback_reason or "")
    assert p.measurement is not None and p.measurement.accuracy.rel_l2_error > 1e-9
    assert result.model.SerializeToString() == model.SerializeToString(), "a rolled-back pass must leave the model as it was"
    assert result.report.macs_after == result.report.macs_before
    assert result.report.final.accuracy.rel_l2_error == 0.0 and result.report.final.role == "evaluation"


def test_pass_within_budget_is_kept_and_measured(tmp_path: Path) -> None:
    model, _ = _classifier(tmp_path)
    select, report = (Evaluator(model, load_eval_data(model, None, random_samples=16, seed=s), FAST) for s in (0, 1))
    result = optimize(model, ["split5x5"], RankPolicy(mode="full"), select=select, report=report,
                      budget=Budget(max_rel_error=1e-4))
    p = result.report.passes[-1]
    assert p.status == "kept", p.rollback_reason
    acc = p.measurement.accuracy
    assert acc.rel_l2_error < 1e-4 and acc.top1_agreement == 100.0
    lat = p.measurement.latency
    assert lat.speedup > 0 and lat.candidate.repeats == 3
    table = p.latency  # the report's one timing run: the same original median as the final row
    assert table.original.median_ms == result.report.final.latency.original.median_ms
    d = result.report.to_dict()
    validate_report(d)
    assert d["baseline"]["accuracy"]["top1_agreement"] == 100.0


def test_cli_exit_codes_gate_and_schema(tmp_path: Path) -> None:
    _, path = _classifier(tmp_path)
    rep = tmp_path / "r.json"
    base = ["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--passes", "factorize", "--rank-fraction", "0.3",
            "--repeats", "3", "--warmup", "1", "--keep-slower", "-q", "--report", str(rep)]
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    d = json.loads(rep.read_text())
    validate_report(d)
    assert d["settings"]["ort"]["repeats"] == 3 and d["environment"]["onnxruntime"]
    # an unreachable speedup gate: exit 1, the report says why, the model is still written
    r = runner.invoke(app, base + ["--fail-under-speedup", "1000"])
    assert r.exit_code == 1, r.output
    d = json.loads(rep.read_text())
    assert d["gate"]["passed"] is False and "below --fail-under-speedup" in d["gate"]["reason"]
    # an accuracy budget that rolls everything back is reported, not an error
    r = runner.invoke(app, base + ["--max-rel-error", "1e-9"])
    assert r.exit_code == 0, r.output
    d = json.loads(rep.read_text())
    assert d["passes"][-1]["status"] == "rolled_back"
    # usage and input errors stay exit 2
    r = runner.invoke(app, base + ["--no-eval", "--fail-under-speedup", "1.1"])
    assert r.exit_code == 2 and "needs measurement" in r.output
    r = runner.invoke(app, base + ["--data", str(tmp_path / "missing.npz")])
    assert r.exit_code == 2 and "missing.npz" in r.output


def test_dynamic_input_without_hint_is_exit_2(tmp_path: Path) -> None:
    m = conv_model(k=(3, 3), pads=(1, 1, 1, 1))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    p = tmp_path / "dyn.onnx"
    p.write_bytes(m.SerializeToString())
    r = runner.invoke(app, ["optimize", str(p), "-q"])
    assert r.exit_code == 2
    assert "--input-shape x:" in r.output
    r = runner.invoke(app, ["optimize", str(p), "-q", "--input-shape", "x:2x8x13x11", "--repeats", "2",
                            "--passes", "factorize", "--full-rank", "--keep-slower"])
    assert r.exit_code == 0, r.output


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_squeezenet_report_baseline_matches_reference_top1(tmp_path: Path) -> None:
    """The report's labelled top-1 of the original SqueezeNet on all 1000 images is the README's 60.8%."""
    rep = tmp_path / "r.json"
    images = SHARED / "data" / "imagenet-sample"
    r = runner.invoke(app, ["optimize", str(SHARED_MODELS / "squeezenet1.1.onnx"), "-o", str(tmp_path / "o.onnx"),
                            "--strategy", "uniform", "--passes", "split5x5", "--data", str(images), "--preprocess", "caffe",
                            "--labels", str(images / "labels.csv"), "--repeats", "3", "-q", "--report", str(rep)])
    assert r.exit_code == 0, r.output
    d = json.loads(rep.read_text())
    validate_report(d)
    assert d["baseline"]["samples"] == 500 and d["settings"]["data"]["select"]["samples"] == 500
    assert 55.0 < d["baseline"]["accuracy"]["labelled_top1"] < 67.0  # 60.8 on all 1000 (test_measure_real)
    assert d["passes"][-1]["status"] == "no_change"  # SqueezeNet has no 5×5 conv


def test_the_report_phase_times_the_original_once_and_releases_it_before_the_accuracy_runs(tmp_path: Path,
                                                                                         monkeypatch) -> None:
    """Driver.finish: the original, the timed steps and the final model timed in one run; the baseline takes
    that run's figure for the original (no second timing), and the original's timing session is gone while
    the final model's outputs are compared (memory: one session of the original less)."""
    import convopt.measure.evaluator as ev_mod

    model, _ = _classifier(tmp_path)
    select, report = (Evaluator(model, load_eval_data(model, None, random_samples=16, seed=s), FAST) for s in (0, 1))
    runs: list[int] = []
    real_time = ev_mod.time_sessions
    monkeypatch.setattr(ev_mod, "time_sessions", lambda sessions, *a: runs.append(len(sessions)) or real_time(sessions, *a))
    held: list[bool] = []
    real_compare = Evaluator._compare

    def compare(self, candidate, label):
        if self is report:
            held.append(self._timing._session is not None)
        return real_compare(self, candidate, label)

    monkeypatch.setattr(Evaluator, "_compare", compare)
    result = optimize(model, ["factorize"], RankPolicy(mode="fraction", value=0.5), select=select, report=report)
    assert runs[-1] > 1  # the last timing: the original with the steps and final model (the baseline timed no more)
    assert held == [False]
    base, final = result.report.baseline, result.final
    assert base is not None and base.latency is not None and final is not None and final.latency is not None
    assert base.latency.candidate == final.latency.original  # one run, one baseline
