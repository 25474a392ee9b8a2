"""factorize: k×k conv → k×1 conv (I→R) · 1×k conv (R→O); W[o,i,a,b] ≈ Σ_r H[o,r,b]·V[r,i,a]
(SVD of W as an (I·kh, O·kw) matrix, Tai et al. 2016; exact at R = min(I·kh, O·kw))."""
from __future__ import annotations

import numpy as np

from convopt import datafit, decompose
from convopt.graph import Builder, ConvSpec
from convopt.passes.base import (
    ConvPass, Factors, FitContext, Geometry, RankPolicy, Ranks, aligned, make_factors, split_groups, unique,
)

FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)  # auto mode's rank grid, × the exact rank


class Factorize(ConvPass):
    name = "factorize"
    summary = "k×k → k×1 then 1×k (spatial SVD, Inception-v3 asymmetric)"

    def refuses(self, conv: ConvSpec) -> str | None:
        kh, kw = conv.kernel
        if kh == 1 and kw == 1:
            return "1x1 kernel: nothing to factorize"
        if kh == 1 or kw == 1:
            return f"{kh}x{kw} kernel is already separable"
        return None

    def full_ranks(self, conv: ConvSpec) -> Ranks:
        O, Ig, kh, kw = conv.w_shape
        return {"rank": min(Ig * kh, O // conv.group * kw)}

    def rank_grid(self, conv: ConvSpec, align: int) -> list[Ranks]:
        full = self.full_ranks(conv)["rank"]
        return unique([{"rank": aligned(f, full, align)} for f in FRACTIONS])

    def pick(self, conv: ConvSpec, policy: RankPolicy) -> Ranks:
        spectra = [decompose.spatial_svd_spectrum(bk) for bk in split_groups(conv.W, conv.group)]
        return {"rank": policy.pick_groups(self.full_ranks(conv)["rank"], spectra)}

    def macs(self, conv: ConvSpec, ranks: Ranks) -> int:
        R, g = ranks["rank"], conv.group
        O, Ig, kh, kw = conv.w_shape
        geo = Geometry.of(conv)
        return g * R * Ig * kh * geo.out_h * geo.in_w + O * R * kw * geo.out_h * geo.out_w

    def decompose(self, conv: ConvSpec, ranks: Ranks, fit: FitContext) -> Factors:
        m = fit.moments_for(conv)
        if m is not None:  # whitened on the vertical patches, H refit under the patch covariance
            Vs, Hs = zip(*[datafit.spatial_datafit(conv.W, m.covariance, ranks["rank"], refine=fit.refine)])
        else:
            Vs, Hs = zip(*(decompose.spatial_svd(bk, ranks["rank"]) for bk in split_groups(conv.W, conv.group)))
        W_hat = np.concatenate([decompose.compose_spatial(v, h) for v, h in zip(Vs, Hs)], axis=0)
        kh, kw = conv.kernel
        arrays = {f"{kh}x1": np.concatenate(Vs, axis=0),  # (g·R, Ig, kh, 1)
                  f"1x{kw}": np.concatenate(Hs, axis=0)}  # (O, R, 1, kw)
        return make_factors(conv, {"rank": int(Vs[0].shape[0])}, arrays, W_hat, m)

    def emit(self, conv: ConvSpec, factors: Factors, b: Builder) -> None:
        (r1, V), (r2, H) = factors.arrays.items()
        assert conv.pads is not None
        t, left, bottom, right = conv.pads
        mid = b.conv_node(r1, conv.x, V, strides=(conv.strides[0], 1), pads=(t, 0, bottom, 0),
                          dilations=(conv.dilations[0], 1), group=conv.group)
        b.conv_node(r2, mid, H, bias=factors.bias, y=conv.y, strides=(1, conv.strides[1]),
                    pads=(0, left, 0, right), dilations=(1, conv.dilations[1]), group=conv.group)

    def form(self, conv: ConvSpec, ranks: Ranks) -> str:
        return f"{conv.kernel[0]}x1+1x{conv.kernel[1]}"
