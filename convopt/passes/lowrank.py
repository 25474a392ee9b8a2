"""lowrank: 1×1 conv (or Gemm) I→O → I→r · r→O; W ≈ B A (truncated SVD of W as an (O, I)
matrix; with the input's moments, the whitened low rank: PCA of the responses, Zhang et al. 2015; exact at
r = min(I, O)). It only pays when r < I·O / (I + O): the two factors then cost fewer MACs than W."""
from __future__ import annotations

import numpy as np

from convopt import datafit
from convopt.graph import Builder, ConvSpec
from convopt.passes.base import ConvPass, Factors, FitContext, Geometry, RankPolicy, Ranks, make_factors, unique

FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)  # auto mode's rank grid, × the break-even rank


class LowRank(ConvPass):
    name = "lowrank"
    summary = "1×1 conv or Gemm (I→O) → I→r then r→O (low rank, a bottleneck on a 1×1 or fully connected layer)"
    ops = ("Conv", "Gemm")

    def refuses(self, conv: ConvSpec) -> str | None:
        if conv.kernel != (1, 1):
            return f"{conv.kernel[0]}x{conv.kernel[1]} kernel: lowrank rewrites 1x1 convs (use factorize or bottleneck)"
        if conv.group != 1:
            return f"group {conv.group} 1x1 conv: lowrank rewrites dense 1x1 convs"
        O, I = conv.w_shape[:2]
        if datafit.max_paying_rank(I, O) < 1:
            return f"{I}→{O} channels: no rank saves MACs"
        return None

    def full_ranks(self, conv: ConvSpec) -> Ranks:
        return {"rank": int(min(conv.w_shape[:2]))}

    def rank_grid(self, conv: ConvSpec, align: int) -> list[Ranks]:
        O, I = conv.w_shape[:2]
        even = datafit.max_paying_rank(I, O)
        grid = [max(align, int(round(f * even / align)) * align) for f in FRACTIONS]
        return unique([{"rank": r} for r in grid if r <= min(I, O)])

    def pick(self, conv: ConvSpec, policy: RankPolicy) -> Ranks:
        s = np.linalg.svd(conv.W[:, :, 0, 0].astype(np.float64), compute_uv=False)
        return {"rank": policy.pick(self.full_ranks(conv)["rank"], s)}

    def macs(self, conv: ConvSpec, ranks: Ranks) -> int:
        O, I = conv.w_shape[:2]
        geo = Geometry.of(conv)
        return ranks["rank"] * (I + O) * geo.out_h * geo.out_w

    def decompose(self, conv: ConvSpec, ranks: Ranks, fit: FitContext) -> Factors:
        W = conv.W[:, :, 0, 0].astype(np.float64)
        O, I = W.shape
        m = fit.moments_for(conv)
        if m is not None:
            A, B = datafit.whitened_lowrank(W, m.covariance, ranks["rank"])
        else:
            A, B = datafit.lowrank_svd(W, ranks["rank"])
        r = A.shape[0]
        arrays = {"reduce": A.reshape(r, I, 1, 1), "expand": B.reshape(O, r, 1, 1)}
        return make_factors(conv, {"rank": int(r)}, arrays, (B @ A).reshape(O, I, 1, 1), m)

    def emit(self, conv: ConvSpec, factors: Factors, b: Builder) -> None:
        if conv.op == "Gemm":
            A, B = factors.arrays["reduce"], factors.arrays["expand"]
            mid = b.gemm_node("reduce", conv.x, A.reshape(A.shape[0], -1))
            b.gemm_node("expand", mid, B.reshape(B.shape[0], -1), bias=factors.bias, y=conv.y)
            return
        assert conv.pads is not None
        mid = b.conv_node("reduce", conv.x, factors.arrays["reduce"], strides=conv.strides, pads=conv.pads,
                          dilations=conv.dilations)
        b.conv_node("expand", mid, factors.arrays["expand"], bias=factors.bias, y=conv.y)

    def form(self, conv: ConvSpec, ranks: Ranks) -> str:
        return "gemm+gemm" if conv.op == "Gemm" else "1x1+1x1"
