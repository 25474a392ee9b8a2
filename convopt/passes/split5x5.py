"""split5x5: 5×5 conv → 3×3 conv A (I→R, original pads) · 3×3 conv B (R→O, pad 0, stride s);
W[o,i,w] ≈ Σ_r Σ_{u+v=w} A[r,i,u]·B[o,r,v] (ALS on the kernel; exact at R = 9·min(I, O) by shifts).
Pad 2 then pad 0 composes exactly; pad 1 + pad 1 would differ on the one-pixel border ring."""
from __future__ import annotations

import math

import numpy as np

from convopt import datafit, decompose
from convopt.datafit import Moments
from convopt.graph import Builder, ConvSpec
from convopt.passes.base import (
    ConvPass, Factors, FitContext, Geometry, RankPolicy, Ranks, make_factors, split_groups, unique,
)

FRACTIONS = (0.5, 1.0, 1.5, 2.0, 3.0)  # auto mode's rank grid, × min(I, O)


class Split5x5(ConvPass):
    name = "split5x5"
    summary = "5×5 → 3×3 (pad 2) then 3×3 (pad 0) (VGG / Inception-v3)"

    def refuses(self, conv: ConvSpec) -> str | None:
        if conv.kernel != (5, 5):
            return f"kernel is {conv.kernel[0]}x{conv.kernel[1]}, not 5x5"
        return None

    def full_ranks(self, conv: ConvSpec) -> Ranks:
        return {"rank": 9 * min(conv.w_shape[1], conv.w_shape[0] // conv.group)}

    def rank_grid(self, conv: ConvSpec, align: int) -> list[Ranks]:
        full = self.full_ranks(conv)["rank"]
        return unique([{"rank": decompose.align_rank(math.ceil(f * (full // 9)), align, full)} for f in FRACTIONS])

    def pick(self, conv: ConvSpec, policy: RankPolicy) -> Ranks:
        return {"rank": policy.pick(self.full_ranks(conv)["rank"])}

    def choose(self, conv: ConvSpec, policy: RankPolicy) -> tuple[Ranks, Factors | None] | str:
        """Energy E ↔ the smallest aligned rank below the MAC break-even whose ALS fit has relative kernel
        error ≤ sqrt(1 − E) in every group (the fits found are returned, not recomputed)."""
        if policy.mode != "energy":
            return super().choose(conv, policy)
        target, a = math.sqrt(max(0.0, 1.0 - policy.value)), policy.align
        full = self.full_ranks(conv)["rank"]
        ranks = [r for r in range(a, full + 1, a) if self.macs(conv, {"rank": r}) < self.dense_macs(conv)]
        if not ranks:
            return f"no rank (multiple of {a}) lowers MACs"
        fits = []
        for bk in split_groups(conv.W, conv.group):
            r, A, B, err = decompose.split5x5_rank_for_error(bk, target, ranks, n_iter=policy.als_iters,
                                                             rng=policy.seed)
            if err > target:
                return (f"no rank below the MAC break-even reaches energy {policy.value} "
                        f"(best relative error {err:.3f} > {target:.3f} at rank {r})")
            fits.append((A, B))
        best = max(A.shape[0] for A, _ in fits)
        if any(A.shape[0] != best for A, _ in fits):  # groups need one shared rank
            return {"rank": best}, None
        return {"rank": best}, self._factors(conv, {"rank": best}, fits)

    def macs(self, conv: ConvSpec, ranks: Ranks) -> int:
        R, g, geo = ranks["rank"], conv.group, Geometry.of(conv)
        assert conv.pads is not None
        t, left, bottom, right = conv.pads
        mid_h = geo.in_h + t + bottom - 2 * conv.dilations[0]
        mid_w = geo.in_w + left + right - 2 * conv.dilations[1]
        O, Ig = conv.w_shape[:2]
        return g * R * Ig * 9 * mid_h * mid_w + O * R * 9 * geo.out_h * geo.out_w

    def decompose(self, conv: ConvSpec, ranks: Ranks, fit: FitContext) -> Factors:
        R = ranks["rank"]
        blocks = split_groups(conv.W, conv.group)
        m = fit.moments_for(conv)
        if R >= self.full_ranks(conv)["rank"]:
            fits = [decompose.split5x5_shift(bk) for bk in blocks]
        elif m is not None:  # ALS on activations (or the input-channel whitening on wide layers)
            fits = [datafit.split5x5_datafit(conv.W, m.covariance, R, n_iter=fit.als_iters, rng=fit.seed,
                                                  refine=fit.refine)]
        else:
            fits = [decompose.split5x5_als(bk, R, n_iter=fit.als_iters, rng=fit.seed) for bk in blocks]
        return self._factors(conv, {"rank": int(fits[0][0].shape[0])}, fits, m)

    def _factors(self, conv: ConvSpec, ranks: Ranks, fits: list[tuple[np.ndarray, np.ndarray]],
                 moments: Moments | None = None) -> Factors:
        W_hat = np.concatenate([decompose.compose_split5x5(A, B) for A, B in fits], axis=0)
        arrays = {"3x3a": np.concatenate([f[0] for f in fits], axis=0),  # (g·R, Ig, 3, 3)
                  "3x3b": np.concatenate([f[1] for f in fits], axis=0)}  # (O, R, 3, 3)
        return make_factors(conv, ranks, arrays, W_hat, moments)

    def emit(self, conv: ConvSpec, factors: Factors, b: Builder) -> None:
        assert conv.pads is not None
        mid = b.conv_node("3x3a", conv.x, factors.arrays["3x3a"], pads=conv.pads, dilations=conv.dilations,
                          group=conv.group)
        b.conv_node("3x3b", mid, factors.arrays["3x3b"], bias=factors.bias, y=conv.y, strides=conv.strides,
                    dilations=conv.dilations, group=conv.group)

    def form(self, conv: ConvSpec, ranks: Ranks) -> str:
        return "3x3(pad)+3x3(pad0)"
