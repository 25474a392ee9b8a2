"""A fifth pass is one class: a toy pass defined here, and nowhere else, works in inspect, uniform mode (library
and CLI) and auto mode."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from convopt.auto import AutoOptions
from convopt.cli import app
from convopt.core.budget import Budget
from convopt.graph import Builder, ConvSpec
from convopt.inspect import inspect_model
from convopt.passes import REGISTRY, ConvPass, Factors, FitContext, RankPolicy, Ranks
from convopt.passes.base import Geometry, aligned
from convopt.uniform import optimize_uniform
from tests.helpers import FULL_RANK_RTOL, conv_model, random_feeds, rel_l2, run
from tests.test_auto import data, run_auto, two_conv_model


def _define_toy() -> type[ConvPass]:
    class OutSide(ConvPass):
        """k×k conv (I→r) then 1×1 (r→O): the truncated SVD of W's output-channel unfolding."""

        name = "toy"
        summary = "k×k to r channels, then 1×1 back to O"

        def refuses(self, conv: ConvSpec) -> str | None:
            return "grouped conv" if conv.group != 1 else None

        def full_ranks(self, conv: ConvSpec) -> Ranks:
            O, I, kh, kw = conv.W.shape
            return {"rank": min(O, I * kh * kw)}

        def rank_grid(self, conv: ConvSpec, align: int) -> list[Ranks]:
            return [{"rank": aligned(f, self.full_ranks(conv)["rank"], align)} for f in (0.25, 0.5)]

        def pick(self, conv: ConvSpec, policy: RankPolicy) -> Ranks:
            s = np.linalg.svd(conv.W.reshape(conv.W.shape[0], -1), compute_uv=False)
            return {"rank": policy.pick(self.full_ranks(conv)["rank"], s)}

        def macs(self, conv: ConvSpec, ranks: Ranks) -> int:
            O, I, kh, kw = conv.W.shape
            g = Geometry.of(conv)
            return ranks["rank"] * (I * kh * kw + O) * g.out_h * g.out_w

        def decompose(self, conv: ConvSpec, ranks: Ranks, fit: FitContext) -> Factors:
            O, I, kh, kw = conv.W.shape
            U, s, Vt = np.linalg.svd(conv.W.reshape(O, -1).astype(np.float64), full_matrices=False)
            r = ranks["rank"]
            first, last = (s[:r, None] * Vt[:r]).reshape(r, I, kh, kw), U[:, :r].reshape(O, r, 1, 1)
            err = np.linalg.norm(s[r:]) / np.linalg.norm(s)
            return Factors({"rank": r}, {"core": first, "expand": last}, conv.B, float(err))

        def emit(self, conv: ConvSpec, factors: Factors, b: Builder) -> None:
            assert conv.pads is not None
            mid = b.conv_node("core", conv.x, factors.arrays["core"], strides=conv.strides, pads=conv.pads,
                              dilations=conv.dilations)
            b.conv_node("expand", mid, factors.arrays["expand"], bias=factors.bias, y=conv.y)

        def form(self, conv: ConvSpec, ranks: Ranks) -> str:
            return "kxk+1x1"

    return OutSide


@pytest.fixture
def toy() -> Iterator[type[ConvPass]]:
    cls = _define_toy()
    try:
        yield cls
    finally:
        REGISTRY.pop("toy", None)


def test_a_pass_registers_itself_and_a_second_one_of_the_same_name_is_refused(toy: type[ConvPass]) -> None:
    assert REGISTRY["toy"] is toy
    with pytest.raises(TypeError, match="two passes are named 'factorize'"):
        class Clash(ConvPass):  # noqa: F841  (defining it is the test)
            name = "factorize"
            summary = ""


def test_toy_pass_in_inspect_and_uniform_mode(toy: type[ConvPass], tmp_path: Path) -> None:
    model = conv_model(cin=8, cout=16, k=(3, 3), pads=(1, 1, 1, 1))
    rows = inspect_model(model).rows
    assert rows[0].passes["toy"] == "applies"
    grouped = inspect_model(conv_model(cin=8, cout=16, k=(3, 3), pads=(1, 1, 1, 1), group=2)).rows
    assert grouped[0].passes["toy"] == "grouped conv"
    res = optimize_uniform(model, ["toy"], RankPolicy(mode="full"))
    (rec,) = res.report.passes[-1].rewritten
    assert rec.form == "kxk+1x1" and rec.new_nodes == ("toy/conv/core", "toy/conv/expand")
    feeds = random_feeds(model)
    assert rel_l2(run(model, feeds)[0], run(res.model, feeds)[0]) <= FULL_RANK_RTOL
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    src.write_bytes(model.SerializeToString())
    r = CliRunner().invoke(app, ["optimize", str(src), "-o", str(out), "--passes", "toy", "--rank-fraction", "0.5",
                                 "--no-eval", "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["inspect", str(src)])
    assert r.exit_code == 0 and "toy" in r.output


def test_toy_pass_in_auto_mode(toy: type[ConvPass]) -> None:
    model = two_conv_model(c=32, hw=16)
    res, *_ = run_auto(model, data(32, seed=3, hw=16), Budget(max_rel_error=0.5),
                       AutoOptions(passes=("toy",), min_layer_speedup=0.0))
    keys = [c["candidate"] for c in res.report.extra["auto"]["candidates"]]
    assert keys and all(k.startswith("toy[rank=") for k in keys)
    for rec in res.report.passes[-1].rewritten:
        assert rec.form == "kxk+1x1"
