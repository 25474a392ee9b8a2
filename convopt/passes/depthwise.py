"""depthwise: dense k×k conv → depthwise k×k (multiplier m) · pointwise 1×1 (I·m→O);
W[o,i] ≈ Σ_j P[o,i,j]·D[i,j] (per-input-channel SVD of W[:, i] as O × k²; exact at m = min(O, k²))."""
from __future__ import annotations

import numpy as np
from onnx import helper

from convopt import decompose
from convopt.graph import ConvSpec, NameScope, make_conv, tensor
from convopt.passes.base import ConvPass, Geometry, RankPolicy, Rewritten, split_groups


class Depthwise(ConvPass):
    name = "depthwise"
    summary = "dense k×k → depthwise k×k · pointwise 1×1 (MobileNet/Xception)"

    def check_kernel(self, conv: ConvSpec) -> str | None:
        if conv.kernel == (1, 1):
            return "1x1 kernel: nothing to separate"
        if conv.W.shape[1] == 1 and conv.group > 1:
            return "already depthwise (1 input channel per group)"
        return None

    def rewrite(self, conv: ConvSpec, policy: RankPolicy, names: NameScope) -> Rewritten | str:
        g = conv.group
        O, Ig, kh, kw = conv.W.shape
        I = Ig * g
        full = min(O // g, kh * kw)
        blocks = split_groups(conv.W, g)
        spectra = [decompose.depthwise_spectrum(bk) for bk in blocks]
        # energy is judged over all input channels together: Σ_i Σ_{j<m} s_ij² / Σ s²
        pooled = np.sqrt(sum((s**2).sum(axis=0) for s in spectra))
        m = policy.pick_for(conv.name, "multiplier", full, [pooled], align=False)
        geo = Geometry.of(conv)
        macs_after = I * m * kh * kw * geo.out_h * geo.out_w + O * Ig * m * geo.out_h * geo.out_w
        reason = self.saves(conv, policy, macs_after, f"multiplier {m}")
        if reason:
            return reason
        factors = [decompose.depthwise_svd(bk, m) for bk in blocks]  # D (Ig, m, kh, kw), P (O/g, Ig, m)
        W_hat = np.concatenate([decompose.compose_depthwise(D, P) for D, P in factors], axis=0)
        D = np.concatenate([f[0] for f in factors], axis=0)  # (I, m, kh, kw)
        P = np.concatenate([f[1] for f in factors], axis=0)  # (O, Ig, m)
        tiled = g == 1 and m >= 2
        if tiled:  # x tiled m times: channel j·I + i carries x_i (keeps ORT's NCHWc depthwise path)
            Dw = D.transpose(1, 0, 2, 3).reshape(m * I, 1, kh, kw)
            Pw = P.transpose(0, 2, 1).reshape(O, m * I, 1, 1)
        else:  # native multiplier: channel i·m + j
            Dw = D.reshape(I * m, 1, kh, kw)
            Pw = P.reshape(O, Ig * m, 1, 1)
        nodes, inits = [], []
        x = conv.x
        if tiled:
            n = self.node_name(names, conv, "tile")
            y = names.fresh(n + "/out")
            node = helper.make_node("Concat", [x] * m, [y], name=n, axis=1)
            node.doc_string = f"convopt:{self.name}"
            nodes.append(node)
            x = y
        n_dw = self.node_name(names, conv, "dw")
        n_pw = self.node_name(names, conv, "pw")
        w_dw, w_pw, mid = names.fresh(n_dw + "/W"), names.fresh(n_pw + "/W"), names.fresh(n_dw + "/out")
        inits += [tensor(w_dw, Dw), tensor(w_pw, Pw)]
        b = self.bias(conv, names, n_pw, inits)
        assert conv.pads is not None
        nodes.append(make_conv(n_dw, x, w_dw, None, mid, kernel=(kh, kw), strides=conv.strides, pads=conv.pads,
                               dilations=conv.dilations, group=I * m if tiled else I, pass_name=self.name))
        nodes.append(make_conv(n_pw, mid, w_pw, b, conv.y, kernel=(1, 1), group=g, pass_name=self.name))
        form = f"tile{m}+dw{kh}x{kw}+pw" if tiled else f"dw{kh}x{kw}(m={m})+pw"
        return self.finish(conv, {"multiplier": int(m)}, macs_after, W_hat, nodes, inits, form)
