"""The optimize pipeline: fold BN, then for each pass rewrite → check → measure → keep or roll back.

Passes never import onnxruntime; measurement is an instrument (an Evaluator) hooked around them.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import onnx

import convopt
from convopt.errors import RewriteError
from convopt.graph import ConvSpec, infer_tensor_shapes, read_convs
from convopt.passes import get_pass
from convopt.passes.base import PassOutcome, RankPolicy, run_conv_pass
from convopt.passes.fold_bn import NAME as FOLD_BN, fold_batchnorm
from convopt.report import PassReport, Report

Event = Callable[[str], None]


class Instrument(Protocol):
    """What the pipeline needs from an evaluator (convopt.measure.evaluator.Evaluator implements it)."""

    def baseline(self) -> Any: ...
    def measure(self, candidate: onnx.ModelProto, desc: str = "") -> Any: ...
    def check(self, m: Any, budget: Any) -> str | None: ...


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: Report
    measurements: list[Any] = field(default_factory=list)


def conv_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    """Static shapes of every Conv's input and output tensor (batch 1 where dynamic)."""
    wanted = [t for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") for t in (n.input[0], n.output[0])]
    return infer_tensor_shapes(model, input_shapes, wanted)


def totals(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(MACs, params) of all rewritable Convs in the model, batch 1 (layers of unknown size count 0 MACs)."""
    macs = params = 0
    for c in read_convs(model, shapes):
        if isinstance(c, ConvSpec):
            macs += c.macs or 0
            params += c.params
    return macs, params


def verify(model: onnx.ModelProto, where: str) -> None:
    """onnx.checker on a rewritten model; a failure here is a convopt bug, reported as RewriteError."""
    from convopt.io import run_checker

    try:
        run_checker(model)  # bounded memory; works above the 2 GB protobuf limit
    except Exception as exc:  # checker raises several C++-bound types
        raise RewriteError(f"{where} produced an invalid model (a convopt bug, please report): {exc}") from exc


def environment() -> dict[str, Any]:
    import onnxruntime

    return {
        "convopt": convopt.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
    }


def _measurement_dict(m: Any) -> dict[str, Any] | None:
    if m is None:
        return None
    return m.to_dict() if hasattr(m, "to_dict") else dict(m)


def optimize(
    model: onnx.ModelProto,
    passes: list[str],
    policy: RankPolicy | None = None,
    *,
    fold_bn: bool = True,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    evaluator: Instrument | None = None,
    budget: Any = None,
    require_faster: bool = False,
    model_name: str = "",
    output_name: str | None = None,
    settings: dict[str, Any] | None = None,
    on_event: Event | None = None,
) -> OptimizeResult:
    """Run ``passes`` in order on a copy of ``model``; return the optimized model and its report.

    With an ``evaluator``, the model is measured before the first pass and after each pass; a pass
    that breaks ``budget`` (or, with ``require_faster``, does not measure faster than the model before
    it) is rolled back.
    """
    policy = policy or RankPolicy()
    say = on_event or (lambda _msg: None)
    for name in passes:
        get_pass(name)  # fail early on an unknown name
    shapes = conv_shapes(model, input_shapes)
    macs0, params0 = totals(model, shapes)
    current = model
    cur_macs, cur_params = macs0, params0
    baseline = evaluator.baseline() if evaluator is not None else None
    last_kept = baseline
    measurements: list[Any] = []
    reports: list[PassReport] = []

    steps: list[tuple[str, Callable[[onnx.ModelProto], PassOutcome]]] = []
    if fold_bn:
        steps.append((FOLD_BN, fold_batchnorm))
    for name in passes:
        steps.append((name, lambda m, p=get_pass(name): run_conv_pass(m, p, policy, shapes)))

    for i, (name, run) in enumerate(steps, 1):
        say(f"[{i}/{len(steps)}] {name}: rewriting")
        outcome = run(current)
        delta_macs = sum(r.macs_before - r.macs_after for r in outcome.rewritten)
        delta_params = sum(r.params_before - r.params_after for r in outcome.rewritten)
        new_macs, new_params = cur_macs - delta_macs, cur_params - delta_params
        status, reason, meas = "no_change", None, None
        if outcome.rewritten:
            verify(outcome.model, f"pass {name}")
            status = "kept"
            if evaluator is not None:
                say(f"[{i}/{len(steps)}] {name}: measuring {len(outcome.rewritten)} rewritten nodes")
                meas = evaluator.measure(outcome.model, name)
                measurements.append(meas)
                reason = evaluator.check(meas, budget) if budget is not None else None
                if reason is None and require_faster:
                    reason = _slower(meas, last_kept)
                if reason is not None:
                    status = "rolled_back"
        reports.append(
            PassReport(
                name=name,
                status=status,
                rewritten=tuple(outcome.rewritten),
                skipped=tuple(outcome.skipped),
                macs_before=cur_macs,
                macs_after=new_macs if status == "kept" else cur_macs,
                params_before=cur_params,
                params_after=new_params if status == "kept" else cur_params,
                seconds=round(outcome.seconds, 4),
                rollback_reason=reason,
                measurement=_measurement_dict(meas),
            )
        )
        if status == "kept":
            current, cur_macs, cur_params = outcome.model, new_macs, new_params
            if meas is not None:
                last_kept = meas
        say(
            f"[{i}/{len(steps)}] {name}: {status}, {len(outcome.rewritten)} rewritten, "
            f"{len(outcome.skipped)} skipped" + (f" ({reason})" if reason else "")
        )
    final = _measurement_dict(last_kept) if evaluator is not None else None
    report = Report(
        model=model_name,
        output=output_name,
        passes=tuple(reports),
        settings={
            "passes": list(passes),
            "fold_bn": fold_bn,
            "rank": policy.to_dict(),
            "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
            "require_faster": require_faster,
            **(settings or {}),
        },
        environment=environment(),
        macs_before=macs0,
        macs_after=cur_macs,
        params_before=params0,
        params_after=cur_params,
        baseline=_measurement_dict(baseline),
        final=final,
    )
    return OptimizeResult(current, report, measurements)


def _slower(meas: Any, previous: Any) -> str | None:
    """Reason when ``meas`` is not faster than ``previous`` (both measured against the original)."""
    cur = measured_speedup(meas)
    prev = 1.0 if previous is None else measured_speedup(previous)
    if cur is None or prev is None:
        return None
    if cur <= prev:
        return f"measured no faster than before the pass (speedup {cur:.3f}x vs {prev:.3f}x)"
    return None


def measured_speedup(m: Any) -> float | None:
    """The speedup against the original recorded in a Measurement (or its dict), None without latency."""
    d = _measurement_dict(m) or {}
    lat = d.get("latency") or {}
    v = lat.get("speedup")
    return None if v is None else float(v)
