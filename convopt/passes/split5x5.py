"""split5x5: 5×5 conv → 3×3 conv A (I→R, original pads) · 3×3 conv B (R→O, pad 0, stride s);
W[o,i,w] ≈ Σ_r Σ_{u+v=w} A[r,i,u]·B[o,r,v] (ALS on the kernel; exact at R = 9·min(I, O) by shifts).
Pad 2 then pad 0 composes exactly; pad 1 + pad 1 would differ on the one-pixel border ring."""
from __future__ import annotations

import math

import numpy as np

from convopt import decompose
from convopt.graph import ConvSpec, NameScope, make_conv, tensor
from convopt.passes.base import ConvPass, Geometry, RankPolicy, Rewritten, split_groups


class Split5x5(ConvPass):
    name = "split5x5"
    summary = "5×5 → 3×3 (pad 2) then 3×3 (pad 0) (VGG / Inception-v3)"

    def check_kernel(self, conv: ConvSpec) -> str | None:
        if conv.kernel != (5, 5):
            return f"kernel is {conv.kernel[0]}x{conv.kernel[1]}, not 5x5"
        return None

    def _macs(self, conv: ConvSpec, R: int) -> int:
        geo = Geometry.of(conv)
        assert conv.pads is not None
        t, l, b, r = conv.pads
        d_h, d_w = conv.dilations
        mid_h = geo.in_h + t + b - 2 * d_h
        mid_w = geo.in_w + l + r - 2 * d_w
        g = conv.group
        O, Ig = conv.W.shape[:2]
        return g * R * Ig * 9 * mid_h * mid_w + O * R * 9 * geo.out_h * geo.out_w

    def rewrite(self, conv: ConvSpec, policy: RankPolicy, names: NameScope) -> Rewritten | str:
        g = conv.group
        O, Ig = conv.W.shape[:2]
        full = 9 * min(Ig, O // g)
        blocks = split_groups(conv.W, g)
        override = policy.overrides.get(conv.name, {}).get("rank")
        if override is not None or policy.mode != "energy":
            R = policy.pick_for(conv.name, "rank", full)
            reason = self.saves(conv, policy, self._macs(conv, R), f"rank {R}")
            if reason:
                return reason
            if R >= full:
                factors = [decompose.split5x5_shift(bk) for bk in blocks]
                R = int(factors[0][0].shape[0])
            else:
                factors = [decompose.split5x5_als(bk, R, n_iter=policy.als_iters, rng=policy.seed) for bk in blocks]
        else:
            # energy E ↔ relative kernel error sqrt(1 - E); only ranks below the MAC break-even are tried
            target = math.sqrt(max(0.0, 1.0 - policy.value))
            a = policy.align
            candidates = [r for r in range(a, full + 1, a) if self._macs(conv, r) < self._macs_dense(conv)]
            if not candidates:
                return f"no rank (multiple of {a}) lowers MACs"
            best = None
            factors = []
            for bk in blocks:
                r, A, B, err = decompose.split5x5_rank_for_error(
                    bk, target, candidates, n_iter=policy.als_iters, rng=policy.seed
                )
                if err > target:
                    return (f"no rank below the MAC break-even reaches energy {policy.value} "
                            f"(best relative error {err:.3f} > {target:.3f} at rank {r})")
                best = max(best or 0, r)
                factors.append((A, B))
            if any(f[0].shape[0] != best for f in factors):  # groups need one shared rank
                factors = [decompose.split5x5_als(bk, best, n_iter=policy.als_iters, rng=policy.seed) for bk in blocks]
            R = int(best)  # type: ignore[arg-type]
        macs_after = self._macs(conv, R)
        A = np.concatenate([f[0] for f in factors], axis=0)  # (g·R, Ig, 3, 3)
        B = np.concatenate([f[1] for f in factors], axis=0)  # (O, R, 3, 3)
        W_hat = np.concatenate([decompose.compose_split5x5(a, b) for a, b in factors], axis=0)
        n1 = self.node_name(names, conv, "3x3a")
        n2 = self.node_name(names, conv, "3x3b")
        wa, wb, mid = names.fresh(n1 + "/W"), names.fresh(n2 + "/W"), names.fresh(n1 + "/out")
        inits = [tensor(wa, A), tensor(wb, B)]
        bias = self.bias(conv, names, n2, inits)
        assert conv.pads is not None
        nodes = [
            make_conv(n1, conv.x, wa, None, mid, kernel=(3, 3), pads=conv.pads, dilations=conv.dilations,
                      group=g, pass_name=self.name),
            make_conv(n2, mid, wb, bias, conv.y, kernel=(3, 3), strides=conv.strides, dilations=conv.dilations,
                      group=g, pass_name=self.name),
        ]
        return self.finish(conv, {"rank": R}, macs_after, W_hat, nodes, inits, "3x3(pad)+3x3(pad0)")

    def _macs_dense(self, conv: ConvSpec) -> int:
        geo = Geometry.of(conv)
        O, Ig, kh, kw = conv.W.shape
        return O * Ig * kh * kw * geo.out_h * geo.out_w
