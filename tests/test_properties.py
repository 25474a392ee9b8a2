"""Property-based tests (hypothesis) over Conv geometry.

Valid geometries (channels, kernel incl. rectangular, stride, dilation, explicit/asymmetric pads or auto_pad,
groups, bias, batch, input size): every pass whose check() accepts the Conv, at full rank, gives the same
output as the original in ONNX Runtime (relative L2 <= 1e-4). Invalid geometries: refused by the loader with
exit code 2 and one line, or the Conv is skipped with a reason; never a crash. The number of cases tried is
printed by the last test of this file ("property cases: ...").
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from convopt.cli import app
from convopt.graph import ConvSpec, model_problem, read_convs
from convopt.io import validate_model
from convopt.passes import PASSES
from convopt.passes.base import RankPolicy
from convopt.uniform import run_pass
from convopt.core.driver import conv_shapes

from tests.helpers import FULL_RANK_RTOL, conv_model, random_feeds, rel_l2, run

COUNTS: Counter[str] = Counter()
runner = CliRunner()


# ----------------------------------------------------------------------------- valid geometries


@st.composite
def valid_geometry(draw: st.DrawFn) -> dict[str, Any]:
    group = draw(st.sampled_from([1, 1, 1, 2, 3, 4]))
    cin = group * draw(st.integers(1, 24 // group))
    cout = group * draw(st.integers(1, 24 // group))
    square = draw(st.sampled_from([None, 3, 5, 5]))
    k = (square, square) if square else (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(["explicit", "explicit", "none", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    pads = None
    if mode.startswith("SAME"):  # ORT refuses dilation with auto_pad SAME_* ("Dilation not supported")
        dilation = (1, 1)
    if mode == "explicit":
        pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    geo: dict[str, Any] = {
        "cin": cin, "cout": cout, "k": k, "stride": stride, "dilation": dilation, "group": group,
        "bias": draw(st.booleans()), "batch": draw(st.integers(1, 3)),
        "pads": pads, "auto_pad": mode if mode in ("SAME_UPPER", "SAME_LOWER", "VALID") else None,
    }
    hw = []
    for ax in range(2):
        k_eff = (k[ax] - 1) * dilation[ax] + 1
        pad = 0 if pads is None else pads[ax] + pads[ax + 2]
        low = 1 if mode.startswith("SAME") else max(1, k_eff - pad)
        hw.append(draw(st.integers(low, low + 10)))
    geo["hw"] = tuple(hw)
    geo["seed"] = draw(st.integers(0, 2**16))
    return geo


def _with_conv_output(m: onnx.ModelProto) -> onnx.ModelProto:
    """Expose the Conv's own output y (before the Relu) so a negative output is compared too."""
    m.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4))
    return m


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(geo=valid_geometry())
def test_full_rank_rewrites_match_ort(geo: dict[str, Any]) -> None:
    m = _with_conv_output(conv_model(**geo))
    validate_model(m, "generated")  # a valid geometry must load
    COUNTS["valid"] += 1
    shapes = conv_shapes(m, None)
    (item,) = read_convs(m, shapes)
    assert isinstance(item, ConvSpec), getattr(item, "reason", item)
    feeds = random_feeds(m, seed=geo["seed"])
    ref = run(m, feeds)[1]
    policy = RankPolicy(mode="full", seed=geo["seed"])
    for name, cls in PASSES.items():
        p = cls()
        reason = p.applies(item)
        if reason is not None:
            assert reason.strip()
            COUNTS[f"{name}:refused"] += 1
            continue
        outcome = run_pass(m, name, policy)
        if not outcome.rewritten:
            (skip,) = outcome.skipped
            assert skip.reason.strip()
            COUNTS[f"{name}:skipped"] += 1
            continue
        onnx.checker.check_model(outcome.model)
        got = run(outcome.model, feeds)[1]
        assert got.shape == ref.shape, (name, geo)
        err = rel_l2(ref, got)
        assert err <= FULL_RANK_RTOL, f"{name}: rel L2 {err:.2e} for {geo}"
        COUNTS[f"{name}:exact"] += 1


# ----------------------------------------------------------------------------- invalid geometries


def _raw_conv_model(geo: dict[str, Any]) -> onnx.ModelProto:
    """Like conv_model but without the checker, so any attribute/weight combination can be written."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal(geo["w_shape"]).astype(np.float32)
    inits = [numpy_helper.from_array(W, "W")]
    inputs = ["x", "W"]
    if geo.get("b_shape") is not None:
        inits.append(numpy_helper.from_array(rng.standard_normal(geo["b_shape"]).astype(np.float32), "B"))
        inputs.append("B")
    node = helper.make_node("Conv", inputs, ["y"], name="conv", **geo["attrs"])
    g = helper.make_graph(
        [node, helper.make_node("Relu", ["y"], ["z"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(geo["x_shape"]))],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None] * 4)], inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@st.composite
def invalid_geometry(draw: st.DrawFn) -> dict[str, Any]:
    cin, cout, kh, kw = draw(st.integers(1, 8)), draw(st.integers(1, 8)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    attrs: dict[str, Any] = {"kernel_shape": [kh, kw]}
    w_shape: list[int] = [cout, cin, kh, kw]
    b_shape: list[int] | None = None
    fault = draw(st.sampled_from(["group", "kernel_too_big", "kernel_attr", "channels", "neg_pad", "zero_stride",
                                  "zero_dilation", "bias_shape", "pads_len", "zero_channels", "zero_input"]))
    if fault == "group":
        g = draw(st.integers(2, 5))
        assume(cout % g or cin % g)
        attrs["group"] = g
        w_shape[1] = max(1, cin // g)
    elif fault == "kernel_too_big":
        d = draw(st.integers(1, 3))
        attrs["dilations"] = [d, d]
        assume((kh - 1) * d + 1 > h or (kw - 1) * d + 1 > w)
    elif fault == "kernel_attr":
        attrs["kernel_shape"] = [kh + draw(st.integers(1, 2)), kw]
    elif fault == "channels":
        w_shape[1] = cin + draw(st.integers(1, 3))
    elif fault == "neg_pad":
        attrs["pads"] = [draw(st.integers(-3, -1)), 0, 0, 0]
    elif fault == "zero_stride":
        attrs["strides"] = [0, 1]
    elif fault == "zero_dilation":
        attrs["dilations"] = [1, 0]
    elif fault == "bias_shape":
        b_shape = [cout + draw(st.integers(1, 3))]
    elif fault == "pads_len":
        attrs["pads"] = [1, 1]
    elif fault == "zero_channels":
        w_shape[0] = 0
    elif fault == "zero_input":
        h = 0
    if fault != "kernel_too_big":  # keep the output non-empty so only the drawn fault is wrong
        h, w = (max(h, kh + 2), max(w, kw + 2)) if h else (0, max(w, kw + 2))
    return {"fault": fault, "w_shape": w_shape, "b_shape": b_shape, "attrs": attrs,
            "x_shape": (1, cin, h, w)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(geo=invalid_geometry())
def test_invalid_geometry_refused_with_a_reason(geo: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    COUNTS["invalid"] += 1
    m = _raw_conv_model(geo)
    d = tmp_path_factory.mktemp("inv")
    p = d / "m.onnx"
    p.write_bytes(m.SerializeToString())
    for cmd in (["inspect", str(p), "--json"], ["optimize", str(p), "--no-eval", "-q", "-o", str(d / "o.onnx")]):
        r = runner.invoke(app, cmd)
        assert r.exception is None or isinstance(r.exception, SystemExit), (geo, r.output)
        assert "Traceback" not in r.output
        if r.exit_code == 2:
            lines = r.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (geo, r.output)
            COUNTS[f"invalid:refused:{cmd[0]}"] += 1
        else:  # accepted: then the conv must be reported as skipped with a reason
            assert r.exit_code == 0, (geo, r.exit_code, r.output)
            COUNTS[f"invalid:accepted:{cmd[0]}"] += 1
            if cmd[0] == "inspect":
                import json

                row = json.loads(r.output)["convs"][0]
                assert all(v != "applies" for v in row["passes"].values()), (geo, row)
    assert model_problem(m) is not None or _checker_refuses(m), geo


def _checker_refuses(m: onnx.ModelProto) -> bool:
    try:
        validate_model(m, "generated")
    except Exception:
        return True
    return False


def test_counts_were_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the two properties (file order): prints the number of cases tried, and checks it."""
    if COUNTS["valid"] == 0:
        pytest.skip("the property tests were deselected")
    with capsys.disabled():
        print("\nproperty cases: " + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items())))
    assert COUNTS["valid"] >= 50 and COUNTS["invalid"] >= 30, dict(COUNTS)
    assert COUNTS["split5x5:exact"] > 0 and COUNTS["factorize:exact"] > 0, dict(COUNTS)
