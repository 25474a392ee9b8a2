"""The Python API, as the README shows it: typed options in, a typed report out, the model written."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import convopt
from convopt.models.example import example_data_path, example_model_path

FAST = convopt.OrtSettings(threads=1, warmup=1, repeats=3)


def test_optimize_with_a_budget_and_read_the_report(tmp_path: Path) -> None:
    out = tmp_path / "fast.onnx"
    opts = convopt.OptimizeOptions(model=example_model_path(), output=out, ort=FAST,
                                   data=convopt.DataOptions(data=example_data_path()),
                                   budget=convopt.Budget(max_accuracy_drop=3.0))
    result = convopt.optimize(opts)
    assert out.is_file() and result.output == out
    report = result.report
    assert isinstance(report, convopt.Report) and report.budget is not None
    assert report.budget.limits["max_accuracy_drop"] == 3.0 and report.budget.decision_samples == 135
    assert report.final is not None and report.final.role == "report" and report.final.speedup is not None


def test_a_task_metric_is_a_plain_callable(tmp_path: Path) -> None:
    seen: list[int] = []

    def correct(outputs: dict, labels: object, inputs: dict) -> np.ndarray:
        (logits,) = outputs.values()
        seen.append(len(logits))
        return (logits.argmax(1) == labels).astype(float)

    opts = convopt.OptimizeOptions(model=example_model_path(), output=tmp_path / "m.onnx", ort=FAST,
                                   strategy="uniform", passes=("factorize",), rank=convopt.RankOptions(full_rank=True),
                                   data=convopt.DataOptions(data=example_data_path()), metric=correct,
                                   budget=convopt.Budget(max_metric_drop=0.05), require_faster=False)
    result = convopt.optimize(opts)
    final = result.report.final
    assert seen and final.accuracy.metric == "correct" and final.accuracy.metric_drop == 0.0
    assert result.report.budget.bound["max_metric_drop"] < 0.05  # a full-rank rewrite flips nothing
