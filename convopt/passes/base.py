"""What every decomposition pass is: a registered class that owns one factorization of a Conv.

A pass maps y = conv(x, W) to a chain of convs whose composed kernel approximates W (exactly at full rank).
It answers, for one Conv: whether it applies (or why not), its exact ranks, the rank grid auto mode may try,
the ranks a uniform policy picks, the MACs at given ranks, the factors at given ranks (pure numpy), and the
nodes that carry them (through a graph ``Builder``). Passes register themselves by subclassing ``ConvPass``:
nothing else in convopt names a pass.
"""
from __future__ import annotations

import inspect
import math
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from convopt import datafit, decompose
from convopt.datafit import Moments
from convopt.graph import Builder, ConvSpec, conv_macs, conv_out_size

RankMode = Literal["full", "fraction", "energy"]
Ranks = dict[str, int]
MARK = "convopt:"  # doc_string prefix on every node a pass creates
NOMINAL_HW = 56  # input size assumed to decide MAC savings when a layer's size is unknown

REGISTRY: dict[str, type["ConvPass"]] = {}


@dataclass(frozen=True)
class RankPolicy:
    """How uniform mode picks ranks.

    full: the exact rank (a verification mode: always rewrites, MACs usually grow);
    fraction: ceil(value × exact rank); energy: keep ``value`` of the squared singular values
    (for split5x5, the ALS fit whose relative error is at most sqrt(1 - value)).
    Ranks are rounded up to a multiple of ``align`` (ORT's NCHWc CPU kernels use channel blocks of 8).
    """

    mode: RankMode = "energy"
    value: float = 0.9
    align: int = 8
    bottleneck_side: Literal["both", "in", "out"] = "both"
    als_iters: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("full", "fraction", "energy"):
            raise ValueError(f"unknown rank mode {self.mode!r}")
        if self.mode != "full" and not (0.0 < self.value <= 1.0):
            raise ValueError(f"rank {self.mode} must be in (0, 1], got {self.value}")
        if self.align < 1:
            raise ValueError("align must be >= 1")

    def pick(self, full: int, spectrum: np.ndarray | None = None, align: bool = True) -> int:
        """Rank for a factor whose exact rank is ``full`` (spectrum: its singular values)."""
        if self.mode == "full":
            return full
        if self.mode == "fraction" or spectrum is None:
            r = max(1, math.ceil(self.value * full))
        else:
            r = decompose.rank_for_energy(np.asarray(spectrum), self.value)
        return decompose.align_rank(r, self.align if align else 1, full)

    def pick_groups(self, full: int, spectra: list[np.ndarray], align: bool = True) -> int:
        """The largest rank any group's spectrum needs."""
        return max(self.pick(full, s, align) for s in spectra)

    @property
    def fit(self) -> "FitContext":
        return FitContext(seed=self.seed, als_iters=self.als_iters)

    def to_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "value": None if self.mode == "full" else self.value, "align": self.align,
                "bottleneck_side": self.bottleneck_side, "als_iters": self.als_iters, "seed": self.seed}


@dataclass(frozen=True)
class FitContext:
    """Options of a decomposition: the seed and sweeps of the iterative fits (split5x5's ALS), and, for
    data-aware factors, each layer's input-patch moments on the fit data (node name → Moments, im2col order
    (c, a, b) as convopt.auto.lstsq.im2col_at gives it). Without moments a pass fits the kernel alone."""

    seed: int = 0
    als_iters: int = 30
    moments: Mapping[str, Moments] = field(default_factory=dict)
    refine: bool = False  # data-aware: also try least-squares-refined factors under the full patch moment (slow)

    def moments_for(self, conv: ConvSpec) -> Moments | None:
        """The layer's moments when its factors can use them (dense convs: one group)."""
        m = self.moments.get(conv.name)
        return m if m is not None and conv.group == 1 and m.dim == int(np.prod(conv.w_shape[1:])) else None


@dataclass(frozen=True)
class Factors:
    """A pass's factors for one Conv, pure numpy: ``arrays`` holds each conv's weight of the chain in order
    (the last one is the chain's last conv, which also carries ``bias``); ``ranks`` the ranks they have;
    ``weight_rel_error`` = ‖W − compose(factors)‖ / ‖W‖; ``output_error``: for data-aware factors, the layer's
    relative output error on the fit data (‖Δy‖/‖y‖ from the moments, bias corrected), else None."""

    ranks: Ranks
    arrays: dict[str, np.ndarray]
    bias: np.ndarray | None
    weight_rel_error: float
    output_error: float | None = None

    @property
    def last(self) -> str:
        return list(self.arrays)[-1]

    def with_last(self, weight: np.ndarray, bias: np.ndarray) -> "Factors":
        """These factors with the last conv's weight and bias replaced (a least-squares refit)."""
        arrays = dict(self.arrays)
        arrays[self.last] = np.ascontiguousarray(weight.reshape(arrays[self.last].shape), np.float32)
        return Factors(self.ranks, arrays, np.ascontiguousarray(bias, np.float32), self.weight_rel_error,
                       self.output_error)


_ENERGY: dict[tuple[int, str], tuple[weakref.ref, float]] = {}


def _output_energy(conv: ConvSpec, moments: Moments) -> float:
    """E‖y‖² of the dense layer's output (per pixel) on the fit data, once per layer and moments. Keyed by the
    moments' id, with a weak reference to check that the id is still theirs (an id is reused once freed)."""
    key = (id(moments), conv.name)
    hit = _ENERGY.get(key)
    if hit is not None and hit[0]() is moments:
        return hit[1]
    if len(_ENERGY) > 1024:
        _ENERGY.clear()
    W = conv.W.reshape(conv.w_shape[0], -1).astype(np.float64)
    b = np.zeros(W.shape[0]) if conv.B is None else conv.B.astype(np.float64)
    y_mean = W @ moments.mean + b  # E‖y‖² = tr(W C Wᵀ) + ‖W μ + b‖²: no (F, F) S made
    energy = float(np.sum((W @ moments.covariance) * W) + y_mean @ y_mean)
    _ENERGY[key] = (weakref.ref(moments), energy)
    return energy


def make_factors(conv: ConvSpec, ranks: Ranks, arrays: dict[str, np.ndarray], W_hat: np.ndarray,
                 moments: Moments | None) -> Factors:
    """Factors with their errors; with ``moments`` the last bias is corrected for the mean shift of the output
    (b + (W − Ŵ)μ) and the output error on the fit data is recorded."""
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
    err = decompose.relative_error(conv.W, W_hat)
    if moments is None:
        return Factors(dict(ranks), arrays, conv.B, err)
    W, Wh = conv.W.reshape(conv.w_shape[0], -1).astype(np.float64), W_hat.reshape(conv.w_shape[0], -1)
    bias = datafit.bias_correction(W, Wh, conv.B, moments.mean)
    D = W - Wh
    num = float(np.sum((D @ moments.covariance) * D))
    den = _output_energy(conv, moments)
    out_err = float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0
    return Factors(dict(ranks), arrays, bias.astype(np.float32), err, out_err)


@dataclass(frozen=True)
class Geometry:
    """Sizes a pass needs for MAC accounting: input H×W and output H×W (nominal when unknown)."""

    in_h: int
    in_w: int
    out_h: int
    out_w: int
    known: bool

    @classmethod
    def of(cls, conv: ConvSpec) -> "Geometry":
        if conv.in_shape is not None and conv.out_shape is not None:
            return cls(conv.in_shape[2], conv.in_shape[3], conv.out_shape[2], conv.out_shape[3], True)
        h = w = NOMINAL_HW
        assert conv.pads is not None
        oh = conv_out_size(h, conv.kernel[0], conv.strides[0], conv.dilations[0], conv.pads[0], conv.pads[2])
        ow = conv_out_size(w, conv.kernel[1], conv.strides[1], conv.dilations[1], conv.pads[1], conv.pads[3])
        return cls(h, w, max(oh, 1), max(ow, 1), False)


def split_groups(W: np.ndarray, group: int) -> list[np.ndarray]:
    """W (O, I/g, kh, kw) → g blocks of (O/g, I/g, kh, kw)."""
    return list(W.reshape(group, W.shape[0] // group, *W.shape[1:]))


def aligned(fraction: float, full: int, align: int) -> int:
    """ceil(fraction × full) rounded up to a multiple of ``align`` (at most ``full``)."""
    return decompose.align_rank(math.ceil(fraction * full), align, full)


class ConvPass(ABC):
    """A decomposition pass. Subclasses set ``name`` and ``summary`` and register themselves on definition;
    ``in_auto`` says whether auto mode tries it by default."""

    name: ClassVar[str]
    summary: ClassVar[str]
    in_auto: ClassVar[bool] = True
    ops: ClassVar[tuple[str, ...]] = ("Conv",)  # the layer kinds it rewrites (a Gemm reads as a 1×1 conv)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not name:
            return
        other = REGISTRY.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"two passes are named {name!r}: {other.__qualname__} and {cls.__qualname__}")
        if not inspect.isabstract(cls):
            REGISTRY[name] = cls

    # -- what a pass declares ------------------------------------------------------------------------------

    def applies(self, conv: ConvSpec) -> str | None:
        """Reason this pass refuses ``conv`` (None: it applies)."""
        if conv.op not in self.ops:
            return f"{conv.op} layer: {self.name} rewrites {', '.join(self.ops)} layers"
        if conv.pads is None:
            return conv.pads_reason or "pads cannot be resolved"
        if conv.node.doc_string.startswith(MARK):
            return f"already rewritten by {conv.node.doc_string[len(MARK):]}"
        if not conv.finite:
            return "weight has NaN or Inf values"
        return self.refuses(conv)

    @abstractmethod
    def refuses(self, conv: ConvSpec) -> str | None:
        """Pass-specific refusal reason (the kernel or grouping it cannot rewrite)."""

    @abstractmethod
    def full_ranks(self, conv: ConvSpec) -> Ranks:
        """The ranks at which the rewrite is exact."""

    @abstractmethod
    def rank_grid(self, conv: ConvSpec, align: int) -> list[Ranks]:
        """The ranks auto mode may try for ``conv`` (before the MAC check)."""

    @abstractmethod
    def pick(self, conv: ConvSpec, policy: RankPolicy) -> Ranks | str:
        """The ranks ``policy`` gives ``conv`` (uniform mode), or why it gives none."""

    @abstractmethod
    def macs(self, conv: ConvSpec, ranks: Ranks) -> int:
        """Multiply-accumulates of the rewrite for one sample (nominal geometry when the size is unknown)."""

    @abstractmethod
    def decompose(self, conv: ConvSpec, ranks: Ranks, fit: FitContext) -> Factors:
        """The factors at ``ranks`` (pure numpy)."""

    @abstractmethod
    def emit(self, conv: ConvSpec, factors: Factors, b: Builder) -> None:
        """Build the chain that carries ``factors``, from ``conv.x`` to ``conv.y``."""

    @abstractmethod
    def form(self, conv: ConvSpec, ranks: Ranks) -> str:
        """The chain's shape in a few characters, for reports (e.g. "3x1+1x3")."""

    # -- derived --------------------------------------------------------------------------------------------

    def rewrite(self, conv: ConvSpec, ranks: Ranks, builder: Builder, fit: FitContext = FitContext()) -> Factors:
        """Decompose ``conv`` at explicit ``ranks`` and emit the chain into ``builder``."""
        factors = self.decompose(conv, ranks, fit)
        self.emit(conv, factors, builder)
        return factors

    def dense_macs(self, conv: ConvSpec) -> int:
        g = Geometry.of(conv)
        return conv_macs(conv.w_shape, g.out_h, g.out_w)

    def saving_refusal(self, conv: ConvSpec, ranks: Ranks) -> str | None:
        """Why ``ranks`` are not worth rewriting: they do not lower MACs."""
        after, before = self.macs(conv, ranks), self.dense_macs(conv)
        if after >= before:
            return f"{describe(ranks)} would not lower MACs ({after:,} >= {before:,})"
        return None

    def choose(self, conv: ConvSpec, policy: RankPolicy) -> tuple[Ranks, Factors | None] | str:
        """Uniform mode: the policy's ranks (and the factors when picking them already computed them), or
        why ``conv`` is not rewritten. Full mode always rewrites; otherwise the rewrite must lower MACs."""
        ranks = self.pick(conv, policy)
        if isinstance(ranks, str):
            return ranks
        if policy.mode != "full":
            reason = self.saving_refusal(conv, ranks)
            if reason:
                return reason
        return ranks, None


def describe(ranks: Ranks) -> str:
    """'rank 32', 'ranks in=16 out=24', 'multiplier 2'."""
    if len(ranks) == 1:
        (k, v), = ranks.items()
        return f"{k.replace('_', ' ')} {v}"
    return "ranks " + " ".join(f"{k.removeprefix('rank_')}={v}" for k, v in ranks.items())


def ranks_key(ranks: Ranks) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(ranks.items()))


def unique(grid: list[Ranks]) -> list[Ranks]:
    """``grid`` without repeated rank dicts (two requests can clamp to the same ranks), first kept."""
    seen: dict[str, Ranks] = {}
    for r in grid:
        seen.setdefault(ranks_key(r), r)
    return list(seen.values())
