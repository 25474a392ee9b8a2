"""factorize: k×k conv → k×1 conv (I→R) · 1×k conv (R→O); W[o,i,a,b] ≈ Σ_r H[o,r,b]·V[r,i,a]
(SVD of W as an (I·kh, O·kw) matrix, Tai et al. 2016; exact at R = min(I·kh, O·kw))."""
from __future__ import annotations

import numpy as np

from convopt import decompose
from convopt.graph import ConvSpec, NameScope, make_conv, tensor
from convopt.passes.base import ConvPass, Geometry, RankPolicy, Rewritten, split_groups


class Factorize(ConvPass):
    name = "factorize"
    summary = "k×k → k×1 then 1×k (spatial SVD, Inception-v3 asymmetric)"

    def check_kernel(self, conv: ConvSpec) -> str | None:
        kh, kw = conv.kernel
        if kh == 1 and kw == 1:
            return "1x1 kernel: nothing to factorize"
        if kh == 1 or kw == 1:
            return f"{kh}x{kw} kernel is already separable"
        return None

    def rewrite(self, conv: ConvSpec, policy: RankPolicy, names: NameScope) -> Rewritten | str:
        g = conv.group
        O, Ig, kh, kw = conv.W.shape
        Og = O // g
        full = min(Ig * kh, Og * kw)
        blocks = split_groups(conv.W, g)
        R = policy.pick_for(conv.name, "rank", full, [decompose.spatial_svd_spectrum(bk) for bk in blocks])
        geo = Geometry.of(conv)
        assert conv.pads is not None
        t, l, b, r = conv.pads
        mid_h = geo.out_h
        mid_w = geo.in_w
        macs_after = g * R * Ig * kh * mid_h * mid_w + O * R * kw * geo.out_h * geo.out_w
        reason = self.saves(conv, policy, macs_after, f"rank {R}")
        if reason:
            return reason
        Vs, Hs = zip(*(decompose.spatial_svd(bk, R) for bk in blocks))
        V = np.concatenate(Vs, axis=0)  # (g·R, Ig, kh, 1)
        H = np.concatenate(Hs, axis=0)  # (O, R, 1, kw)
        W_hat = np.concatenate([decompose.compose_spatial(v, h) for v, h in zip(Vs, Hs)], axis=0)
        n1 = self.node_name(names, conv, f"{kh}x1")
        n2 = self.node_name(names, conv, f"1x{kw}")
        v_name, h_name, mid = names.fresh(n1 + "/W"), names.fresh(n2 + "/W"), names.fresh(n1 + "/out")
        inits = [tensor(v_name, V), tensor(h_name, H)]
        b_name = self.bias(conv, names, n2, inits)
        nodes = [
            make_conv(n1, conv.x, v_name, None, mid, kernel=(kh, 1), strides=(conv.strides[0], 1),
                      pads=(t, 0, b, 0), dilations=(conv.dilations[0], 1), group=g, pass_name=self.name),
            make_conv(n2, mid, h_name, b_name, conv.y, kernel=(1, kw), strides=(1, conv.strides[1]),
                      pads=(0, l, 0, r), dilations=(1, conv.dilations[1]), group=g, pass_name=self.name),
        ]
        return self.finish(conv, {"rank": int(R)}, macs_after, W_hat, nodes, inits, f"{kh}x1+1x{kw}")
