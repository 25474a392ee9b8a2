"""Auto mode: least-squares refits, candidate latency cache, greedy selection under a budget, end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from convopt.auto import AutoOptions, LayerLatencyCache, auto_optimize
from convopt.auto.candidates import build_candidates
from convopt.auto.latency import candidate_model, measure_candidates
from convopt.auto.lstsq import ConvGeom, NormalEquations, im2col_at, pixels_at, sample_positions
from convopt.auto.refit import collect_targets, fit_plan, refit_layer, refit_sequential
from convopt.auto.select import Choice, greedy_sequence
from convopt.core.budget import Budget
from convopt.core.driver import conv_shapes
from convopt.core.plan import Plan, apply_plan, conv_table
from convopt.graph import ConvSpec, read_convs
from convopt.measure.data import EvalData
from convopt.measure.roles import fit_size, split_data
from convopt.measure.evaluator import Evaluator
from convopt.measure.measurement import Accuracy
from convopt.measure.ort import OrtSettings, make_session

FAST = OrtSettings(threads=1, warmup=1, repeats=5, batch_size=8)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def two_conv_model(seed: int = 0, c: int = 16, hw: int = 12, batch: str | int = "N") -> onnx.ModelProto:
    """x (N, 8, hw, hw) → Conv3x3 (c) → Relu → Conv3x3 (c) → Relu → GlobalAveragePool → Flatten → (N, c).
    Weights are low-rank-ish (a smooth spectrum) so truncation is lossy but sensible."""
    rng = np.random.default_rng(seed)

    def weight(o: int, i: int) -> np.ndarray:
        r = min(i * 3, o * 3)
        U, _ = np.linalg.qr(rng.standard_normal((i * 3, r)))
        V, _ = np.linalg.qr(rng.standard_normal((o * 3, r)))
        M = (U * 0.8 ** np.arange(r)) @ V.T * np.sqrt(r)
        return (M.reshape(i, 3, o, 3).transpose(2, 0, 1, 3) / np.sqrt(i * 9)).astype(np.float32)

    W1, W2 = weight(c, 8), weight(c, c)
    b1, b2 = ((rng.standard_normal(c) * 0.1).astype(np.float32) for _ in range(2))
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["y1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2", "b2"], ["y2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["out"], name="flat"),
    ]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 8, hw, hw])],
                          [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [batch, c])],
                          [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def data(n: int = 24, seed: int = 1, hw: int = 12) -> EvalData:
    """Correlated inputs (channels mixed with decaying scales, pixels smoothed), like real activations:
    the data-free SVD is optimal only for white inputs, so a refit has something to correct."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 8, hw + 2, hw + 2))
    z = (z[:, :, 1:-1, 1:-1] + 0.5 * (z[:, :, :-2, 1:-1] + z[:, :, 2:, 1:-1] + z[:, :, 1:-1, :-2] + z[:, :, 1:-1, 2:]))
    mix = np.random.default_rng(99).standard_normal((8, 8)) * 0.6 ** np.arange(8)
    x = np.einsum("ij,njhw->nihw", mix, z).astype(np.float32)
    return EvalData({"x": x}, None, f"random {n}")


# -- lstsq ------------------------------------------------------------------------------------------------


def test_im2col_at_reproduces_ort_conv_with_stride_and_pads() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    W = rng.standard_normal((4, 3, 1, 3)).astype(np.float32)
    geom = ConvGeom((1, 3), (2, 1), (0, 1, 0, 1), (1, 1))
    node = helper.make_node("Conv", ["z", "W"], ["y"], kernel_shape=[1, 3], strides=[2, 1], pads=[0, 1, 0, 1])
    g = helper.make_graph([node], "c", [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 3, 9, 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [numpy_helper.from_array(W, "W")])
    y = make_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), FAST).run(None, {"z": z})[0]
    assert y.shape[2:] == geom.out_hw(9, 8)
    pos = sample_positions(2, y.shape[2], y.shape[3], 10, np.random.default_rng(1))
    np.testing.assert_allclose(im2col_at(z, geom, pos) @ W.reshape(4, -1).T.astype(np.float64), pixels_at(y, pos),
                               rtol=1e-4, atol=1e-4)


def test_normal_equations_recover_a_linear_map_and_bias() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 6))
    Wt, bt = rng.standard_normal((3, 6)), rng.standard_normal(3)
    ne = NormalEquations(6, 3)
    for part in np.array_split(np.arange(500), 4):  # accumulated over batches
        ne.add(X[part], X[part] @ Wt.T + bt)
    W, b = ne.solve(ridge=1e-10)
    np.testing.assert_allclose(W, Wt, atol=1e-6)
    np.testing.assert_allclose(b, bt, atol=1e-6)
    assert ne.rel_error(W, b) < 1e-6 < ne.rel_error(np.zeros_like(W), np.zeros(3))


def test_normal_equations_solve_by_cholesky_in_one_copy_and_fall_back_when_singular() -> None:
    """The ridge solution equals a general solve of the gram; AᵀA is left as it was; numpy's workspace stays
    near one (F+1)² array (a general solve and an inverse took three); a singular gram (no rows) still solves."""
    import tracemalloc

    rng = np.random.default_rng(3)
    F, O = 300, 4
    ne = NormalEquations(F, O)
    X = rng.standard_normal((900, F)).astype(np.float32)
    ne.add(X, X[:, :O] * 2.0 + 1.0)
    before = ne.AtA.copy()
    tracemalloc.start()
    W, b = ne.solve(1e-5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    w = np.linalg.solve(ne.gram(1e-5), ne.AtY)
    np.testing.assert_allclose(W, w[:F].T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b, w[F], rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(ne.AtA, before)
    assert peak <= 1.3 * (F + 1) ** 2 * 8
    empty = NormalEquations(5, 2)  # AᵀA = 0: not positive definite, least squares instead
    W0, b0 = empty.solve()
    assert np.all(W0 == 0) and np.all(b0 == 0)


def test_relu_refit_fits_the_response_after_the_relu_better_than_linear_least_squares() -> None:
    from convopt.auto.lstsq import relu_error, relu_refit

    rng = np.random.default_rng(1)
    X = rng.standard_normal((4000, 12)).astype(np.float32)
    Wt, bt = rng.standard_normal((5, 12)), rng.standard_normal(5) * 0.5
    lin = X @ Wt.T + bt
    Y = np.where(lin > 0, lin, 4.0 * lin - 0.5 * lin ** 2)  # the dead side is far from linear; a ReLU hides it
    ne = NormalEquations(12, 5)
    for part in np.array_split(np.arange(4000), 3):
        ne.add(X[part], Y[part])
    W0, b0 = ne.solve()
    e_lin = relu_error(X, Y, W0, b0)
    W1, b1, e_relu = relu_refit(ne, X, Y)
    assert e_relu == pytest.approx(relu_error(X, Y, W1, b1))
    assert e_relu < 0.5 * e_lin, (e_lin, e_relu)
    assert relu_error(X, Y, Wt, bt) < 1e-5  # the true map is exact after the ReLU: the target is reachable


def test_targets_mark_layers_that_feed_only_a_relu() -> None:
    from convopt.auto.refit import feeds_only_relu

    m = two_conv_model()
    assert feeds_only_relu(m, "y1") and feeds_only_relu(m, "y2")
    assert not feeds_only_relu(m, "r1")  # read by a Conv
    assert not feeds_only_relu(m, "out")  # a graph output
    d = data(4)
    t = collect_targets(m, {"conv1": "y1", "conv2": "y2"}, d, FAST, rows=200)
    assert t.relu == {"conv1": True, "conv2": True}
    # the targets wait on disk and read back as the original layer's outputs at the sampled pixels
    from convopt.auto.spill import Spill
    from convopt.graph.edit import with_outputs
    from convopt.measure.ort import make_session

    assert isinstance(t.y, Spill)
    y1 = make_session(with_outputs(m, ["y1"]), FAST).run(["y1"], dict(d.inputs))[0]
    p = t.pos["conv1"]
    assert len(p) == 200
    np.testing.assert_array_equal(t.y["conv1"], y1[p[:, 0], :, p[:, 1], p[:, 2]])


def test_run_bytes_reads_the_driver_s_shapes_with_the_user_s_input_shape() -> None:
    """A model of dynamic H×W: what a run holds per sample comes from the shapes the driver inferred with
    --input-shape (two 16×12×12 activations alive at once), where shape inference alone knows none."""
    from convopt.auto.refit import run_bytes
    from convopt.core.driver import Driver
    from convopt.graph import infer_tensor_shapes, peak_live_bytes

    m = two_conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    driver = Driver(m, {"x": (1, 8, 12, 12)})
    assert run_bytes(driver.base, driver.shapes, driver.convs.values()) == 2 * 16 * 12 * 12 * 4
    assert peak_live_bytes(driver.base, infer_tensor_shapes(driver.base)) == 0


def test_targets_collected_in_groups_bounded_per_sample_are_the_same(monkeypatch) -> None:
    """A cap below one layer's output per sample runs each layer alone: the same pixels and values as one run."""
    import convopt.auto.refit as refit_mod

    m = two_conv_model()
    specs = conv_table(m, conv_shapes(m, None))
    layers = {"conv1": "y1", "conv2": "y2"}
    one = collect_targets(m, layers, data(4), FAST, rows=200, specs=specs)
    runs: list[list[str]] = []
    real = refit_mod.iter_batches

    def spy(model, names, *a, **k):  # type: ignore[no-untyped-def]
        runs.append(list(names))
        return real(model, names, *a, **k)

    monkeypatch.setattr(refit_mod, "iter_batches", spy)
    monkeypatch.setattr(refit_mod, "ACTIVATION_BYTES", 1)
    apart = collect_targets(m, layers, data(4), FAST, rows=200, specs=specs)
    assert runs == [["y1"], ["y2"]]
    for k in layers:
        np.testing.assert_array_equal(apart.pos[k], one.pos[k])
        np.testing.assert_array_equal(apart.y[k], one.y[k])


# -- refit ------------------------------------------------------------------------------------------------


def _factorized(model: onnx.ModelProto, rank: int) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    convs = conv_table(model, conv_shapes(model, None))
    choices, layers = {}, []
    for c in convs.values():
        cands, _ = build_candidates(c, ["factorize"], align=1)
        choices[c.name] = min(cands, key=lambda k: abs(k.choice.ranks["rank"] - rank)).choice
        layers.append((c.name, c.y))
    return apply_plan(model, Plan(choices), convs).model, layers


def test_sequential_refit_lowers_layer_and_output_error_vs_data_free() -> None:
    model = two_conv_model()
    calib, held = data(32, seed=1), data(32, seed=2)
    df, layers = _factorized(model, rank=6)
    targets = collect_targets(model, dict(layers), calib, FAST, rows=4000)
    refit, infos = refit_sequential(df, layers, targets, calib, FAST)
    assert [i.layer for i in infos] == ["conv1", "conv2"]
    for i in infos:  # each layer's output error on calibration pixels falls
        assert i.kept and i.rel_error_after < 0.9 * i.rel_error_before, i
    ev = Evaluator(model, held, FAST, measure_latency=False)  # held-out samples, never used to fit
    e_df = ev.measure(df).accuracy.rel_l2_error
    e_rf = ev.measure(refit).accuracy.rel_l2_error
    assert e_rf < 0.8 * e_df
    onnx.checker.check_model(refit)


def test_sequential_refit_in_place_gives_the_copy_s_weights_and_leaves_the_input_alone() -> None:
    model = two_conv_model()
    calib = data(16, seed=1)
    df, layers = _factorized(model, rank=6)
    targets = collect_targets(model, dict(layers), calib, FAST, rows=2000)
    before = df.SerializeToString()
    copied, _ = refit_sequential(df, layers, targets, calib, FAST)
    assert df.SerializeToString() == before and copied is not df  # the default copies
    own, _ = refit_sequential(df, layers, targets, calib, FAST, copy=False)
    assert own is df and own.SerializeToString() == copied.SerializeToString()


def test_alone_refit_on_the_layer_input_matches_the_in_model_refit() -> None:
    from convopt.auto.refit import iter_batches

    model = two_conv_model()
    calib = data(16, seed=1)
    specs = conv_table(model, conv_shapes(model, None))
    targets = collect_targets(model, {"conv2": "y2"}, calib, FAST, rows=2000)
    cands = build_candidates(specs["conv2"], ["factorize", "bottleneck"])[0][:3]
    assert len(cands) == 3
    for cand in cands:
        plan, _ = fit_plan(model, Plan({"conv2": cand.choice}), specs, targets, calib, FAST)
        in_model = apply_plan(model, plan, specs).model
        x = np.concatenate([b for _, (b,) in iter_batches(model, ["r1"], calib, FAST)])
        single = candidate_model(specs["conv2"], cand.choice, "N")  # the vehicle of the refit alone
        info = refit_layer(single, "conv2", "y", targets, EvalData({"x": x}, None, "r1"), FAST)
        assert info.kept and info.weight is not None and info.bias is not None
        refit = cand.choice.with_factors(cand.choice.factors.with_last(info.weight, info.bias))
        alone = apply_plan(model, Plan({"conv2": refit}), specs).model
        a = make_session(in_model, FAST).run(None, calib.inputs)[0]
        b = make_session(alone, FAST).run(None, calib.inputs)[0]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(np.abs(a).max()))
        dense = make_session(model, FAST).run(None, calib.inputs)[0]
        assert not np.allclose(b, dense)  # a real (lossy) rewrite, not the original
        onnx.checker.check_model(alone)


def test_iter_batches_bounds_each_batch_by_the_per_sample_bytes() -> None:
    """The first sample runs alone and tells what the asked arrays take; batches then hold at most
    ACTIVATION_BYTES per the larger of that and the stated per-sample size (the run's largest activation),
    and together give the same arrays as one run of every sample."""
    from convopt.auto.refit import ACTIVATION_BYTES, iter_batches
    from convopt.graph.edit import with_outputs

    model, calib = two_conv_model(), data(16, seed=1)
    whole = make_session(with_outputs(model, ["r1"]), FAST).run(["r1"], calib.inputs)[0]
    assert FAST.batch_size == 8  # the session's batch caps what the bytes allow
    for stated, sizes in ((0, [1, 8, 7]), (ACTIVATION_BYTES // 4, [1, 4, 4, 4, 3])):
        got = list(iter_batches(model, ["r1"], calib, FAST, sample_bytes=stated))
        assert [b.shape[0] for _, (b,) in got] == sizes
        assert [s for s, _ in got] == list(np.cumsum([0] + sizes[:-1]))
        np.testing.assert_allclose(np.concatenate([b for _, (b,) in got]), whole, rtol=1e-5, atol=1e-6)


# -- latency cache ----------------------------------------------------------------------------------------


def test_latency_cache_hits_on_a_repeated_shape(tmp_path: Path) -> None:
    model = two_conv_model(c=8)  # conv1 and conv2 both 8→8 3×3 at 12×12: the same key
    shapes = conv_shapes(model, None)
    c1, c2 = [c for c in read_convs(model, shapes) if isinstance(c, ConvSpec)]
    cache = LayerLatencyCache(tmp_path / "lat.json")
    k1, _ = build_candidates(c1, ["factorize"], align=1)
    dense1, ms1 = measure_candidates(c1, [(k.key, candidate_model(c1, k.choice, 8)) for k in k1], 8, FAST, cache)
    assert cache.hits == 0 and cache.misses == 1 + len(k1)
    k2, _ = build_candidates(c2, ["factorize"], align=1)
    dense2, ms2 = measure_candidates(c2, [(k.key, candidate_model(c2, k.choice, 8)) for k in k2], 8, FAST, cache)
    assert cache.hits == 1 + len(k2) and ms2 == ms1 and dense2 == dense1
    cache.save()
    again = LayerLatencyCache(tmp_path / "lat.json")
    assert len(again) == len(cache) and again.get(next(iter(cache._data))) is not None


# -- selection --------------------------------------------------------------------------------------------


def test_greedy_sequence_orders_by_saving_per_cost_and_upgrades_within_a_layer() -> None:
    ch = [Choice("a", "a-low", 1.0, 0.10), Choice("a", "a-high", 3.0, 0.50), Choice("b", "b", 2.0, 0.05),
          Choice("c", "c-slower", -0.5, 0.0)]
    seq = greedy_sequence(ch)
    assert [sorted((k, v.key) for k, v in cfg.items()) for cfg in seq] == [
        [], [("b", "b")], [("a", "a-low"), ("b", "b")], [("a", "a-high"), ("b", "b")]]
    assert all("c" not in cfg for cfg in seq)  # a slower candidate is never used


def test_grid_steps_are_fixed_in_advance_and_dense_where_a_tight_budget_binds() -> None:
    from convopt.auto.select import grid_steps

    assert grid_steps(5, 12) == [1, 2, 3, 4, 5] and grid_steps(0, 12) == []
    g = grid_steps(63, 12)
    assert g[:4] == [1, 2, 3, 5] and g[-1] == 63 and len(g) <= 12 and g == sorted(set(g))
    gaps = [b - a for a, b in zip(g, g[1:])]
    assert gaps == sorted(gaps)  # spacing only grows


def test_budget_usage_is_the_largest_share_of_any_limit() -> None:
    acc = Accuracy(top1_drop=0.5, top1_agreement=96.0, rel_l2_error=0.02)
    assert Budget(max_accuracy_drop=1.0).usage(acc) == pytest.approx(0.5)
    assert Budget(min_agreement=98.0).usage(acc) == pytest.approx(2.0)
    assert Budget(max_accuracy_drop=1.0, max_rel_error=0.01).usage(acc) == pytest.approx(2.0)
    assert Budget(max_accuracy_drop=1.0).usage(Accuracy(top1_drop=-0.4)) == pytest.approx(-0.4)
    assert Budget(max_accuracy_drop=1.0).usage(Accuracy(top1_drop=None)) == float("inf")
    assert Budget(max_rel_error=0.0).usage(Accuracy(rel_l2_error=0.0)) == 0.0


# -- end to end -------------------------------------------------------------------------------------------


def run_auto(model: onnx.ModelProto, d: EvalData, budget: Budget | None, options: AutoOptions = AutoOptions(),
             **kw: object):
    """auto_optimize on ``d`` split three ways (fit, select, report), as the CLI does with --data alone."""
    roles = split_data(d, fit_size(d.n, 128), seed=0)
    assert roles.fit is not None
    select = Evaluator(model, roles.select, FAST, role="select")
    report = Evaluator(model, roles.report, FAST, role="report")
    res = auto_optimize(model, fit=roles.fit, select=select, report=report, budget=budget, settings=FAST,
                        options=options, **kw)  # type: ignore[arg-type]
    return res, roles, select, report


def test_auto_optimize_keeps_budget_and_reports_per_layer_choices(tmp_path: Path) -> None:
    model = two_conv_model(c=32, hw=16)
    d = data(64, seed=3, hw=16)
    budget = Budget(max_rel_error=0.2)
    res, roles, select, report = run_auto(model, d, budget, AutoOptions(align=8, min_layer_speedup=0.0),
                                          latency_cache=tmp_path / "c.json")
    assert roles.fit.n + roles.select.n + roles.report.n == d.n
    rep = res.report
    assert [p.name for p in rep.passes] == ["fold_bn", "auto"]
    auto = rep.extra["auto"]
    assert auto["candidates"] and all(c["layer"] in ("conv1", "conv2") for c in auto["candidates"])
    assert all(c["data"] == "select" for c in auto["checks"])
    if rep.passes[1].rewritten:  # kept only when certified on the select data
        assert res.certificate is not None and res.certificate.ok
        assert res.certificate.bounds["max_rel_error"] <= 0.2
        assert res.final.role == "report" and res.final.samples == roles.report.n
    assert rep.final is not None and rep.to_json()
    for p in rep.passes[1].rewritten:
        assert p.node in auto["chosen"]


def test_auto_selects_by_fixed_sequence_on_the_select_data() -> None:
    model = two_conv_model(c=32, hw=16)
    seen: list[tuple[int, float]] = []
    checked: dict[int, bytes] = {}

    def on_step(k: int, m: onnx.ModelProto, meas) -> None:
        seen.append((k, meas.accuracy.rel_l2_error))
        checked[k] = m.SerializeToString()

    res, *_ = run_auto(model, data(64, seed=3, hw=16), Budget(max_rel_error=0.2),
                       AutoOptions(min_layer_speedup=0.0, every_step=True), on_step=on_step)
    auto = res.report.extra["auto"]
    n = len(auto["sequence"]) - 1
    assert n >= 2 and [k for k, _ in seen] == list(range(1, n + 1))  # every step measured, in order
    checks = auto["checks"]
    assert [c["rel_l2_error"] for c in checks] == [e for _, e in seen]
    first_fail = next((c["step"] for c in checks if not c["ok"]), n + 1)
    certified = [c["step"] for c in checks if c["ok"] and c["step"] < first_fail]
    kept = len(res.report.passes[1].rewritten) > 0
    chosen_step = max((c["step"] for c in checks if c["ok"] and c["step"] < first_fail and c["speedup"] > 1),
                      default=0)
    assert (chosen_step > 0) == kept
    if kept:  # the step taken is rebuilt from its plan (no model is held): the very model that was checked
        assert res.model.SerializeToString() == checked[chosen_step]
    assert all(c["bound"]["max_rel_error"] <= 0.2 for c in checks if c["step"] in certified)


def test_auto_optimize_never_keeps_a_rewrite_that_is_not_faster() -> None:
    model = two_conv_model()
    res, *_ = run_auto(model, data(24), Budget(max_rel_error=1.0), AutoOptions(min_layer_speedup=1e9))
    auto = res.report.passes[1]
    assert auto.status == "no_change" and not auto.rewritten
    assert {s.node for s in auto.skipped} == {"conv1", "conv2"}
    assert all("faster" in s.reason for s in auto.skipped)
    assert all(c["status"].startswith("slower") for c in res.report.extra["auto"]["candidates"])
    assert [n.op_type for n in res.model.graph.node].count("Conv") == 2


def test_auto_optimize_rolls_back_when_nothing_meets_a_zero_budget() -> None:
    model = two_conv_model()
    res, roles, _, report = run_auto(model, data(24), Budget(max_rel_error=0.0), AutoOptions(min_layer_speedup=0.0))
    assert not res.report.passes[1].rewritten
    assert [n.op_type for n in res.model.graph.node].count("Conv") == 2
    out = make_session(res.model, FAST).run(None, {"x": roles.report.inputs["x"][:4]})[0]
    np.testing.assert_allclose(out, report.reference[0][:4], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not (SHARED / "models" / "mnist-cntk.onnx").is_file(), reason=f"shared models not found at {SHARED}")
def test_auto_on_mnist_certifies_two_points_on_select_digits() -> None:
    from convopt.measure.data import load_eval_data

    model = onnx.load(SHARED / "models" / "mnist-cntk.onnx")
    d = load_eval_data(model, SHARED / "data" / "digits28.npz", limit=900)
    res, roles, *_ = run_auto(model, d, Budget(max_accuracy_drop=2.0))
    final = res.report.final
    assert final is not None and final.samples == roles.report.n
    if res.report.passes[1].rewritten:  # kept only when certified and measured faster
        assert res.certificate is not None and res.certificate.bounds["max_accuracy_drop"] <= 2.0
        assert res.report.passes[1].measurement.speedup > 1.0


def test_pareto_spread_drops_dominated_candidates_and_keeps_both_ends() -> None:
    from types import SimpleNamespace

    from convopt.auto.search import pareto_spread

    def cand(speed: float, err: float) -> SimpleNamespace:
        return SimpleNamespace(speedup=speed, error=err)

    cs = [cand(1.2, 0.1), cand(1.5, 0.2), cand(1.4, 0.3), cand(2.0, 0.5), cand(3.0, 0.9), cand(2.5, 0.6)]
    front = pareto_spread(cs, 10)  # type: ignore[arg-type]
    assert cs[2] not in front and len(front) == 5  # (1.4, 0.3) is dominated by (1.5, 0.2)
    thin = pareto_spread(cs, 3)  # type: ignore[arg-type]
    assert thin[0] is cs[0] and thin[-1] is cs[4] and len(thin) == 3


def test_default_budget_is_relative_error_without_class_scores() -> None:
    # two_conv_model's output (N, 16) is class-score shaped, so build a feature-map output instead
    model = two_conv_model()
    model.graph.node[-1].CopyFrom(helper.make_node("Identity", ["r2"], ["out"], name="flat"))
    del model.graph.node[-2]
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None))
    res, _, select, _ = run_auto(model, data(12), None, AutoOptions(min_layer_speedup=1e9))
    assert select.scored_index is None
    assert res.report.extra["auto"]["budget"] == {"max_accuracy_drop": None, "min_agreement": None,
                                                  "max_rel_error": 0.05, "max_metric_drop": None,
                                                  "confidence": 0.95, "source": "default"}


def test_with_outputs_keeps_only_the_nodes_the_requested_tensors_need() -> None:
    from convopt.graph.edit import with_outputs

    m = two_conv_model()
    first = with_outputs(m, ["y1"])
    assert [n.name for n in first.graph.node] == ["conv1"]
    assert [o.name for o in first.graph.output] == ["y1"]
    assert sorted(t.name for t in first.graph.initializer) == ["W1", "b1"]  # conv2's weights are not loaded
    both = with_outputs(m, ["r1", "y2"])
    assert [n.name for n in both.graph.node] == ["conv1", "relu1", "conv2"]
    x = data(4).inputs["x"]
    full = make_session(m, FAST)
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    ref.graph.output.extend([helper.make_empty_tensor_value_info("y2")])
    want = make_session(ref, FAST).run(["y2"], {"x": x})[0]
    got = make_session(both, FAST).run(["y2"], {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert len(m.graph.node) == 6 and full is not None  # the input model is untouched


def test_fit_plan_reuses_the_refits_of_a_shared_prefix() -> None:
    model = two_conv_model()
    calib = data(16, seed=1)
    specs = conv_table(model, conv_shapes(model, None))
    targets = collect_targets(model, {"conv1": "y1", "conv2": "y2"}, calib, FAST, rows=2000)
    c1 = build_candidates(specs["conv1"], ["factorize"])[0][0].choice
    c2a, c2b = [k.choice for k in build_candidates(specs["conv2"], ["factorize"])[0][:2]]
    cache: dict = {}
    first, infos = fit_plan(model, Plan({"conv1": c1, "conv2": c2a}), specs, targets, calib, FAST, cache=cache)
    assert len(cache) == 2 and [i.layer for i in infos] == ["conv1", "conv2"]
    conv1_key = (("conv1", c1.key),)
    conv1_refit = cache[conv1_key]
    again, _ = fit_plan(model, Plan({"conv1": c1, "conv2": c2b}), specs, targets, calib, FAST, cache=cache)
    # conv1's refit came from the cache (the same object), conv2 (a new choice) was refit; the first plan's
    # conv2 refit, a prefix of no later plan, was dropped
    assert len(cache) == 2 and cache[conv1_key] is conv1_refit
    assert (("conv1", c1.key), ("conv2", c2b.key)) in cache
    fresh, _ = fit_plan(model, Plan({"conv1": c1, "conv2": c2b}), specs, targets, calib, FAST)
    for n in ("conv1", "conv2"):
        for key, arr in fresh.choices[n].factors.arrays.items():
            np.testing.assert_array_equal(again.choices[n].factors.arrays[key], arr)


def test_fit_plan_sets_its_refits_aside_in_one_mapped_file_with_the_same_model(monkeypatch) -> None:
    """Each plan's kept refits (the steps' plans keep them through the search) are mapped from one file per
    plan, shared with the refit cache; the plan applies to the same model as with the refits in memory, and
    apply_plan drops their pages once written. Where the temporary folder is memory they stay in memory."""
    import convopt.auto.refit as refit_mod
    import convopt.core.plan as plan_mod
    from convopt.pages import mapping_of

    model = two_conv_model()
    calib = data(16, seed=1)
    specs = conv_table(model, conv_shapes(model, None))
    targets = collect_targets(model, {"conv1": "y1", "conv2": "y2"}, calib, FAST, rows=2000)
    plan = Plan({"conv1": build_candidates(specs["conv1"], ["factorize"])[0][0].choice,
                 "conv2": build_candidates(specs["conv2"], ["factorize"])[0][0].choice})
    monkeypatch.setattr(refit_mod, "tmp_on_disk", lambda: False)
    held, _ = fit_plan(model, plan, specs, targets, calib, FAST)
    assert all(mapping_of(a) is None for n in plan for a in held.choices[n].factors.arrays.values())
    monkeypatch.setattr(refit_mod, "tmp_on_disk", lambda: True)
    cache: dict = {}
    mapped, infos = fit_plan(model, plan, specs, targets, calib, FAST, cache=cache)
    kept = [i for i in infos if i.kept]
    assert kept and {id(mapping_of(i.weight)) for i in kept} == {id(mapping_of(kept[0].weight))} != {id(None)}
    assert all(cache[k] in infos for k in cache)
    for i in kept:
        last = mapped.choices[i.layer].factors.arrays[mapped.choices[i.layer].factors.last]
        assert mapping_of(last) is mapping_of(i.weight) and mapping_of(mapped.choices[i.layer].factors.bias) is not None
        np.testing.assert_array_equal(last, held.choices[i.layer].factors.arrays[held.choices[i.layer].factors.last])
    dropped: list[int] = []
    monkeypatch.setattr(plan_mod, "drop_pages", lambda arrays: dropped.extend(
        1 for a in arrays if mapping_of(a) is mapping_of(kept[0].weight)))
    assert apply_plan(model, mapped, specs).model.SerializeToString() == \
        apply_plan(model, held, specs).model.SerializeToString()
    assert len(dropped) == len(kept)


def test_time_budget_stops_early_with_the_best_plan_so_far() -> None:
    model = two_conv_model(c=32, hw=16)
    res, *_ = run_auto(model, data(48, seed=3, hw=16), Budget(max_rel_error=0.5),
                       AutoOptions(min_layer_speedup=0.0, time_budget=0.0))
    auto = res.report.passes[1]
    assert not auto.rewritten and {s.node for s in auto.skipped} == {"conv1", "conv2"}
    assert all("--time-budget reached" in s.reason for s in auto.skipped)
    assert res.report.final is not None  # the report phase still runs


def test_auto_considers_a_fully_connected_layer_through_lowrank() -> None:
    model = two_conv_model(c=32, hw=8)
    rng = np.random.default_rng(5)
    U, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    W = ((U[:, :64] * 0.7 ** np.arange(64)) @ rng.standard_normal((64, 32))).astype(np.float32)  # (64, 32)
    model.graph.node.append(helper.make_node("Gemm", ["out", "Wfc"], ["logits"], name="fc", transB=1))
    model.graph.initializer.append(numpy_helper.from_array(W, "Wfc"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 64]))
    res, *_ = run_auto(model, data(48, seed=3, hw=8), Budget(max_rel_error=0.5),
                       AutoOptions(min_layer_speedup=0.0, passes=("lowrank", "factorize")))
    cands = res.report.extra["auto"]["candidates"]
    assert any(c["layer"] == "fc" and c["candidate"].startswith("lowrank[") for c in cands)
    onnx.checker.check_model(res.model)


def test_candidates_set_aside_keep_their_values_and_give_the_same_model_with_their_pages_dropped(monkeypatch) -> None:
    """set_aside maps one layer's kept factors from one file (same values, keys and figures); a plan of them
    applies to the very model the in-memory factors give, and apply_plan drops each layer's pages once
    written; where the temporary folder is memory (tmpfs), the factors stay as they are."""
    import convopt.auto.candidates as cand_mod
    import convopt.core.plan as plan_mod
    from convopt.auto.candidates import set_aside
    from convopt.pages import mapping_of

    model = two_conv_model()
    specs = conv_table(model, conv_shapes(model, None))
    cands = build_candidates(specs["conv2"], ["factorize", "bottleneck"])[0][:3]
    before = [(k.key, k.error, {n: a.copy() for n, a in k.choice.factors.arrays.items()}) for k in cands]
    in_memory = apply_plan(model, Plan({"conv2": cands[1].choice}), specs).model
    monkeypatch.setattr(cand_mod, "tmp_on_disk", lambda: True)
    set_aside(cands)
    maps = set()
    for k, (key, err, arrays) in zip(cands, before):
        assert (k.key, k.error) == (key, err)
        for n, a in arrays.items():
            np.testing.assert_array_equal(k.choice.factors.arrays[n], a)
            maps.add(id(mapping_of(k.choice.factors.arrays[n])))
    assert len(maps) == 1 and id(None) not in maps  # one file for the layer
    dropped: list[list[np.ndarray]] = []
    monkeypatch.setattr(plan_mod, "drop_pages", lambda arrays: dropped.append(list(arrays)))
    applied = apply_plan(model, Plan({"conv2": cands[1].choice}), specs).model
    assert applied.SerializeToString() == in_memory.SerializeToString()
    assert len(dropped) == 1 and all(mapping_of(a) is not None for a in dropped[0])
    monkeypatch.setattr(cand_mod, "tmp_on_disk", lambda: False)
    fresh = build_candidates(specs["conv2"], ["factorize"])[0][:1]
    set_aside(fresh)
    assert all(mapping_of(a) is None for a in fresh[0].choice.factors.arrays.values())


def test_auto_sets_aside_the_kept_candidates_factors_and_hands_each_step_off(monkeypatch) -> None:
    """Every candidate kept after timing holds factors mapped from a file until the search releases them;
    every check hands its step's model to the select evaluator."""
    import convopt.auto.candidates as cand_mod
    from convopt.auto.search import AutoSearch
    from convopt.pages import mapping_of

    monkeypatch.setattr(cand_mod, "tmp_on_disk", lambda: True)
    seen: list[bool] = []
    real = AutoSearch.collect

    def collect(self: AutoSearch) -> None:
        seen.extend(mapping_of(a) is not None for v in self.cands.values() for k in v
                    for a in k.choice.factors.arrays.values())
        real(self)

    monkeypatch.setattr(AutoSearch, "collect", collect)
    measured: list[tuple[str, str]] = []
    real_measure = Evaluator.measure

    def measure(self: Evaluator, candidate, desc: str = "", **kw):
        measured.append((self.role, type(candidate).__name__))
        return real_measure(self, candidate, desc, **kw)

    monkeypatch.setattr(Evaluator, "measure", measure)
    res = run_auto(two_conv_model(), data(24, seed=1), Budget(max_rel_error=0.5),
                   AutoOptions(min_layer_speedup=0.0))[0]
    assert seen and all(seen)
    assert res.report.extra["auto"]["checks"]
    # each check's step model is handed to the select evaluator (let go once its session exists)
    assert [t for r, t in measured if r == "select"] == ["Handoff"] * len(res.report.extra["auto"]["checks"])
