"""The one driver both strategies run on: fold BN into a copy of the model once, then apply plans to that
base model step by step, with instruments judging each step, and build the report.

A strategy proposes plans (uniform: one pass after another; auto: the steps of its search); the driver
applies each once (``apply_plan``), checks the graph, asks the instruments for their verdicts and keeps or
drops the step. Only the driver builds models and only instruments measure them.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

import convopt
from convopt.decompose import one_blas_thread
from convopt.core.budget import Certificate
from convopt.core.deploy import FP32, Deployment
from convopt.core.instruments import Instrument, Step, Verdict, rejection
from convopt.core.plan import Plan, apply_plan, conv_table
from convopt.errors import RewriteError
from convopt.handoff import Handoff
from convopt.graph import ConvSkip, ConvSpec, infer_tensor_shapes, read_convs
from convopt.measure.measurement import Measurement
from convopt.passes import FitContext
from convopt.passes.fold_bn import NAME as FOLD_BN, fold_batchnorm
from convopt.measure.evaluator import Evaluator
from convopt.report import BudgetReport, NodeRewrite, NodeSkip, PassReport, PrecisionRow, Report, Serializable

Say = Callable[[str], None]
Shapes = dict[str, tuple[int, ...]]


def conv_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None) -> Shapes:
    """Static shapes of every Conv's (and Gemm's) input and output tensor (batch 1 where dynamic)."""
    wanted = [t for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")
              for t in (n.input[0], n.output[0])]
    return infer_tensor_shapes(model, dict(input_shapes) if input_shapes else None, wanted)


def totals(model: onnx.ModelProto, shapes: Shapes) -> tuple[int | None, int]:
    """(MACs, params) of all rewritable Convs, batch 1; MACs None when any of them has an unknown size."""
    convs = [c for c in read_convs(model, shapes) if isinstance(c, ConvSpec)]
    macs = [c.macs for c in convs]
    return (None if any(m is None for m in macs) else sum(macs)), sum(c.params for c in convs)  # type: ignore[misc]


def verify(model: onnx.ModelProto, where: str) -> None:
    """onnx.checker on a rewritten model; a failure here is a convopt bug, reported as RewriteError."""
    from convopt.io import run_checker

    try:
        run_checker(model, skeleton=True)  # no serialized copies; works above the 2 GB protobuf limit
    except Exception as exc:  # the checker raises several C++-bound types
        raise RewriteError(f"{where} produced an invalid model (a convopt bug, please report): {exc}") from exc


def environment() -> dict[str, Any]:
    import datetime

    import onnxruntime

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"date": date, "convopt": convopt.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count()}


@dataclass(frozen=True)
class PlannedPass:
    """A pass planned but not yet applied: its plan, the Convs it left alone (with reasons), and the seconds
    its planning (the decompositions) took."""

    name: str
    plan: Plan
    skipped: list[NodeSkip]
    seconds: float


@dataclass(frozen=True)
class Decision:
    """A step and what the instruments said of it."""

    step: Step
    verdicts: tuple[Verdict, ...]

    @property
    def kept(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def reason(self) -> str | None:
        return rejection(list(self.verdicts))


class Driver:
    def __init__(self, model: onnx.ModelProto | Handoff, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                 *, fold_bn: bool = True, fit: FitContext = FitContext(), say: Say | None = None,
                 deploy: Deployment = FP32) -> None:
        """``model``: the original (kept, unchanged), or a Handoff of it (released once folded; nothing will be
        measured against it)."""
        if isinstance(model, Handoff):
            model = model.take()
            self.original: onnx.ModelProto | None = None
        else:
            self.original = model
        self.fit, self.deploy = fit, deploy
        self.say: Say = say or (lambda _m: None)
        self.macs0, self.params0 = totals(model, conv_shapes(model, input_shapes))
        self.reports: list[PassReport] = []
        self.base, self.params_base = model, self.params0
        if fold_bn:
            folded = fold_batchnorm(model)
            self.base = folded.model
            saved = sum(r.params_before - r.params_after for r in folded.rewritten)
            self.params_base = self.params0 - saved
            self.reports.append(PassReport(FOLD_BN, "kept" if folded.rewritten else "no_change",
                                           tuple(folded.rewritten), tuple(folded.skipped), self.macs0, self.macs0,
                                           self.params0, self.params0 - saved, round(folded.seconds, 4)))
            if folded.rewritten:
                verify(self.base, FOLD_BN)
        self.shapes = conv_shapes(self.base, input_shapes)
        self.convs: dict[str, ConvSpec] = conv_table(self.base, self.shapes)
        self.unrewritable = [NodeSkip(c.name, c.reason) for c in read_convs(self.base, self.shapes)
                             if isinstance(c, ConvSkip)]
        self.kept = Plan()
        self.kept_records: list[NodeRewrite] = []
        self.model = deploy.model(self.base)  # as deployed
        self.fp32_model = self.base
        self.timed: list[tuple[int, Plan]] = []  # report rows whose step the report phase times: (row, plan)

    # -- steps --------------------------------------------------------------------------------------------

    def apply(self, name: str, plan: Plan, keep_factors: bool = True) -> Step:
        """``plan`` applied to the base model and checked; its factors are filled in (computed once), unless
        ``keep_factors`` is False (nothing will reuse them)."""
        with one_blas_thread():
            applied = apply_plan(self.base, plan, self.convs, self.fit, keep_factors)
        if applied.records:
            verify(applied.model, f"{name}")
        new = [r for r in applied.records if r.node not in self.kept]
        if not self.deploy.quantized:
            return Step(name, applied.plan, applied.model, new)
        return Step(name, applied.plan, self.deploy.model(applied.model), new, applied.model)

    def apply_together(self, planned: Sequence[PlannedPass]) -> list[list[NodeRewrite]]:
        """Passes no instrument judges: their plans applied once, together, after what is kept (no model per
        pass is built), and a report row recorded per pass, in order (the emission time shared out by the
        rows' nodes). Returns each pass's records."""
        t0 = time.perf_counter()
        plan = self.kept
        for p in planned:
            plan = plan.extended(p.plan)
        step = self.apply("plan", plan, keep_factors=False) if len(plan) > len(self.kept) else None
        if step is not None:
            self.kept, self.model, self.fp32_model = step.plan, step.model, step.fp32 or step.model
        records = [] if step is None else step.records
        per_node = (time.perf_counter() - t0) / max(1, len(records))
        out = []
        for p in planned:
            mine = [r for r in records if r.node in p.plan]
            macs, params = self.macs, self.params
            self.kept_records = self.kept_records + mine
            self.record(p.name, "kept" if mine else "no_change", mine, p.skipped, macs, params,
                        p.seconds + per_node * len(mine))
            out.append(mine)
        return out

    def judge(self, step: Step, instruments: Sequence[Instrument]) -> Decision:
        """Every instrument's verdict on ``step`` (each decides from its own measurement)."""
        return Decision(step, tuple(i.after_step(step) for i in instruments))

    def decide(self, decision: Decision, instruments: Sequence[Instrument]) -> bool:
        """Keep the step when every verdict accepts it; tell the instruments."""
        kept = decision.kept
        for i in instruments:
            i.after_decision(decision.step, kept)
        if kept:
            self.kept, self.model = decision.step.plan, decision.step.model
            self.fp32_model = decision.step.fp32 or decision.step.model
            self.kept_records = self.kept_records + decision.step.records
        return kept

    # -- reporting ----------------------------------------------------------------------------------------

    @property
    def macs(self) -> int | None:
        saved = [r.macs_before - r.macs_after for r in self.kept_records  # type: ignore[operator]
                 if r.macs_before is not None and r.macs_after is not None]
        if self.macs0 is None or len(saved) != len(self.kept_records):
            return None
        return self.macs0 - sum(saved)

    @property
    def params(self) -> int:
        return self.params_base - sum(r.params_before - r.params_after for r in self.kept_records)

    def record(self, name: str, status: str, records: Sequence[NodeRewrite], skipped: Sequence[NodeSkip],
               macs_before: int | None, params_before: int, seconds: float, reason: str | None = None,
               measurement: Serializable | None = None, plan: Plan | None = None) -> None:
        """One step's row of the report (MACs and params after = the model as it stands after the step);
        with ``plan``, the report phase times the step's model in its one interleaved run."""
        if plan is not None:
            self.timed.append((len(self.reports), plan))
        self.reports.append(PassReport(name, status, tuple(records), tuple(skipped), macs_before, self.macs,
                                       params_before, self.params, round(seconds, 4), reason, measurement))

    def finish(self, report: Evaluator) -> tuple[Measurement, Measurement, tuple[PrecisionRow, ...]]:
        """The report phase, after every decision: the final model measured once on the report data, and the
        original, every timed step and the final model timed in ONE interleaved run (one baseline for the
        whole table). Deployed as INT8, the original and optimized models at FP32 and INT8 too (four rows).
        Returns (baseline, final, precision rows) on the report data."""
        self.say(f"report: measuring the final model on {report.data.n} report samples (never used to decide)")
        models = [self.apply(self.reports[i].name, plan).model for i, plan in self.timed] + [self.model]
        extra = []
        if self.deploy.quantized:
            assert self.original is not None, "a measured run keeps the original"
            extra = [self.deploy.model(self.original), self.fp32_model]
        base_latency, latencies = report.time_models(models + extra)
        n = len(models)
        del models  # the timed steps' models, rebuilt for this table only
        report.release_timing()  # memory: the accuracy runs below need no timing session of the original
        for (i, _), lat in zip(self.timed, latencies):
            self.reports[i] = replace(self.reports[i], latency=lat)
        final = replace(report.measure(self.model, "final", timed=False), latency=latencies[n - 1])
        baseline = replace(report.baseline(base_latency), latency=base_latency)
        if not extra:
            return baseline, final, ()
        orig8, opt32 = (replace(report.measure(m, d, timed=False), latency=lat) for m, d, lat in
                        zip(extra, ("original INT8", "optimized FP32"), latencies[n:]))
        rows = (PrecisionRow("original", "fp32", baseline), PrecisionRow("original", "int8", orig8),
                PrecisionRow("optimized", "fp32", opt32), PrecisionRow("optimized", "int8", final))
        return baseline, final, rows

    def report(self, *, model_name: str, output_name: str | None, settings: dict[str, Any],
               baseline: Serializable | None, final: Serializable | None, extra: dict[str, Any] | None = None,
               budget: BudgetReport | None = None, precisions: tuple[PrecisionRow, ...] = ()) -> Report:
        return Report(model=model_name, output=output_name, passes=tuple(self.reports), settings=settings,
                      environment=environment(), macs_before=self.macs0, macs_after=self.macs,
                      params_before=self.params0, params_after=self.params, baseline=baseline, final=final,
                      budget=budget, precisions=precisions, extra=extra or {})


@dataclass
class OptimizeResult:
    """What a strategy returns: the optimized model, its report, the final measurement on the report data
    (typed, for the gate), and the certificate of the decision that kept it (None: nothing was kept)."""

    model: onnx.ModelProto
    report: Report
    final: Measurement | None = None
    certificate: Certificate | None = None
