"""depthwise: dense k×k conv → depthwise k×k (multiplier m) · pointwise 1×1 (I·m→O);
W[o,i] ≈ Σ_j P[o,i,j]·D[i,j] (per-input-channel SVD of W[:, i] as O × k²; exact at m = min(O, k²)).
With m ≥ 2 (group 1) the input is tiled m times (Concat) and an m=1 depthwise runs over m·I channels:
the same math, and it keeps ORT's fast NCHWc depthwise path (a native multiplier leaves it)."""
from __future__ import annotations

import numpy as np

from convopt import datafit, decompose
from convopt.graph import Builder, ConvSpec
from convopt.passes.base import (
    ConvPass, Factors, FitContext, Geometry, RankPolicy, Ranks, make_factors, split_groups,
)

MULTIPLIERS = (1, 2, 3, 4)  # auto mode's grid


def _tiled(conv: ConvSpec, m: int) -> bool:
    return conv.group == 1 and m >= 2


class Depthwise(ConvPass):
    name = "depthwise"
    summary = "dense k×k → depthwise k×k · pointwise 1×1 (MobileNet/Xception)"

    def refuses(self, conv: ConvSpec) -> str | None:
        if conv.kernel == (1, 1):
            return "1x1 kernel: nothing to separate"
        if conv.w_shape[1] == 1 and conv.group > 1:
            return "already depthwise (1 input channel per group)"
        return None

    def full_ranks(self, conv: ConvSpec) -> Ranks:
        O, _, kh, kw = conv.w_shape
        return {"multiplier": min(O // conv.group, kh * kw)}

    def rank_grid(self, conv: ConvSpec, align: int) -> list[Ranks]:
        full = self.full_ranks(conv)["multiplier"]
        return [{"multiplier": m} for m in MULTIPLIERS if m <= full]

    def pick(self, conv: ConvSpec, policy: RankPolicy) -> Ranks:
        spectra = [decompose.depthwise_spectrum(bk) for bk in split_groups(conv.W, conv.group)]
        # energy is judged over all input channels together: Σ_i Σ_{j<m} s_ij² / Σ s²
        pooled = np.sqrt(sum((s**2).sum(axis=0) for s in spectra))
        return {"multiplier": policy.pick(self.full_ranks(conv)["multiplier"], pooled, align=False)}

    def macs(self, conv: ConvSpec, ranks: Ranks) -> int:
        m, geo = ranks["multiplier"], Geometry.of(conv)
        O, Ig, kh, kw = conv.w_shape
        return Ig * conv.group * m * kh * kw * geo.out_h * geo.out_w + O * Ig * m * geo.out_h * geo.out_w

    def decompose(self, conv: ConvSpec, ranks: Ranks, fit: FitContext) -> Factors:
        m = ranks["multiplier"]
        O, Ig, kh, kw = conv.w_shape
        I = Ig * conv.group
        moments = fit.moments_for(conv)
        if moments is not None:  # per input channel, whitened by its k×k patch moment; P refit under the covariance
            factors = [datafit.depthwise_datafit(conv.W, moments.covariance, m, refine=fit.refine)]
        else:
            factors = [decompose.depthwise_svd(bk, m) for bk in split_groups(conv.W, conv.group)]
        W_hat = np.concatenate([decompose.compose_depthwise(D, P) for D, P in factors], axis=0)
        D = np.concatenate([f[0] for f in factors], axis=0)  # (I, m, kh, kw)
        P = np.concatenate([f[1] for f in factors], axis=0)  # (O, Ig, m)
        if _tiled(conv, m):  # channel j·I + i carries x_i
            arrays = {"dw": D.transpose(1, 0, 2, 3).reshape(m * I, 1, kh, kw),
                      "pw": P.transpose(0, 2, 1).reshape(O, m * I, 1, 1)}
        else:  # native multiplier: channel i·m + j
            arrays = {"dw": D.reshape(I * m, 1, kh, kw), "pw": P.reshape(O, Ig * m, 1, 1)}
        return make_factors(conv, ranks, arrays, W_hat, moments)

    def emit(self, conv: ConvSpec, factors: Factors, b: Builder) -> None:
        m = factors.ranks["multiplier"]
        I = conv.w_shape[1] * conv.group
        x = b.concat("tile", [conv.x] * m, axis=1) if _tiled(conv, m) else conv.x
        assert conv.pads is not None
        mid = b.conv_node("dw", x, factors.arrays["dw"], strides=conv.strides, pads=conv.pads,
                          dilations=conv.dilations, group=I * m if _tiled(conv, m) else I)
        b.conv_node("pw", mid, factors.arrays["pw"], bias=factors.bias, y=conv.y, group=conv.group)

    def form(self, conv: ConvSpec, ranks: Ranks) -> str:
        m, (kh, kw) = ranks["multiplier"], conv.kernel
        return f"tile{m}+dw{kh}x{kw}+pw" if _tiled(conv, m) else f"dw{kh}x{kw}(m={m})+pw"
