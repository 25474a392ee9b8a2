"""Every real model in ../shared/models, rewritten at full rank by every pass that applies, matches the
original in ORT (relative L2 ≤ 1e-4), keeps its input/output names, opset and metadata, and passes the checker."""
from __future__ import annotations

import onnx
import pytest

from convopt.io import load_model
from convopt.passes import PASSES
from convopt.passes.base import RankPolicy
from convopt.uniform import optimize_uniform as optimize

from tests.helpers import FULL_RANK_RTOL, NO_SHARED, SHARED_MODELS, random_feeds, rel_l2, run

pytestmark = pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)

MODELS = {
    "squeezenet1.1.onnx": 50.0,  # input scale: BGR minus mean
    "mnist-cntk.onnx": 100.0,
    "candy-style.onnx": 100.0,
}
# which passes find at least one conv in each model
EXPECTED = {
    "squeezenet1.1.onnx": {"bottleneck", "factorize", "depthwise", "lowrank"},
    "mnist-cntk.onnx": {"bottleneck", "split5x5", "factorize", "depthwise"},
    "candy-style.onnx": {"bottleneck", "factorize", "depthwise"},
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[onnx.ModelProto, dict, list]]:
    out = {}
    for name, scale in MODELS.items():
        m = load_model(SHARED_MODELS / name)
        feeds = random_feeds(m, seed=7, scale=scale)
        out[name] = (m, feeds, run(m, feeds))
    return out


CASES = [(m, p) for m in MODELS for p in PASSES]


@pytest.mark.slow
@pytest.mark.parametrize("model_name,pass_name", CASES, ids=[f"{m.split('.')[0]}-{p}" for m, p in CASES])
def test_full_rank_rewrite_of_real_model_is_exact(loaded, model_name: str, pass_name: str) -> None:
    model, feeds, ref = loaded[model_name]
    result = optimize(model, [pass_name], RankPolicy(mode="full"))
    rep = result.report.passes[-1]
    if pass_name not in EXPECTED[model_name]:
        assert rep.rewritten == () and rep.status == "no_change"
        assert all(s.reason for s in rep.skipped)
        return
    assert len(rep.rewritten) >= 1, rep.skipped
    out = result.model
    onnx.checker.check_model(out)
    assert [i.name for i in out.graph.input if i.name in feeds] == list(feeds)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert list(out.opset_import) == list(model.opset_import)
    assert out.producer_name == model.producer_name and out.ir_version == model.ir_version
    got = run(out, feeds)
    for r, g in zip(ref, got):
        assert g.shape == r.shape
        assert rel_l2(r, g) <= FULL_RANK_RTOL, f"{model_name}/{pass_name}"


def test_candy_convtranspose_and_9x9_are_reported(loaded) -> None:
    model, _, _ = loaded["candy-style.onnx"]
    rep = optimize(model, ["split5x5"], RankPolicy(mode="full")).report.passes[-1]
    reasons = {s.node: s.reason for s in rep.skipped}
    assert reasons["convolution13"] == "ConvTranspose is not rewritten"
    assert reasons["convolution"] == "kernel is 9x9, not 5x5"
    assert len(reasons) == 16
