"""Candidate rewrites of one Conv for auto mode: every applicable pass × its rank grid, decomposed once
(the factors are reused by timing, pricing, refits and the final plan)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from convopt import decompose
from convopt.core.plan import Choice
from convopt.graph import ConvSpec
from convopt.pages import tmp_on_disk, to_file
from convopt.passes import FitContext, get_pass
from convopt.passes.base import describe


@dataclass
class Candidate:
    """One rewrite of ``layer``: its choice (with factors), MACs, and what auto measured of it."""

    layer: str
    choice: Choice
    macs_before: int
    macs_after: int
    form: str
    weight_rel_error: float
    output_error: float | None = None  # on the fit data (data-aware factors)
    dense_ms: float = float("nan")
    ms: float = float("nan")
    cost: float | None = None
    status: str = "built"

    @property
    def key(self) -> str:
        return self.choice.key

    @property
    def error(self) -> float:
        """The layer's relative output error on the fit data (data-aware factors), else its weight error."""
        return self.weight_rel_error if self.output_error is None else self.output_error

    def drop_factors(self) -> None:
        """Forget the factors (a candidate no longer in play: only its figures stay, for the report)."""
        self.choice = Choice(self.choice.pass_name, dict(self.choice.ranks))

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.ms if self.ms > 0 else float("nan")

    @property
    def saved_ms(self) -> float:
        return self.dense_ms - self.ms

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "candidate": self.key, "form": self.form, "ranks": dict(self.choice.ranks),
                "macs_before": self.macs_before, "macs_after": self.macs_after, "weight_rel_error":
                self.weight_rel_error, "output_error": self.output_error, "dense_ms": self.dense_ms, "ms": self.ms, "layer_speedup": self.speedup,
                "cost": self.cost, "status": self.status}


def build_candidates(conv: ConvSpec, passes: list[str], align: int = 8,
                     fit: FitContext = FitContext()) -> tuple[list[Candidate], list[str]]:
    """Candidates for ``conv`` (each lowers MACs), plus the reasons the other grid points were refused.
    Every rewrite that lowers MACs at all is kept for timing: MACs do not predict ORT's speed."""
    out: dict[str, Candidate] = {}
    refused: list[str] = []
    with decompose.svd_reuse(), decompose.one_blas_thread():  # one SVD per unfolding, shared by every rank
        for name in passes:
            p = get_pass(name)
            reason = p.applies(conv)
            if reason is not None:
                refused.append(f"{name}: {reason}")
                continue
            for ranks in p.rank_grid(conv, align):
                reason = p.saving_refusal(conv, ranks)
                if reason is not None:
                    refused.append(f"{name} {describe(ranks)}: {reason}")
                    continue
                factors = p.decompose(conv, ranks, fit)
                choice = Choice(name, dict(factors.ranks), factors)
                out.setdefault(choice.key, Candidate(conv.name, choice, p.dense_macs(conv),
                                                     p.macs(conv, factors.ranks), p.form(conv, factors.ranks),
                                                     factors.weight_rel_error, factors.output_error))
    return list(out.values()), refused


def set_aside(cands: list[Candidate]) -> None:
    """Move the candidates' factor arrays (one layer's kept candidates, say) to one file, mapped read-only
    (convopt.pages), where the temporary folder is on a disk: through the rest of the search they cost memory
    only while a plan writes them into a model (``apply_plan`` drops their pages again). The same values."""
    held = [(k, k.choice.factors) for k in cands if k.choice.factors is not None]
    if not held or not tmp_on_disk():
        return
    names = [(k, f, list(f.arrays)) for k, f in held]
    mapped = iter(to_file([f.arrays[n] for _, f, ns in names for n in ns], "convopt-factors-"))
    for k, f, ns in names:
        k.choice = k.choice.with_factors(replace(f, arrays={n: next(mapped) for n in ns}))
