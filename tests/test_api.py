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


def test_each_data_role_is_mapped_from_a_file_where_the_temporary_folder_is_on_a_disk() -> None:
    """load_roles: fit, select and report inputs are read-only maps of temporary files (on a tmpfs, where
    the file would be memory too, arrays in memory), with the same samples as the split of the data."""
    import tempfile

    import onnx

    from convopt.api import _load_roles, load_roles
    from convopt.pages import disk_backed
    from convopt.pages import mapping_of

    opts = convopt.OptimizeOptions(model=example_model_path(), data=convopt.DataOptions(data=example_data_path()))
    model = onnx.load(str(example_model_path()))
    roles, plain = load_roles(model, opts, "auto"), _load_roles(model, opts, "auto")
    on_disk = disk_backed(Path(tempfile.gettempdir()))
    for mine, theirs in ((roles.fit, plain.fit), (roles.select, plain.select), (roles.report, plain.report)):
        assert mine is not None and theirs is not None
        for name, a in mine.inputs.items():
            assert (mapping_of(a) is not None) == on_disk
            np.testing.assert_array_equal(a, theirs.inputs[name])
        assert list(mine.index) == list(theirs.index)


def test_each_data_set_is_mapped_as_it_is_read_and_each_role_as_it_is_split_off(monkeypatch) -> None:
    """load_roles never holds a set and its roles' copies at once: --data is mapped once read, then each of
    its three parts as soon as the split makes it, and the pages of the set each part read are dropped."""
    import onnx

    import convopt.measure.mapped as mapped
    import convopt.measure.roles as roles_mod
    from convopt.api import load_roles

    kept: list[int] = []
    evicted: list[int] = []
    real = mapped.on_disk
    monkeypatch.setattr(mapped, "on_disk", lambda d: (kept.append(d.n), real(d))[1])
    monkeypatch.setattr(roles_mod, "evict", lambda d: evicted.append(d.n))
    opts = convopt.OptimizeOptions(model=example_model_path(), data=convopt.DataOptions(data=example_data_path()))
    roles = load_roles(onnx.load(str(example_model_path())), opts, "auto")
    n = roles.fit.n + roles.select.n + roles.report.n
    assert kept == [n, roles.fit.n, roles.select.n, roles.report.n] and evicted == [n, n, n]
