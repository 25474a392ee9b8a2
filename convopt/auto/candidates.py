"""Candidate rewrites per Conv: the applicable passes × a few aligned ranks.

Each candidate is built once as a single-layer model (the pass's own rewrite of the real weights), which is
both what gets timed and what gets spliced into the full model (so the SVD/ALS runs once per candidate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx

from convopt import decompose
from convopt.graph import ConvSpec, Replacement
from convopt.passes import get_pass
from convopt.passes.base import RankPolicy
from convopt.report import NodeRewrite
from convopt.auto.latency import rewrite_single

FACTORIZE_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
BOTTLENECK_FRACTIONS = (0.25, 0.5, 0.75)
DEPTHWISE_MULTIPLIERS = (1, 2, 3, 4)
SPLIT5_FRACTIONS = (0.5, 1.0, 1.5, 2.0, 3.0)  # × min(I, O)


@dataclass
class Candidate:
    layer: str
    pass_name: str
    side: str  # bottleneck side ("in" / "out" / "both"), else ""
    ranks: dict[str, int]
    single: onnx.ModelProto  # the rewritten single-layer model (input "x", output "y")
    record: NodeRewrite
    dense_ms: float = float("nan")
    ms: float = float("nan")
    cost: float | None = None
    calib: dict[str, float | None] = field(default_factory=dict)
    status: str = "built"

    @property
    def key(self) -> str:
        r = ",".join(f"{k}={v}" for k, v in sorted(self.ranks.items()))
        return f"{self.pass_name}{('-' + self.side) if self.side else ''}[{r}]"

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.ms if self.ms > 0 else float("nan")

    @property
    def saved_ms(self) -> float:
        return self.dense_ms - self.ms

    def replacement(self, conv: ConvSpec, single: onnx.ModelProto | None = None) -> Replacement:
        """Nodes and initializers of the single-layer rewrite (``single``, default this candidate's own, e.g.
        a refit copy of it), wired to ``conv``'s input and output."""
        single = self.single if single is None else single
        nodes = []
        for n in single.graph.node:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            for i, v in enumerate(m.input):
                if v == "x":
                    m.input[i] = conv.x
            for i, v in enumerate(m.output):
                if v == "y":
                    m.output[i] = conv.y
            nodes.append(m)
        inits = [t for t in single.graph.initializer if t.name not in ("W", "B")]
        return Replacement(conv, nodes, inits)

    def batch_free_single(self) -> onnx.ModelProto:
        """A copy of the single-layer model whose batch dimension is symbolic (to run many samples at once)."""
        m = onnx.ModelProto()
        m.CopyFrom(self.single)
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
        del m.graph.value_info[:]
        return m

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "candidate": self.key, "form": self.record.form, "ranks": self.ranks,
                "macs_before": self.record.macs_before, "macs_after": self.record.macs_after,
                "dense_ms": self.dense_ms, "ms": self.ms, "layer_speedup": self.speedup, "cost": self.cost,
                "calib": self.calib, "status": self.status}


def _rank_specs(conv: ConvSpec, passes: list[str], align: int) -> list[tuple[str, str, dict[str, int]]]:
    O, I, kh, kw = conv.W.shape
    out: list[tuple[str, str, dict[str, int]]] = []
    seen: set[tuple] = set()

    def add(p: str, side: str, ranks: dict[str, int]) -> None:
        k = (p, side, tuple(sorted(ranks.items())))
        if k not in seen:
            seen.add(k)
            out.append((p, side, ranks))

    for p in passes:
        if p == "factorize":
            full = min(I * kh, O * kw)
            for f in FACTORIZE_FRACTIONS:
                add(p, "", {"rank": decompose.align_rank(math.ceil(f * full), align, full)})
        elif p == "bottleneck":
            fin, fout = min(I, O * kh * kw), min(O, I * kh * kw)
            for f in BOTTLENECK_FRACTIONS:
                ri = decompose.align_rank(math.ceil(f * fin), align, fin)
                ro = decompose.align_rank(math.ceil(f * fout), align, fout)
                if ri < I:
                    add(p, "in", {"rank_in": ri})
                if ro < O:
                    add(p, "out", {"rank_out": ro})
                if ri < I and ro < O:
                    add(p, "both", {"rank_in": ri, "rank_out": ro})
        elif p == "depthwise":
            for m in DEPTHWISE_MULTIPLIERS:
                if m <= min(O, kh * kw):
                    add(p, "", {"multiplier": m})
        elif p == "split5x5":
            full = 9 * min(I, O)
            for f in SPLIT5_FRACTIONS:
                add(p, "", {"rank": decompose.align_rank(math.ceil(f * min(I, O)), align, full)})
    return out


def build_candidates(conv: ConvSpec, passes: list[str], batch: int, align: int = 8, seed: int = 0,
                     max_macs_ratio: float = 1.0) -> tuple[list[Candidate], list[str]]:
    """Candidates for ``conv`` whose rewrite lowers MACs to at most ``max_macs_ratio`` of the dense layer,
    plus the reasons the others were refused. By default every rewrite that lowers MACs at all is kept for
    timing: MACs do not predict ORT's speed, the measured latency decides."""
    cands: list[Candidate] = []
    refused: list[str] = []
    with decompose.svd_reuse():  # one SVD per unfolding of this kernel, shared by every rank and side
        for p, side, ranks in _rank_specs(conv, passes, align):
            _build_one(conv, p, side, ranks, batch, align, seed, max_macs_ratio, cands, refused)
    # two rank requests can clamp to the same ranks: keep one
    uniq: dict[str, Candidate] = {}
    for c in cands:
        uniq.setdefault(c.key, c)
    return list(uniq.values()), refused


def _build_one(conv: ConvSpec, p: str, side: str, ranks: dict[str, int], batch: int, align: int, seed: int,
               max_macs_ratio: float, cands: list[Candidate], refused: list[str]) -> None:
    """Build one candidate into ``cands``, or its refusal into ``refused``."""
    cp = get_pass(p)
    reason = cp.check(conv)
    if reason is not None:
        refused.append(f"{p}: {reason}")
        return
    policy = RankPolicy(mode="fraction", value=1.0, align=align, bottleneck_side=side or "both",  # type: ignore[arg-type]
                        seed=seed, overrides={conv.name: dict(ranks)})
    res = rewrite_single(conv, cp, policy, batch)
    if isinstance(res, str):
        refused.append(f"{p}{('-' + side) if side else ''} {ranks}: {res}")
        return
    single, rec = res
    if rec.macs_after > max_macs_ratio * rec.macs_before:
        refused.append(f"{p}{('-' + side) if side else ''} {ranks}: MACs ratio "
                       f"{rec.macs_after / rec.macs_before:.2f} > {max_macs_ratio}")
        return
    cands.append(Candidate(conv.name, p, side, {k: int(v) for k, v in rec.ranks.items()}, single, rec))
