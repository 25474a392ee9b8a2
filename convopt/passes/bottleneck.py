"""bottleneck: k×k conv → 1×1 (I→r_in) · k×k core (r_in→r_out) · 1×1 (r_out→O);
W ≈ core ×_I U_in ×_O U_out (Tucker-2 by HOSVD on modes O and I; exact at r_in = I, r_out = O)."""
from __future__ import annotations

import numpy as np

from convopt import decompose
from convopt.graph import ConvSpec, NameScope, make_conv, tensor
from convopt.passes.base import ConvPass, Geometry, RankPolicy, Rewritten, split_groups


class Bottleneck(ConvPass):
    name = "bottleneck"
    summary = "1×1 reduce · k×k core · 1×1 expand (Tucker-2, Inception/ResNet bottleneck)"

    def check_kernel(self, conv: ConvSpec) -> str | None:
        if conv.kernel == (1, 1):
            return "1x1 kernel: a bottleneck would only add 1x1 convs"
        if conv.W.shape[1] == 1 and conv.W.shape[0] == conv.group:
            return "depthwise conv (1 channel per group): nothing to reduce"
        return None

    def rewrite(self, conv: ConvSpec, policy: RankPolicy, names: NameScope) -> Rewritten | str:
        g = conv.group
        O, Ig, kh, kw = conv.W.shape
        Og = O // g
        blocks = split_groups(conv.W, g)
        spectra = [decompose.tucker2_spectra(bk) for bk in blocks]
        side = policy.bottleneck_side
        r_in: int | None = None
        r_out: int | None = None
        # exact Tucker ranks are bounded by the other modes: rank of the (O, I·k²) unfolding ≤ I·k²
        full_in, full_out = min(Ig, Og * kh * kw), min(Og, Ig * kh * kw)
        if side in ("both", "in"):
            r_in = policy.pick_for(conv.name, "rank_in", full_in, [s[1] for s in spectra])
        if side in ("both", "out"):
            r_out = policy.pick_for(conv.name, "rank_out", full_out, [s[0] for s in spectra])
        if policy.mode != "full":  # a full-size side is a pure extra 1x1 conv: drop it
            if r_in == Ig:
                r_in = None
            if r_out == Og:
                r_out = None
        if r_in is None and r_out is None:
            return "the chosen ranks keep every channel (no reduction on either side)"
        geo = Geometry.of(conv)
        ci = Ig if r_in is None else r_in  # core input channels per group
        co = Og if r_out is None else r_out  # core output channels per group
        macs_after = g * co * ci * kh * kw * geo.out_h * geo.out_w
        if r_in is not None:
            macs_after += g * r_in * Ig * geo.in_h * geo.in_w
        if r_out is not None:
            macs_after += O * r_out * geo.out_h * geo.out_w
        reason = self.saves(conv, policy, macs_after, f"ranks in={r_in} out={r_out}")
        if reason:
            return reason
        factors = [decompose.tucker2(bk, r_in, r_out) for bk in blocks]
        W_hat = np.concatenate([decompose.compose_tucker2(*f) for f in factors], axis=0)
        core = np.concatenate([f[1] for f in factors], axis=0)  # (g·co, ci, kh, kw)
        nodes, inits = [], []
        x = conv.x
        if r_in is not None:
            n = self.node_name(names, conv, "reduce")
            w, y = names.fresh(n + "/W"), names.fresh(n + "/out")
            inits.append(tensor(w, np.concatenate([f[0] for f in factors], axis=0)))
            nodes.append(make_conv(n, x, w, None, y, kernel=(1, 1), group=g, pass_name=self.name))
            x = y
        n = self.node_name(names, conv, "core")
        w = names.fresh(n + "/W")
        inits.append(tensor(w, core))
        core_b = self.bias(conv, names, n, inits) if r_out is None else None
        core_y = conv.y if r_out is None else names.fresh(n + "/out")
        assert conv.pads is not None
        nodes.append(make_conv(n, x, w, core_b, core_y, kernel=(kh, kw), strides=conv.strides, pads=conv.pads,
                               dilations=conv.dilations, group=g, pass_name=self.name))
        if r_out is not None:
            n = self.node_name(names, conv, "expand")
            w = names.fresh(n + "/W")
            inits.append(tensor(w, np.concatenate([f[2] for f in factors], axis=0)))
            b = self.bias(conv, names, n, inits)
            nodes.append(make_conv(n, core_y, w, b, conv.y, kernel=(1, 1), group=g, pass_name=self.name))
        ranks = {k: int(v) for k, v in (("rank_in", r_in), ("rank_out", r_out)) if v is not None}
        form = "+".join(["1x1"] * (r_in is not None) + [f"{kh}x{kw}"] + ["1x1"] * (r_out is not None))
        return self.finish(conv, ranks, macs_after, W_hat, nodes, inits, form)
