"""bottleneck: k×k conv → 1×1 (I→r_in) · k×k core (r_in→r_out) · 1×1 (r_out→O);
W ≈ core ×_I U_in ×_O U_out (Tucker-2 by HOSVD on modes O and I; exact at r_in = I, r_out = O).
Ranks ``rank_in`` and/or ``rank_out``: a side without its rank keeps every channel (no 1×1 on that side)."""
from __future__ import annotations

import numpy as np

from convopt import datafit, decompose
from convopt.graph import Builder, ConvSpec
from convopt.passes.base import (
    ConvPass, Factors, FitContext, Geometry, RankPolicy, Ranks, aligned, make_factors, split_groups, unique,
)

FRACTIONS = (0.25, 0.5, 0.75)  # auto mode's rank grid, × the exact rank of each side


class Bottleneck(ConvPass):
    name = "bottleneck"
    summary = "1×1 reduce · k×k core · 1×1 expand (Tucker-2, Inception/ResNet bottleneck)"

    def refuses(self, conv: ConvSpec) -> str | None:
        if conv.kernel == (1, 1):
            return "1x1 kernel: a bottleneck would only add 1x1 convs"
        if conv.w_shape[1] == 1 and conv.w_shape[0] == conv.group:
            return "depthwise conv (1 channel per group): nothing to reduce"
        return None

    def full_ranks(self, conv: ConvSpec) -> Ranks:
        # exact Tucker ranks are bounded by the other modes: rank of the (O, I·k²) unfolding ≤ I·k²
        O, Ig, kh, kw = conv.w_shape
        Og = O // conv.group
        return {"rank_in": min(Ig, Og * kh * kw), "rank_out": min(Og, Ig * kh * kw)}

    def rank_grid(self, conv: ConvSpec, align: int) -> list[Ranks]:
        full = self.full_ranks(conv)
        Og, Ig = conv.w_shape[0] // conv.group, conv.w_shape[1]
        grid: list[Ranks] = []
        for f in FRACTIONS:
            ri, ro = aligned(f, full["rank_in"], align), aligned(f, full["rank_out"], align)
            grid += [{"rank_in": ri}] * (ri < Ig) + [{"rank_out": ro}] * (ro < Og)
            grid += [{"rank_in": ri, "rank_out": ro}] * (ri < Ig and ro < Og)
        return unique(grid)

    def pick(self, conv: ConvSpec, policy: RankPolicy) -> Ranks | str:
        spectra = [decompose.tucker2_spectra(bk) for bk in split_groups(conv.W, conv.group)]
        full = self.full_ranks(conv)
        ranks: Ranks = {}
        if policy.bottleneck_side in ("both", "in"):
            ranks["rank_in"] = policy.pick_groups(full["rank_in"], [s[1] for s in spectra])
        if policy.bottleneck_side in ("both", "out"):
            ranks["rank_out"] = policy.pick_groups(full["rank_out"], [s[0] for s in spectra])
        if policy.mode != "full":  # a full-size side is a pure extra 1x1 conv: drop it
            O, Ig = conv.w_shape[:2]
            if ranks.get("rank_in") == Ig:
                del ranks["rank_in"]
            if ranks.get("rank_out") == O // conv.group:
                del ranks["rank_out"]
        return ranks or "the chosen ranks keep every channel (no reduction on either side)"

    def macs(self, conv: ConvSpec, ranks: Ranks) -> int:
        g, geo = conv.group, Geometry.of(conv)
        O, Ig, kh, kw = conv.w_shape
        r_in, r_out = ranks.get("rank_in"), ranks.get("rank_out")
        ci = Ig if r_in is None else r_in  # core input channels per group
        co = O // g if r_out is None else r_out  # core output channels per group
        macs = g * co * ci * kh * kw * geo.out_h * geo.out_w
        if r_in is not None:
            macs += g * r_in * Ig * geo.in_h * geo.in_w
        if r_out is not None:
            macs += O * r_out * geo.out_h * geo.out_w
        return macs

    def decompose(self, conv: ConvSpec, ranks: Ranks, fit: FitContext) -> Factors:
        r_in, r_out = ranks.get("rank_in"), ranks.get("rank_out")
        m = fit.moments_for(conv)
        if m is not None:  # output PCA of the responses, whitened input side, then refit under the covariance
            factors = [datafit.tucker2_datafit(conv.W, m.covariance, r_in, r_out, refine=fit.refine)]
        else:
            factors = [decompose.tucker2(bk, r_in, r_out) for bk in split_groups(conv.W, conv.group)]
        W_hat = np.concatenate([decompose.compose_tucker2(*f) for f in factors], axis=0)
        arrays: dict[str, np.ndarray] = {}
        if r_in is not None:
            arrays["reduce"] = np.concatenate([f[0] for f in factors], axis=0)  # (g·r_in, Ig, 1, 1)
        arrays["core"] = np.concatenate([f[1] for f in factors], axis=0)  # (g·co, ci, kh, kw)
        if r_out is not None:
            arrays["expand"] = np.concatenate([f[2] for f in factors], axis=0)  # (O, r_out, 1, 1)
        return make_factors(conv, ranks, arrays, W_hat, m)

    def emit(self, conv: ConvSpec, factors: Factors, b: Builder) -> None:
        a, g = factors.arrays, conv.group
        x = conv.x
        if "reduce" in a:
            x = b.conv_node("reduce", x, a["reduce"], group=g)
        last = "expand" not in a
        assert conv.pads is not None
        y = b.conv_node("core", x, a["core"], bias=factors.bias if last else None, y=conv.y if last else None,
                        strides=conv.strides, pads=conv.pads, dilations=conv.dilations, group=g)
        if not last:
            b.conv_node("expand", y, a["expand"], bias=factors.bias, y=conv.y, group=g)

    def form(self, conv: ConvSpec, ranks: Ranks) -> str:
        kh, kw = conv.kernel
        return "+".join(["1x1"] * ("rank_in" in ranks) + [f"{kh}x{kw}"] + ["1x1"] * ("rank_out" in ranks))
