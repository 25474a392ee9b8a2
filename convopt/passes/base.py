"""What every decomposition pass shares: rank policy, the check/rewrite protocol, and the pass driver.

A pass maps one Conv y = conv(x, W) to a chain of convs whose composed kernel approximates W
(exactly at full rank); the driver splices the chains into a copy of the model.
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import onnx

from convopt import decompose
from convopt.graph import (
    ConvSkip,
    ConvSpec,
    NameScope,
    Replacement,
    apply_replacements,
    conv_macs,
    conv_out_size,
    read_convs,
    tensor,
)
from convopt.report import NodeRewrite, NodeSkip

RankMode = Literal["full", "fraction", "energy"]
MARK = "convopt:"  # doc_string prefix on every node a pass creates
NOMINAL_HW = 56  # input size assumed for MAC estimates when a layer's size is unknown


@dataclass(frozen=True)
class RankPolicy:
    """How each pass picks its rank.

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
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)  # node name → ranks (auto mode)

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

    def pick_for(
        self, node: str, key: str, full: int, spectra: list[np.ndarray] | None = None, align: bool = True
    ) -> int:
        """Rank ``key`` of ``node``: an override if one is set, else the largest rank any group needs."""
        override = self.overrides.get(node, {}).get(key)
        if override is not None:
            return max(1, min(int(override), full))
        if not spectra:
            return self.pick(full, None, align)
        return max(self.pick(full, s, align) for s in spectra)

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "value": None if self.mode == "full" else self.value,
            "align": self.align,
            "bottleneck_side": self.bottleneck_side,
            "als_iters": self.als_iters,
            "seed": self.seed,
        }


@dataclass
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


@dataclass
class Rewritten:
    """A pass's answer for one Conv: the replacement chain and its record."""

    replacement: Replacement
    record: NodeRewrite


def split_groups(W: np.ndarray, group: int) -> list[np.ndarray]:
    """W (O, I/g, kh, kw) → g blocks of (O/g, I/g, kh, kw)."""
    return list(W.reshape(group, W.shape[0] // group, *W.shape[1:]))


class ConvPass(ABC):
    """A decomposition pass: declares its name, refuses Convs with a reason, rewrites the rest."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def check(self, conv: ConvSpec) -> str | None:
        """Reason this pass refuses ``conv`` (None: it applies)."""
        if conv.pads is None:
            return conv.pads_reason or "pads cannot be resolved"
        if conv.node.doc_string.startswith(MARK):
            return f"already rewritten by {conv.node.doc_string[len(MARK):]}"
        if not np.all(np.isfinite(conv.W)):
            return "weight has NaN or Inf values"
        return self.check_kernel(conv)

    @abstractmethod
    def check_kernel(self, conv: ConvSpec) -> str | None:
        """Pass-specific refusal reason."""

    @abstractmethod
    def rewrite(self, conv: ConvSpec, policy: RankPolicy, names: NameScope) -> Rewritten | str:
        """The replacement for ``conv``, or the reason not to rewrite it (e.g. no MAC saving)."""

    # helpers shared by the passes -------------------------------------------------------

    def node_name(self, names: NameScope, conv: ConvSpec, role: str) -> str:
        return names.fresh(f"{self.name}/{conv.name}/{role}")

    def bias(self, conv: ConvSpec, names: NameScope, node: str, inits: list[onnx.TensorProto]) -> str | None:
        """The original bias as a new initializer for ``node`` (the chain's last conv), or None without bias."""
        if conv.B is None:
            return None
        name = names.fresh(node + "/B")
        inits.append(tensor(name, conv.B))
        return name

    def finish(
        self,
        conv: ConvSpec,
        ranks: dict[str, int],
        macs_after: int,
        W_hat: np.ndarray,
        nodes: list[onnx.NodeProto],
        inits: list[onnx.TensorProto],
        form: str,
    ) -> Rewritten:
        """The Rewritten answer: the replacement chain and its record (params counted from ``inits``)."""
        g = Geometry.of(conv)
        record = NodeRewrite(
            node=conv.name,
            kernel=tuple(conv.kernel),
            channels_in=conv.in_channels,
            channels_out=conv.out_channels,
            ranks=ranks,
            macs_before=conv_macs(conv.W.shape, g.out_h, g.out_w),
            macs_after=int(macs_after),
            params_before=conv.params,
            params_after=sum(int(np.prod(t.dims)) for t in inits),
            weight_rel_error=float(decompose.relative_error(conv.W, W_hat)),
            new_nodes=tuple(n.name for n in nodes),
            form=form,
        )
        return Rewritten(Replacement(conv, nodes, inits), record)

    def saves(self, conv: ConvSpec, policy: RankPolicy, macs_after: int, what: str) -> str | None:
        """Reason to refuse when the rewrite would not lower MACs (never refused in full-rank mode)."""
        if policy.mode == "full":
            return None
        g = Geometry.of(conv)
        before = conv_macs(conv.W.shape, g.out_h, g.out_w)
        if macs_after >= before:
            return f"{what} would not lower MACs ({macs_after:,} >= {before:,})"
        return None


@dataclass
class PassOutcome:
    """The rewritten model and what the pass did to each Conv."""

    model: onnx.ModelProto
    rewritten: list[NodeRewrite]
    skipped: list[NodeSkip]
    seconds: float


def run_conv_pass(
    model: onnx.ModelProto,
    conv_pass: ConvPass,
    policy: RankPolicy,
    shapes: dict[str, tuple[int, ...]],
    only: set[str] | None = None,
) -> PassOutcome:
    """Apply ``conv_pass`` to every Conv of ``model`` (or those named in ``only``); never mutates ``model``."""
    t0 = time.perf_counter()
    names = NameScope(model.graph)
    replacements: list[Replacement] = []
    rewritten: list[NodeRewrite] = []
    skipped: list[NodeSkip] = []
    with decompose.one_blas_thread():
        for item in read_convs(model, shapes):
            if only is not None and item.name not in only:
                continue
            if isinstance(item, ConvSkip):
                skipped.append(NodeSkip(item.name, item.reason))
                continue
            reason = conv_pass.check(item)
            if reason is None:
                result = conv_pass.rewrite(item, policy, names)
                if isinstance(result, str):
                    reason = result
                else:
                    replacements.append(result.replacement)
                    rewritten.append(result.record)
                    continue
            skipped.append(NodeSkip(item.name, reason))
    new_model = apply_replacements(model, replacements) if replacements else _copy(model)
    return PassOutcome(new_model, rewritten, skipped, time.perf_counter() - t0)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m
