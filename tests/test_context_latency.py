"""Pricing candidates in context: the window around a Conv (which nodes, its inputs and outputs, that it
computes what the model computes), the candidate windows, the paired statistic, and the cache."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convopt.auto.candidates import Candidate
from convopt.auto.context import (
    FUSED,
    FUSED_ADD,
    ContextPricer,
    GraphDelta,
    LayerPrices,
    Price,
    nchwc_block,
    ort_ops,
    paired_rounds,
    summarize,
)
from convopt.auto.latency import LayerLatencyCache
from convopt.auto.search import AutoOptions, read_window_prices
from convopt.auto.window import GraphIndex, context_window, whole
from convopt.core.budget import Budget
from convopt.core.driver import conv_shapes
from convopt.core.plan import Choice, conv_table
from convopt.graph import infer_tensor_shapes
from convopt.measure.ort import OrtSettings, make_session
from tests.helpers import FULL_RANK_RTOL, NO_SHARED, SHARED_MODELS, conv_model, rel_l2, run

QUICK = OrtSettings(threads=1, warmup=1, repeats=3)


def _conv(nodes: list, inits: list, rng: np.random.Generator, name: str, x: str, cin: int, cout: int, k: int,
          relu: bool = True) -> str:
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.2, f"{name}_W")
    b = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"{name}_B")
    inits += [w, b]
    nodes.append(helper.make_node("Conv", [x, w.name, b.name], [f"{name}_y"], name=name, kernel_shape=[k, k],
                                  pads=[k // 2] * 4))
    if not relu:
        return f"{name}_y"
    nodes.append(helper.make_node("Relu", [f"{name}_y"], [f"{name}_r"], name=f"{name}_relu"))
    return f"{name}_r"


def fire_model(fires: int = 2, c: int = 32, sq: int = 16, hw: int = 12, seed: int = 0) -> onnx.ModelProto:
    """x (1, c, hw, hw) → ``fires`` SqueezeNet fire modules (squeeze 1×1 → [expand 1×1, expand 3×3] → Concat)
    → 1×1 head, every Conv followed by Relu."""
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    x = "x"
    for f in range(1, fires + 1):
        s = _conv(nodes, inits, rng, f"fire{f}/squeeze", x, c, sq, 1)
        e1 = _conv(nodes, inits, rng, f"fire{f}/expand1x1", s, sq, c // 2, 1)
        e3 = _conv(nodes, inits, rng, f"fire{f}/expand3x3", s, sq, c // 2, 3)
        nodes.append(helper.make_node("Concat", [e1, e3], [f"fire{f}/concat"], name=f"fire{f}/concat", axis=1))
        x = f"fire{f}/concat"
    y = _conv(nodes, inits, rng, "head", x, c, 8, 1)
    g = helper.make_graph(nodes, "fires", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, [None] * 4)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def residual_model(c: int = 16, hw: int = 10, seed: int = 0) -> onnx.ModelProto:
    """x → stem 3×3 → Relu → [3×3 → Relu → 3×3] + shortcut → Relu → 1×1 (a ResNet basic block with a stem
    and a head)."""
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    s = _conv(nodes, inits, rng, "stem", "x", c, c, 3)
    a = _conv(nodes, inits, rng, "a", s, c, c, 3)
    b = _conv(nodes, inits, rng, "b", a, c, c, 3, relu=False)
    nodes.append(helper.make_node("Add", [b, s], ["sum"], name="add"))
    nodes.append(helper.make_node("Relu", ["sum"], ["sum_r"], name="add_relu"))
    y = _conv(nodes, inits, rng, "head", "sum_r", c, 8, 1)
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, [None] * 4)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def window_of(model: onnx.ModelProto, layer: str):
    shapes = infer_tensor_shapes(model)
    convs = conv_table(model, conv_shapes(model, None))
    return context_window(GraphIndex(model), convs[layer], shapes)


def names(model: onnx.ModelProto, w) -> list[str]:
    return [model.graph.node[i].name for i in w.nodes]


def test_fire_window_holds_producer_sibling_and_concat_not_the_next_layer() -> None:
    m = fire_model()
    w, sub = window_of(m, "fire2/expand3x3")
    assert names(m, w) == ["fire2/squeeze", "fire2/squeeze_relu", "fire2/expand1x1", "fire2/expand1x1_relu",
                           "fire2/expand3x3", "fire2/expand3x3_relu", "fire2/concat"]
    assert w.inputs == ("fire1/concat",) and w.outputs == ("fire2/concat",)
    assert w.shapes["fire1/concat"] == (1, 32, 12, 12)
    assert len(sub.graph.node) == 7 and {t.name for t in sub.graph.initializer} == \
        {t for n in sub.graph.node if n.op_type == "Conv" for t in n.input[1:]}


def test_window_computes_what_the_model_computes() -> None:
    m = fire_model()
    x = np.random.default_rng(3).standard_normal((1, 32, 12, 12)).astype(np.float32)
    from convopt.graph import with_outputs

    mid, out = run(with_outputs(m, ["fire1/concat", "fire2/concat"]), {"x": x})
    _, sub = window_of(m, "fire2/expand3x3")
    (got,) = run(sub, {"fire1/concat": mid})
    np.testing.assert_allclose(got, out, rtol=1e-5, atol=1e-5)


def test_residual_window_produces_its_shortcut_and_runs_through_the_add() -> None:
    m = residual_model()
    w, _ = window_of(m, "b")
    # the shortcut is the stem's output: produced inside, so ORT keeps it NCHWc and fuses the Add into b
    assert names(m, w) == ["stem", "stem_relu", "a", "a_relu", "b", "add", "add_relu", "head"]
    assert w.inputs == ("x",) and w.outputs == ("head_y",)


def test_window_of_a_layer_on_the_graph_input_and_output() -> None:
    m = conv_model(batch=1)
    w, _ = window_of(m, "conv")
    assert names(m, w) == ["conv", "relu"] and w.inputs == ("x",) and w.outputs == ("z",)


def test_repeated_blocks_share_a_key_other_shapes_do_not() -> None:
    m = fire_model(fires=3)
    k2, k3 = window_of(m, "fire2/expand3x3")[0].key, window_of(m, "fire3/expand3x3")[0].key
    assert k2 == k3
    assert window_of(fire_model(fires=3, hw=14), "fire2/expand3x3")[0].key != k2
    assert window_of(m, "fire2/expand1x1")[0].key != k2  # same nodes, another layer: keys name the position


def test_whole_model_window_is_the_model() -> None:
    m = fire_model()
    convs = conv_table(m, conv_shapes(m, None))
    w, sub = whole(GraphIndex(m), convs["fire2/expand3x3"], infer_tensor_shapes(m))
    assert sub is m and len(w) == len(m.graph.node) and w.inputs == ("x",)
    assert convs["fire2/expand3x3"].index in w.nodes


@pytest.mark.parametrize("choice", [Choice("factorize", {"rank": 48}), Choice("bottleneck", {"rank_in": 16, "rank_out": 16})])
def test_candidate_window_at_full_rank_matches_the_dense_window(choice: Choice) -> None:
    m = fire_model()
    pricer = ContextPricer(m, conv_table(m, conv_shapes(m, None)), QUICK)
    _, dense, scope = pricer.window("fire2/expand3x3")
    cand = pricer.candidate("fire2/expand3x3", choice)
    assert scope == "window" and len(cand.graph.node) > len(dense.graph.node)
    feeds = {"fire1/concat": np.random.default_rng(0).standard_normal((1, 32, 12, 12)).astype(np.float32)}
    (want,), (got,) = run(dense, feeds), run(cand, feeds)
    assert rel_l2(want, got) < FULL_RANK_RTOL


def test_model_scope_candidate_is_the_model_with_one_layer_replaced() -> None:
    m = fire_model()
    pricer = ContextPricer(m, conv_table(m, conv_shapes(m, None)), QUICK, scope="model")
    cand = pricer.candidate("fire1/expand3x3", Choice("factorize", {"rank": 8}))
    assert len(cand.graph.node) == len(m.graph.node) + 1
    assert [n.name for n in cand.graph.node if n.name.startswith("fire2")] == \
        [n.name for n in m.graph.node if n.name.startswith("fire2")]


def test_summary_of_paired_rounds() -> None:
    rng = np.random.default_rng(0)
    dense = 1e-3 + rng.random(50) * 1e-4
    same, faster = dense.copy(), dense - 2e-4  # a no-op candidate, and one 0.2 ms faster every round
    med, rows = summarize(np.stack([dense, same, faster], axis=1))
    assert med == pytest.approx(np.median(dense) * 1e3)
    assert rows[0][:2] == (0.0, 0.0)
    assert rows[1][0] == pytest.approx(0.2) and rows[1][1] == pytest.approx(0.0, abs=1e-12)
    assert rows[1][2] == pytest.approx(np.median(faster) * 1e3)


def test_paired_rounds_time_every_session_every_round() -> None:
    m = conv_model(batch=1)
    s = make_session(m, QUICK)
    t = paired_rounds([s, s, s], {"x": np.zeros((1, 8, 13, 11), np.float32)}, warmup=1, repeats=4)
    assert t.shape == (4, 3) and (t > 0).all()


def test_prices_keep_order_are_cached_and_keyed_by_threads() -> None:
    m = fire_model(fires=3)
    convs = conv_table(m, conv_shapes(m, None))
    cache = LayerLatencyCache()
    choices = [Choice("factorize", {"rank": 8}), Choice("depthwise", {"multiplier": 1})]
    pricer = ContextPricer(m, convs, QUICK, cache=cache, repeats=3, warmup=1)
    first = pricer.price("fire2/expand3x3", choices)
    assert [p.key for p in first.prices] == [c.key for c in choices]
    assert first.scope == "window" and first.nodes == 7 and first.dense_ms > 0
    assert all(np.isfinite([p.saved_ms, p.ci_ms, p.ms]).all() and p.ms > 0 and not p.cached for p in first.prices)
    again = pricer.price("fire3/expand3x3", choices[::-1])  # the same structure: nothing timed again
    assert all(p.cached for p in again.prices)
    assert again.by_key()[choices[0].key] == first.by_key()[choices[0].key].__class__(
        **{**first.by_key()[choices[0].key].__dict__, "cached": True})
    other = ContextPricer(m, convs, OrtSettings(threads=2, warmup=1, repeats=3), cache=cache, repeats=3, warmup=1)
    assert not any(p.cached for p in other.price("fire2/expand3x3", choices[:1]).prices)


def test_graph_delta_counts_the_extra_factor_and_keeps_the_relu_fused() -> None:
    m = fire_model()
    pricer = ContextPricer(m, conv_table(m, conv_shapes(m, None)), QUICK, repeats=2, warmup=1)
    dense = ort_ops(pricer.window("fire2/expand3x3")[1], QUICK)
    assert dense[FUSED] == 3  # squeeze, expand1x1, expand3x3: each Conv carries its Relu
    (p,) = pricer.price("fire2/expand3x3", [Choice("factorize", {"rank": 16})]).prices
    assert p.graph == GraphDelta(nodes=1, reorders=0, fused_activations=0, fused_adds=0)
    assert GraphDelta.between(dense, dense) == GraphDelta(0, 0, 0, 0)


def test_residual_add_stays_fused_into_the_last_factor() -> None:
    m = residual_model(c=32)
    assert ort_ops(m, QUICK)[FUSED_ADD] == 1  # in the model, ORT fuses the Add (and its Relu) into b
    pricer = ContextPricer(m, conv_table(m, conv_shapes(m, None)), QUICK, repeats=2, warmup=1)
    dense = ort_ops(pricer.window("b")[1], QUICK)
    assert dense[FUSED_ADD] == 1 and dense["Add"] == 0  # and in b's window
    (p,) = pricer.price("b", [Choice("bottleneck", {"rank_in": 16})]).prices
    assert p.graph == GraphDelta(nodes=1, reorders=0, fused_activations=0, fused_adds=0)


def test_ranks_below_the_nchwc_block_add_a_reorder_aligned_ranks_do_not() -> None:
    block = nchwc_block(QUICK)
    if block is None:
        pytest.skip("ONNX Runtime uses no NCHWc kernels on this CPU")
    m = fire_model()
    pricer = ContextPricer(m, conv_table(m, conv_shapes(m, None)), QUICK, repeats=2, warmup=1)
    below, aligned = pricer.price("fire2/expand3x3", [Choice("factorize", {"rank": block // 2}),
                                                      Choice("factorize", {"rank": block})]).prices
    assert (below.graph.reorders, aligned.graph.reorders) == (1, 0)
    assert below.graph.fused_activations == aligned.graph.fused_activations == 0


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_squeezenet_windows() -> None:
    from convopt.core.driver import Driver

    d = Driver(onnx.load(str(SHARED_MODELS / "squeezenet1.1.onnx")))
    ix, shapes = GraphIndex(d.base), infer_tensor_shapes(d.base)
    sizes = {c.name: len(context_window(ix, c, shapes)[0]) for c in d.convs.values() if c.kernel == (3, 3)}
    assert sizes.pop("conv1_1") == 3  # Conv, Relu, MaxPool
    assert set(sizes.values()) == {7}  # every fire module: squeeze, both expands, their Relus, Concat
    pricer = ContextPricer(d.base, d.convs, QUICK, repeats=3, warmup=1)
    p = pricer.price("fire9/expand3x3_1", [Choice("factorize", {"rank": 48})])
    assert p.scope == "window" and np.isfinite(p.prices[0].saved_ms)


# -- auto mode prices in context ------------------------------------------------------------------------------


def _cand(rank: int) -> Candidate:
    return Candidate("L", Choice("factorize", {"rank": rank}), 100, 50, "factorize", 0.1)


def test_window_prices_read_as_layer_times_and_must_beat_their_noise() -> None:
    g = GraphDelta(0, 0, 0, 0)
    lp = LayerPrices("L", "window", 2.0, (Price("a", 0.3, 0.1, 1.7, g), Price("b", 0.05, 0.1, 1.95, g),
                                          Price("c", -0.2, 0.05, 2.2, g), Price("d", 5.0, 0.1, 0.1, g)), 7)
    cands = [_cand(r) for r in (8, 16, 24, 32)]
    fast = read_window_prices(lp, 0.5, cands, 1.05)
    assert [k.dense_ms for k in cands] == [1.0] * 4  # the layer's half of the 2 ms window
    assert [round(k.saved_ms, 9) for k in cands[:3]] == [0.3, 0.05, -0.2]  # the window's paired savings
    assert cands[0].speedup == pytest.approx(1 / 0.7) and cands[3].ms == pytest.approx(1e-3)  # floored
    assert fast == [cands[0], cands[3]]  # b saves less than its noise, c is slower
    assert read_window_prices(lp, 0.5, cands, 0.0) == cands  # asking for no speedup keeps every candidate
    assert read_window_prices(lp, 0.5, cands, 1e9) == []


def test_layer_share_is_the_layers_part_of_its_windows_macs() -> None:
    m = fire_model()
    convs = conv_table(m, conv_shapes(m, None))
    pricer = ContextPricer(m, convs, QUICK)
    in_window = ("fire2/squeeze", "fire2/expand1x1", "fire2/expand3x3")
    want = convs["fire2/expand3x3"].macs / sum(convs[n].macs for n in in_window)  # type: ignore[operator]
    assert pricer.layer_share("fire2/expand3x3") == pytest.approx(want)
    whole_model = ContextPricer(m, convs, QUICK, scope="model")
    assert whole_model.layer_share("fire2/expand3x3") == pytest.approx(
        convs["fire2/expand3x3"].macs / sum(c.macs for c in convs.values()))  # type: ignore[operator,misc]


def test_a_cache_with_in_context_prices_reloads_and_bad_values_are_still_refused(tmp_path) -> None:
    from convopt.errors import InputError

    m = fire_model()
    path = tmp_path / "lat.json"
    cache = LayerLatencyCache(path)
    pricer = ContextPricer(m, conv_table(m, conv_shapes(m, None)), QUICK, cache=cache, repeats=3, warmup=1)
    first = pricer.price("fire2/expand3x3", [Choice("factorize", {"rank": 8}), Choice("depthwise", {"multiplier": 1})])
    cache.save()
    again = ContextPricer(m, pricer.convs, QUICK, cache=LayerLatencyCache(path), repeats=3, warmup=1)
    second = again.price("fire2/expand3x3", [Choice("depthwise", {"multiplier": 1})])
    assert second.prices[0] == first.prices[1].__class__(**{**first.prices[1].__dict__, "cached": True})
    assert again.cache.misses == 0
    path.write_text('{"convopt_latency_cache": 1, "entries": {"conv:1|dense|x": -1.0}}')
    with pytest.raises(InputError):
        LayerLatencyCache(path)


def _auto(tmp_path, pricing: str, threads: int = 1):
    """auto_optimize on a two-conv model (data split three ways) at ``threads``; (its auto report, cache entries)."""
    from convopt.auto import auto_optimize
    from convopt.measure.evaluator import Evaluator
    from convopt.measure.roles import fit_size, split_data
    from tests.test_auto import FAST, data, two_conv_model

    settings = replace(FAST, threads=threads)
    model, d, cache = two_conv_model(c=32, hw=16), data(48, seed=3, hw=16), tmp_path / f"{pricing}{threads}.json"
    roles = split_data(d, fit_size(d.n, 128), seed=0)
    assert roles.fit is not None
    res = auto_optimize(model, fit=roles.fit, select=Evaluator(model, roles.select, settings, role="select"),
                        report=None, settings=settings, budget=Budget(max_rel_error=0.2), latency_cache=cache,
                        options=AutoOptions(min_layer_speedup=0.0, pricing=pricing))  # type: ignore[arg-type]
    return res.report.extra["auto"], json.loads(cache.read_text())["entries"]


def test_auto_prices_in_context_at_its_thread_count_and_reuses_the_cache(tmp_path) -> None:
    auto, entries = _auto(tmp_path, "window", threads=2)
    assert entries and all(k.startswith("ctx:window:") and "|t2|" in k for k in entries)
    by_layer: dict[str, set[float]] = {}
    for c in auto["candidates"]:
        by_layer.setdefault(c["layer"], set()).add(c["dense_ms"])
        assert c["ms"] > 0 and np.isfinite(c["layer_speedup"])
    assert set(by_layer) == {"conv1", "conv2"} and all(len(v) == 1 for v in by_layer.values())
    again, _ = _auto(tmp_path, "window", threads=2)  # the same cache file: nothing timed again
    assert again["latency_cache"]["misses"] == 0 and again["latency_cache"]["hits"] > 0
    assert [c["dense_ms"] for c in again["candidates"]] == [c["dense_ms"] for c in auto["candidates"]]


def test_auto_layer_pricing_times_the_conv_alone(tmp_path) -> None:
    auto, entries = _auto(tmp_path, "layer")
    assert entries and all(k.startswith("conv:") and "|t1|" in k for k in entries)
    assert {c["layer"] for c in auto["candidates"]} == {"conv1", "conv2"}
