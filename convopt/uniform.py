"""Uniform strategy: the given passes in order, one rank rule for every Conv; each pass is one step of the
driver (its plan added to what earlier passes kept), kept or rolled back by the instruments."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from convopt import decompose
from convopt.core.budget import Budget, Certificate
from convopt.core.deploy import FP32, Deployment
from convopt.core.driver import Driver, OptimizeResult, PlannedPass, Say
from convopt.handoff import Handoff
from convopt.core.instruments import BudgetGuard, Instrument, SpeedGuard, Step, Verdict
from convopt.core.plan import Choice, Plan
from convopt.graph import ConvSpec
from convopt.measure.evaluator import Evaluator
from convopt.passes import ConvPass, RankPolicy, get_pass
from convopt.report import NodeRewrite, NodeSkip


@dataclass
class Probe:
    """Measures every step on the evaluator's data (for the report) and never objects."""

    evaluator: Evaluator
    name: str = "measure"

    def after_step(self, step: Step) -> Verdict:
        step.measure(self.evaluator)
        return Verdict(self.name, True)

    def after_decision(self, step: Step, kept: bool) -> None:
        return None


def pass_plan(conv_pass: ConvPass, convs: Mapping[str, ConvSpec], policy: RankPolicy,
              taken: Plan) -> tuple[Plan, list[NodeSkip]]:
    """What ``conv_pass`` does under ``policy`` to every Conv not in ``taken``, and why it skips the others."""
    choices: dict[str, Choice] = {}
    skipped: list[NodeSkip] = []
    with decompose.one_blas_thread():
        for name, conv in convs.items():
            if name in taken:
                skipped.append(NodeSkip(name, f"already rewritten by {taken.choices[name].pass_name}"))
                continue
            reason = conv_pass.applies(conv)
            if reason is None:
                chosen = conv_pass.choose(conv, policy)
                if isinstance(chosen, str):
                    reason = chosen
                else:
                    ranks, factors = chosen
                    choices[name] = Choice(conv_pass.name, ranks, factors)
                    continue
            skipped.append(NodeSkip(name, reason))
    return Plan(choices), skipped


def instruments_for(select: Evaluator | None, budget: Budget | None, require_faster: bool,
                    looks: int) -> list[Instrument]:
    """Measure every step on the select data; with a budget, keep it only when certified (the passes share
    the confidence: Bonferroni over ``looks``); with ``require_faster``, only when it measures faster."""
    if select is None:
        return []
    out: list[Instrument] = [Probe(select)]
    if budget is not None:
        out.append(BudgetGuard(select, budget, looks))
    if require_faster:
        out.append(SpeedGuard(select))
    return out


def run_unjudged(driver: Driver, passes: Sequence[str], policy: RankPolicy) -> None:
    """No instrument can roll a pass back: each pass plans on the Convs the earlier ones left, and the driver
    applies all their plans once (the same model as pass after pass, without a model per pass)."""
    planned, taken = [], driver.kept
    for i, name in enumerate(passes, 1):
        t0 = time.perf_counter()
        driver.say(f"[{i}/{len(passes)}] {name}: rewriting")
        plan, skipped = pass_plan(get_pass(name), driver.convs, policy, taken)
        taken = taken.extended(plan)
        planned.append(PlannedPass(name, plan, skipped + driver.unrewritable, time.perf_counter() - t0))
    for i, (p, records) in enumerate(zip(planned, driver.apply_together(planned)), 1):
        driver.say(f"[{i}/{len(passes)}] {p.name}: {'kept' if records else 'no_change'}, {len(records)} "
                   f"rewritten, {len(p.skipped)} skipped")


def run_passes(driver: Driver, passes: Sequence[str], policy: RankPolicy, instruments: Sequence[Instrument],
               select: Evaluator | None) -> Certificate | None:
    """Each pass as one driver step: plan, apply, judge, keep or roll back, record. Returns the certificate
    of the last kept step (None when nothing was kept or nothing certified). Without instruments, the
    passes are applied together (``run_unjudged``)."""
    if not instruments:
        run_unjudged(driver, passes, policy)
        return None
    cert = None
    for i, name in enumerate(passes, 1):
        t0 = time.perf_counter()
        driver.say(f"[{i}/{len(passes)}] {name}: rewriting")
        plan, skipped = pass_plan(get_pass(name), driver.convs, policy, driver.kept)
        skipped += driver.unrewritable
        macs, params = driver.macs, driver.params
        if not len(plan):
            driver.record(name, "no_change", [], skipped, macs, params, time.perf_counter() - t0)
            driver.say(f"[{i}/{len(passes)}] {name}: no_change, 0 rewritten, {len(skipped)} skipped")
            continue
        step = driver.apply(name, driver.kept.extended(plan))
        if instruments:
            driver.say(f"[{i}/{len(passes)}] {name}: measuring {len(step.records)} rewritten nodes")
        decision = driver.judge(step, instruments)
        kept = driver.decide(decision, instruments)
        cert = next((v.certificate for v in decision.verdicts if v.certificate is not None), None) if kept else cert
        reason = None if kept else decision.reason
        driver.record(name, "kept" if kept else "rolled_back", step.records, skipped, macs, params,
                      time.perf_counter() - t0, reason, None if select is None else step.measurement(select),
                      step.plan if select is not None else None)
        driver.say(f"[{i}/{len(passes)}] {name}: {'kept' if kept else 'rolled_back'}, {len(step.records)} "
                   f"rewritten, {len(skipped)} skipped" + (f" ({reason})" if reason else ""))
    return cert


def optimize_uniform(model: onnx.ModelProto | Handoff, passes: Sequence[str], policy: RankPolicy = RankPolicy(), *,
                     fold_bn: bool = True, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                     select: Evaluator | None = None, report: Evaluator | None = None,
                     budget: Budget | None = None, require_faster: bool = False, model_name: str = "",
                     output_name: str | None = None, settings: dict[str, Any] | None = None,
                     on_event: Say | None = None, deploy: Deployment = FP32) -> OptimizeResult:
    """Run ``passes`` in order on a copy of ``model`` (or a Handoff of it: released once folded, see Driver).
    With a ``select`` evaluator every pass is measured on its data and rolled back unless ``budget`` (None:
    unchecked) is certified there, or (``require_faster``) when it does not measure faster than the model
    before it. The ``report`` evaluator measures the final model once, after every decision, and times every
    pass in one run."""
    for name in passes:
        get_pass(name)  # fail early on an unknown name
    driver = Driver(model, input_shapes, fold_bn=fold_bn, fit=policy.fit, say=on_event, deploy=deploy)
    instruments = instruments_for(select, budget, require_faster, looks=len(passes))
    cert = run_passes(driver, passes, policy, instruments, select)
    baseline = final = None
    rows: tuple = ()
    if report is not None:
        baseline, final, rows = driver.finish(report)
    result = driver.report(model_name=model_name, output_name=output_name, settings={
        "strategy": "uniform", "passes": list(passes), "fold_bn": fold_bn, "rank": policy.to_dict(),
        "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()}, "require_faster": require_faster,
        **(settings or {})}, baseline=baseline, final=final, precisions=rows)
    return OptimizeResult(driver.model, result, final, cert)


@dataclass
class PassResult:
    """One pass applied to a model: the new model, the nodes rewritten and the nodes skipped (with reasons)."""

    model: onnx.ModelProto
    rewritten: list[NodeRewrite]
    skipped: list[NodeSkip]


def run_pass(model: onnx.ModelProto, pass_name: str, policy: RankPolicy = RankPolicy(),
             input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> PassResult:
    """One pass with one rank rule on a copy of ``model``: no BN folding, no measurement."""
    driver = Driver(model, input_shapes, fold_bn=False, fit=policy.fit)
    plan, skipped = pass_plan(get_pass(pass_name), driver.convs, policy, Plan())
    step = driver.apply(pass_name, plan)
    return PassResult(step.model, step.records, skipped + driver.unrewritable)
