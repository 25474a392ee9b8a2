"""Executors without Ray: the shard plan, figures rebuilt exactly from per-shard pieces, the local executor's
map-reduce, the options, the report's executor record and the one-line refusal when the ray extra is missing."""
from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from convopt.cli import app
from convopt.errors import InputError
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.executor import ExecutorOptions, LocalExecutor, open_executor
from convopt.measure.metrics import compare_outputs, merge_outputs, output_partials
from convopt.measure.ort import OrtSettings
from convopt.measure.plugin import TaskMetric
from convopt.measure.shards import plan_shards
from tests.test_measure_evaluator import with_bias
from tests.test_measure_helpers import classifier_weights, numpy_classifier, tiny_classifier, two_output_model

FAST = OrtSettings(warmup=1, repeats=3, batch_size=4, threads=1)
runner = CliRunner()


def images(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(np.float32)


def conv_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """tiny_classifier's ReLU activation 'r' (N, classes, H, W) in float64."""
    n, _, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd)) + b.astype(np.float64)[None, :, None, None]
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j].astype(np.float64))
    return np.maximum(out, 0)


def shifted(bias_shift: float = 1.0, cls: int = 2):
    _, b = classifier_weights()
    b = b.copy()
    b[cls] += bias_shift
    return with_bias(tiny_classifier("N"), b)


@pytest.mark.parametrize("n,batch,size", [(1, 1, 256), (10, 4, 4), (10, 4, 5), (936, 1, 256), (937, 32, 256),
                                          (5, 8, 2), (1000, 1, 1)])
def test_shard_plan_covers_the_samples_in_whole_batches(n: int, batch: int, size: int) -> None:
    plan = plan_shards(n, batch, size)
    r = plan.ranges
    assert r[0][0] == 0 and r[-1][1] == n and len(r) == plan.count
    assert all(a < b for a, b in r) and all(r[i][1] == r[i + 1][0] for i in range(len(r) - 1))
    assert all(a % batch == 0 for a, _ in r)  # every shard starts a batch: the batches are the same everywhere
    sizes = [b - a for a, b in r[:-1]]
    assert not sizes or max(sizes) - min(sizes) <= batch  # as even as whole batches allow
    assert plan.count == min(-(-n // batch), -(-n // size))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), cuts=st.sets(st.integers(1, 11), max_size=5), seed=st.integers(0, 2**16))
def test_figures_from_any_split_are_identical(n: int, cuts: set[int], seed: int) -> None:
    """The pieces of any split, merged in order, give compare_outputs's figures to the last bit."""
    rng = np.random.default_rng(seed)
    ref = [rng.normal(size=(n, 7)).astype(np.float32), rng.normal(size=(n, 2, 3, 3)).astype(np.float32)]
    cand = [r + rng.normal(scale=0.3, size=r.shape).astype(np.float32) for r in ref]
    bounds = [0, *sorted(c for c in cuts if c < n), n]
    pieces = [output_partials([r[a:b] for r in ref], [c[a:b] for c in cand], ["s", "f"], b - a)
              for a, b in zip(bounds, bounds[1:])]
    assert merge_outputs(pieces) == compare_outputs(ref, cand, ["s", "f"])


def _measure(executor: LocalExecutor, data: EvalData, model=None, metric: TaskMetric | None = None):
    ev = Evaluator(tiny_classifier("N") if model is None else model, data, FAST, measure_latency=False,
                   metric=metric, executor=executor)
    return ev, ev.baseline(), ev.measure(shifted(), "shifted", timed=False)


def _same_outcomes(a, b) -> None:
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert (x is None and y is None) or np.array_equal(x, y, equal_nan=True), f.name


@pytest.mark.parametrize("metric", [False, True], ids=["labels", "metric"])
def test_local_shards_change_no_figure(metric: bool) -> None:
    x = images(23)
    labels = numpy_classifier(x, *classifier_weights()).argmax(axis=1)
    labels[:4] = (labels[:4] + 1) % 4
    m = TaskMetric.from_callable(lambda out, lab, inp: -np.abs(out["Y"]).sum(axis=1)) if metric else None
    runs = [_measure(LocalExecutor(size), EvalData({"X": x}, labels, "t"), metric=m) for size in (1, 4, 7, 1000)]
    ev0, base0, m0 = runs[0]
    assert ev0.executor.info().shards == {"evaluation": 6}  # whole batches of 4: 23 samples, 6 shards
    assert 0 < m0.accuracy.top1_agreement < 100  # informative: some predictions change
    for ev, base, meas in runs[1:]:
        assert base.to_dict() | {"seconds": 0} == base0.to_dict() | {"seconds": 0}
        assert meas.to_dict() | {"seconds": 0} == m0.to_dict() | {"seconds": 0}
        _same_outcomes(meas.outcomes, m0.outcomes)
        np.testing.assert_array_equal(ev.reference[0], ev0.reference[0])
    assert (m0.accuracy.metric is not None) == metric and (m0.accuracy.labelled_top1 is not None) != metric


def test_reference_outputs_are_the_original_run_over_all_samples() -> None:
    x = images(10)
    ev = Evaluator(tiny_classifier(2), EvalData({"X": x}, None, "t"), FAST, executor=LocalExecutor(4))
    np.testing.assert_allclose(ev.reference[0], numpy_classifier(x, *classifier_weights()), rtol=1e-4, atol=1e-5)
    assert ev.reference[0].shape == (10, 4)


@pytest.mark.parametrize("batch", ["N", 4], ids=["dynamic", "fixed-4"])
def test_map_reduce_sums_an_intermediate_tensor(batch: int | str) -> None:
    """Σ over samples of the ReLU activation and of its square per channel; a fixed batch pads the last
    batch (10 = 4 + 4 + 2), and the padding never reaches the reducer."""
    x = images(10)
    seen: list[int] = []

    def reducer(t):
        seen.append(t["r"].shape[0])
        return t["r"].astype(np.float64).sum(axis=0), (t["r"].astype(np.float64) ** 2).sum(axis=(0, 2, 3))

    total, sq = LocalExecutor(4).map_reduce(tiny_classifier(batch), ["r"], EvalData({"X": x}, None, "t"),
                                            reducer, FAST)
    r = conv_relu(x, *classifier_weights())
    np.testing.assert_allclose(total, r.sum(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sq, (r ** 2).sum(axis=(0, 2, 3)), rtol=1e-5)
    assert sum(seen) == 10 and max(seen) <= 4


def test_map_reduce_refuses_changing_shapes() -> None:
    x = images(6)
    with pytest.raises(ValueError, match="same shapes for every batch"):
        LocalExecutor(2).map_reduce(tiny_classifier("N"), ["Y"], EvalData({"X": x}, None, "t"),
                                    lambda t: (t["Y"],), OrtSettings(batch_size=4, threads=1))


def test_executor_options_are_checked() -> None:
    with pytest.raises(InputError, match="--executor must be local or ray"):
        ExecutorOptions("dask")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="--ray-address is for --executor ray"):
        ExecutorOptions("local", "auto")
    assert isinstance(open_executor(ExecutorOptions(), threads=1), LocalExecutor)


def test_missing_ray_extra_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    for name in ("convopt.measure.ray_executor", "convopt.measure.ray_connect"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_classifier("N").SerializeToString())
    out = tmp_path / "o.onnx"
    r = runner.invoke(app, ["optimize", str(model), "-o", str(out), "--executor", "ray", "-q"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ['error: --executor ray needs Ray: pip install "convopt[ray]" '
                                             "(or use --executor local)"]
    assert not out.exists()


def test_report_records_the_executor(tmp_path: Path) -> None:
    model, data, rep = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "r.json"
    model.write_bytes(tiny_classifier("N").SerializeToString())
    np.savez(data, X=images(40))
    r = runner.invoke(app, ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--data", str(data),
                            "--strategy", "uniform", "--report", str(rep), "--keep-slower", "--repeats", "2", "-q"])
    assert r.exit_code == 0, r.output
    ex = json.loads(rep.read_text())["settings"]["executor"]
    assert ex["kind"] == "local" and ex["workers"] == 1 and ex["shards"] == {"select": 1, "report": 1}
    assert "never on workers" in ex["latency"] and ex["worker_restarts"] == 0
    assert ex["work"]["select"]["comparisons"] >= 1 and ex["work"]["report"]["comparisons"] == 2  # original, final


def test_two_outputs_merge_like_one_pass() -> None:
    x = np.random.default_rng(1).normal(size=(9, 6)).astype(np.float32)
    data = EvalData({"X": x}, None, "t")
    evs = [Evaluator(two_output_model(), data, FAST, measure_latency=False, executor=LocalExecutor(s))
           for s in (2, 100)]
    a, b = (e.baseline().to_dict() | {"seconds": 0} for e in evs)
    assert a == b and [o["shape"] for o in a["outputs"]] == [[9, 3], [9, 6]]


def test_map_reduce_on_mapped_data_gives_the_same_sums_and_drops_each_batch_s_pages(monkeypatch) -> None:
    """Data mapped from a file (measure.mapped.on_disk) reduce to the same sums, and their pages are dropped
    after each batch is read."""
    import convopt.measure.mapped as mapped
    import convopt.measure.shards as shards

    monkeypatch.setattr(mapped, "tmp_on_disk", lambda: True)
    d = EvalData({"X": images(10)}, None, "t")
    m = mapped.on_disk(d)
    calls: list[int] = []
    monkeypatch.setattr(shards, "evict", lambda data: (calls.append(data.n), mapped.evict(data))[1])

    def reducer(t):
        return (t["r"].astype(np.float64).sum(axis=0),)

    (a,), (b,) = (LocalExecutor(4).map_reduce(tiny_classifier("N"), ["r"], x, reducer, FAST) for x in (d, m))
    np.testing.assert_array_equal(a, b)
    assert len(calls) >= 2 * 3  # each run over 10 samples, in batches of at most 4
