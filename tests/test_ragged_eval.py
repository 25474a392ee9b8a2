"""Evaluating samples of different shapes: each sample runs alone, shards hold whole samples, figures do not
depend on the sharding, metrics get one array per sample, agreement is per sample (also for outputs with
several rows per sample), latency is timed on one representative sample, auto's statistics and INT8
calibration go sample by sample."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import onnx
import pytest

from convopt.auto.stats import patch_moments
from convopt.core.plan import conv_table
from convopt.graph.edit import with_outputs
from convopt.measure.data import EvalData, load_eval_data
from convopt.measure.evaluator import Evaluator
from convopt.measure.executor import LocalExecutor
from convopt.measure.metrics import compare_outputs, output_partial
from convopt.measure.ort import OrtSettings, latency_feeds, make_session, run_model
from convopt.measure.plugin import TaskMetric
from convopt.measure.samples import ragged
from convopt.quantize import quantize_int8
from tests.ragged_helpers import ctc_like_model, pooled_classifier, ragged_samples, save_keyed

FAST = OrtSettings(warmup=1, repeats=3, batch_size=4, threads=1)


def _data(n: int = 9, seed: int = 0, labels: np.ndarray | None = None, channels: int = 1) -> EvalData:
    return EvalData({"x": ragged(ragged_samples(n, seed, channels=channels))}, labels, "ragged test data")


def _alone(model: onnx.ModelProto, data: EvalData) -> list[np.ndarray]:
    """Output 0 of each sample run on its own."""
    sess = make_session(model, FAST)
    return [sess.run(None, {"x": x})[0] for x in data.inputs["x"]]


@pytest.mark.parametrize("model", [ctc_like_model(), pooled_classifier()], ids=["batch-1", "dynamic-batch"])
def test_each_sample_runs_alone(model: onnx.ModelProto) -> None:
    data = _data(channels=3 if model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3 else 1)
    (out,) = run_model(make_session(model, FAST), data, FAST)
    assert out.dtype == object and out.shape == (data.n,)
    for got, want in zip(out, _alone(model, data)):
        np.testing.assert_array_equal(got, want)  # the same bits as the sample run by itself


def _measure(executor: LocalExecutor, data: EvalData, metric: TaskMetric | None = None):
    ev = Evaluator(ctc_like_model(), data, FAST, measure_latency=False, metric=metric, executor=executor)
    return ev, ev.measure(ctc_like_model(shift=-1.0), "shifted", timed=False)


def test_shards_hold_whole_samples_and_change_no_figure() -> None:
    data = _data(11)
    metric = TaskMetric.from_callable(lambda out, lab, inp: np.array([float(o.max()) for o in out["logits"]]))
    runs = [_measure(LocalExecutor(size), data, metric) for size in (1, 3, 1000)]
    ev0, m0 = runs[0]
    assert 0 < m0.accuracy.top1_agreement < 100  # informative: some samples read differently
    for ev, meas in runs[1:]:
        assert meas.to_dict() | {"seconds": 0} == m0.to_dict() | {"seconds": 0}
        for f in fields(meas.outcomes):
            x, y = getattr(meas.outcomes, f.name), getattr(m0.outcomes, f.name)
            assert (x is None and y is None) or np.array_equal(x, y), f.name
        for a, b in zip(ev.reference[0], ev0.reference[0]):
            np.testing.assert_array_equal(a, b)
    ref, cand = _alone(ctc_like_model(), data), _alone(ctc_like_model(shift=-1.0), data)
    err = [float(np.sum((c.astype(np.float64) - r) ** 2)) for r, c in zip(ref, cand)]
    np.testing.assert_allclose(m0.outcomes.err_sq, err, rtol=1e-12)  # per sample, whatever its width
    agree = [bool(np.all(r.argmax(-1) == c.argmax(-1))) for r, c in zip(ref, cand)]
    np.testing.assert_array_equal(m0.outcomes.agree, agree)
    assert m0.outputs[0]["shape"] == [sum(r.shape[0] for r in ref), 1, 6]


def test_a_metric_gets_one_array_per_sample_for_ragged_data_and_arrays_otherwise() -> None:
    seen: list[dict] = []

    def record(outputs, labels, inputs):
        seen.append({"inputs": inputs["x"], "outputs": outputs["logits"], "labels": labels})
        n = len(inputs["x"])
        return np.ones(n)

    data = _data(5, labels=np.arange(5 * 2).reshape(5, 2))
    _measure(LocalExecutor(2), data, TaskMetric.from_callable(record))
    first = seen[0]  # the original's first shard: samples 0 and 1
    assert isinstance(first["inputs"], list) and [x.shape for x in first["inputs"]] == [
        x.shape for x in data.inputs["x"][:2]]
    assert [o.shape for o in first["outputs"]] == [(x.shape[3], 1, 6) for x in data.inputs["x"][:2]]
    np.testing.assert_array_equal(first["labels"], [[0, 1], [2, 3]])  # the shard's rows of labels
    assert not first["inputs"][0].flags.writeable and not first["outputs"][0].flags.writeable
    seen.clear()
    fixed = EvalData({"x": np.stack([s[0] for s in ragged_samples(4, 3)][:1] * 4)}, None, "fixed")
    Evaluator(ctc_like_model(), fixed, FAST, measure_latency=False, metric=TaskMetric.from_callable(record))
    assert isinstance(seen[0]["inputs"], np.ndarray) and seen[0]["inputs"].shape[0] == 4  # unchanged contract
    assert seen[0]["outputs"].shape[1:] == (1, 6)


def test_several_rows_per_sample_agree_only_when_every_row_does() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3 * 5, 1, 7)).astype(np.float32)  # 3 samples of 5 positions, [T, 1, C] each
    cand = ref.copy()
    row = 5 + 2  # sample 1, position 2: another class wins
    cand[row, 0, ref[row, 0].argmin()] = ref[row, 0].max() + 1  # the last class moves to the top
    p = output_partial(ref, cand, 3, "logits")
    np.testing.assert_array_equal(p.agree, [True, False, True])
    assert p.shared.shape == (3,) and p.shared[0] == 5 and p.shared[1] == pytest.approx(4.8)  # 4 of 5 shared at one row
    assert compare_outputs([ref], [cand])["top1_agreement"] == pytest.approx(100 * 14 / 15)  # rows as samples
    split = [ragged([ref[i * 5:(i + 1) * 5] for i in range(3)]), ragged([cand[i * 5:(i + 1) * 5] for i in range(3)])]
    q = output_partial(*split, 3, "logits")
    np.testing.assert_array_equal(q.agree, p.agree)
    np.testing.assert_allclose(q.diff_sq, p.diff_sq)
    with pytest.raises(ValueError, match="sample 1: reference shape"):
        output_partial(split[0], ragged([cand[:5], cand[5:9], cand[10:]]), 3, "logits")


def test_fixed_width_multi_row_outputs_are_judged_per_sample() -> None:
    x = np.random.default_rng(5).random((8, 1, 8, 16), dtype=np.float32)  # one width: [8·16, 1, 6] outputs
    ev = Evaluator(ctc_like_model(), EvalData({"x": x}, None, "fixed"), FAST, measure_latency=False)
    m = ev.measure(ctc_like_model(shift=-1.0), "shifted", timed=False)
    ref = ev.reference[0].reshape(8, 16, 6)
    cand = run_model(make_session(ctc_like_model(shift=-1.0), FAST), ev.data, FAST)[0].reshape(8, 16, 6)
    same = ref.argmax(-1) == cand.argmax(-1)
    assert m.outcomes.agree.shape == (8,) and 0 < same.all(axis=1).sum() < 8 and same.mean() > 0.95
    np.testing.assert_array_equal(m.outcomes.agree, same.all(axis=1))  # samples, not positions
    assert m.accuracy.top1_agreement == pytest.approx(100 * same.all(axis=1).mean())


def test_labels_on_ragged_class_scores() -> None:
    data = _data(8, channels=3)
    ref = np.concatenate(_alone(pooled_classifier(), data)).argmax(axis=1)
    ev = Evaluator(pooled_classifier(), EvalData(data.inputs, ref, "ragged labelled"), FAST, measure_latency=False)
    assert ev.original_accuracy == {"top1": 100.0, "top5": 100.0} and ev.scored_index == 0


def test_latency_is_timed_on_the_timing_sample(tmp_path: Path) -> None:
    data = load_eval_data(ctc_like_model(), save_keyed(tmp_path / "d.npz", ragged_samples(7)))
    sess = make_session(ctc_like_model(), FAST)
    feeds = latency_feeds(sess, data.subset(np.array([0, 1]), "two"), FAST)
    np.testing.assert_array_equal(feeds["x"], data.timing.feeds["x"])
    m = Evaluator(ctc_like_model(), data, FAST).baseline()
    assert m.latency is not None and m.latency.original.batch == 1


def test_map_reduce_and_patch_moments_go_sample_by_sample() -> None:
    data = _data(4)
    model = ctc_like_model()
    sums = LocalExecutor(2).map_reduce(model, ["r1"], data, lambda t: (t["r1"].sum(axis=(0, 2, 3)),), FAST)
    inner = make_session(with_outputs(model, ["r1"]), FAST)
    r1 = [inner.run(["r1"], {"x": x})[0] for x in data.inputs["x"]]
    np.testing.assert_allclose(sums[0], sum(r.sum(axis=(0, 2, 3)) for r in r1), rtol=1e-5)
    conv2 = conv_table(model, {"x": (1, 1, 8, 12)})["conv2"]  # shapes at one width; the samples have others
    (moments,) = list(patch_moments(model, [conv2], data, FAST))
    # every output pixel of every sample is sampled (at most 8 x 23 per sample): the moments are exact sums
    patches = np.concatenate([_im2col(r) for r in r1])
    np.testing.assert_allclose(moments["conv2"].second, patches.T @ patches / len(patches), rtol=1e-4, atol=1e-6)
    assert moments["conv2"].count == len(patches)


def _im2col(z: np.ndarray) -> np.ndarray:
    """All 3×3 patches (pad 1) of z (1, C, H, W) → (H·W, C·9), order (c, a, b)."""
    _, c, h, w = z.shape
    zp = np.pad(z[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    cols = [zp[:, i:i + 3, j:j + 3].reshape(-1) for i in range(h) for j in range(w)]
    return np.stack(cols)


def test_int8_calibrates_on_ragged_data() -> None:
    model = ctc_like_model(channels=16)
    q = quantize_int8(model, _data(6)).model
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    outs = run_model(make_session(q, FAST), _data(3, seed=1), FAST)[0]
    assert [o.shape for o in outs] == [(x.shape[3], 1, 6) for x in _data(3, seed=1).inputs["x"]]
