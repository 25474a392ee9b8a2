"""Typed options of `convopt optimize`, as the Python API takes them: the CLI only fills these in."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from convopt.core.budget import Budget
from convopt.errors import InputError
from convopt.limits import DEFAULT_MAX_MODEL_BYTES
from convopt.measure.executor import ExecutorOptions
from convopt.measure.ort import OrtSettings
from convopt.measure.plugin import MetricFn
from convopt.passes import RankPolicy

Strategy = Literal["auto", "uniform"]
Side = Literal["both", "in", "out"]


@dataclass(frozen=True)
class RankOptions:
    """Uniform mode's rank rule: at most one of ``full_rank``, ``rank_fraction``, ``energy`` (default energy
    0.9), ranks rounded up to a multiple of ``align``."""

    full_rank: bool = False
    rank_fraction: float | None = None
    energy: float | None = None
    align: int = 8
    bottleneck_side: Side = "both"

    @property
    def given(self) -> list[str]:
        """The rank options set (a value of 0 counts as set: the policy then refuses it)."""
        flags = (("--full-rank", self.full_rank), ("--rank-fraction", self.rank_fraction is not None),
                 ("--energy", self.energy is not None))
        return [name for name, is_set in flags if is_set]

    def policy(self, seed: int) -> RankPolicy:
        if len(self.given) > 1:
            raise InputError(f"choose one rank option, not {' and '.join(self.given)}")
        if self.bottleneck_side not in ("both", "in", "out"):
            raise InputError("--bottleneck-side must be both, in or out")
        try:
            if self.full_rank:
                return RankPolicy(mode="full", align=self.align, bottleneck_side=self.bottleneck_side, seed=seed)
            if self.rank_fraction is not None:
                return RankPolicy(mode="fraction", value=self.rank_fraction, align=self.align,
                                  bottleneck_side=self.bottleneck_side, seed=seed)
            return RankPolicy(mode="energy", value=0.9 if self.energy is None else self.energy, align=self.align,
                              bottleneck_side=self.bottleneck_side, seed=seed)
        except ValueError as exc:
            raise InputError(str(exc)) from exc


@dataclass(frozen=True)
class DataOptions:
    """Where the samples come from: ``data`` (.npz or a folder of images with ``preprocess``), ``calib``
    (auto mode's calibration data, else half of ``data``), ``labels``, ``limit`` samples at most, the shapes
    of dynamic inputs, and ``resize`` (a folder's resize rule, e.g. ``height=64``: samples of different shapes)."""

    data: Path | None = None
    calib: Path | None = None
    labels: Path | None = None
    preprocess: str | None = None
    limit: int | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    resize: str | None = None


@dataclass(frozen=True)
class OptimizeOptions:
    """Everything `convopt optimize` does, typed. ``output`` None: MODEL.opt.onnx beside the model."""

    model: Path
    output: Path | None = None
    report: Path | None = None
    overwrite: bool = False
    strategy: Strategy | None = None
    passes: tuple[str, ...] | None = None
    rank: RankOptions = RankOptions()
    data: DataOptions = DataOptions()
    budget: Budget = Budget()
    no_budget: bool = False
    metric: str | MetricFn | None = None  # FILE.py:FN, package.module:FN, or the function itself
    fail_under_speedup: float | None = None
    ort: OrtSettings = OrtSettings()
    executor: ExecutorOptions = ExecutorOptions()
    require_faster: bool = True
    no_eval: bool = False
    fold_bn: bool = True
    seed: int = 0
    latency_cache: Path | None = None
    random_samples: int = 8
    refit_samples: int = 128
    time_budget: float | None = None
    quantize: str = "none"  # "none" | "int8": the precision the written model is deployed in
    force_quantize: bool = False  # INT8 even where it is not faster on this CPU
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES  # the model file and its external data, read at most

    @property
    def output_path(self) -> Path:
        if self.output is not None:
            return self.output
        name = self.model.name
        return self.model.with_name((name[:-5] if name.endswith(".onnx") else name) + ".opt.onnx")
