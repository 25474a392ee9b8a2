"""The library behind `convopt optimize`: choose the strategy, load and split the data, set up the evaluator,
run the strategy on the driver, apply the CI gate, write the outputs. The CLI parses options into an
``OptimizeOptions``, calls ``run`` and renders what it returns."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import onnx

from convopt.core.budget import Budget
from convopt.core.deploy import FP32, Deployment
from convopt.core.driver import OptimizeResult
from convopt.handoff import Handoff
from convopt.errors import InputError
from convopt.graph.offload import WeightFile, inline, offload
from convopt.limits import trim_freed_memory
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.executor import Executor, open_executor
from convopt.measure.measurement import Measurement
from convopt.options import OptimizeOptions, Strategy
from convopt.outputs import InputFile, OutputTarget, guard_outputs, model_data_target
from convopt.passes import RankPolicy, auto_passes, parse_passes
from convopt.measure.roles import DataRoles, Keep, as_is
from convopt.report import BudgetReport, GateResult, Report

if TYPE_CHECKING:
    from convopt.auto import LayerLatencyCache

Say = Callable[[str], None]
DEFAULT_UNIFORM_PASSES = ("split5x5", "factorize")


@dataclass(frozen=True)
class RunResult:
    """What `optimize` did: the report (typed), the files written, and the gate's verdict."""

    report: Report
    output: Path
    report_path: Path | None
    gate: GateResult | None

    @property
    def exit_code(self) -> int:
        return 1 if self.gate is not None and not self.gate.passed else 0


def strategy_of(opts: OptimizeOptions) -> Strategy:
    """auto with --data (unless uniform ranks or --no-eval are asked for), uniform otherwise; refuses
    combinations that cannot work, with the reason."""
    strategy = opts.strategy or ("auto" if opts.data.data is not None and not opts.rank.given and not opts.no_eval
                                 else "uniform")
    if strategy not in ("auto", "uniform"):
        raise InputError("--strategy must be auto or uniform")
    if strategy == "auto":
        if opts.rank.given:
            raise InputError(f"{opts.rank.given[0]} sets uniform ranks; use it with --strategy uniform "
                             "(auto picks ranks per layer)")
        if opts.no_eval or opts.data.data is None:
            raise InputError("--strategy auto needs --data (it calibrates and measures on it); use --strategy uniform")
        if opts.no_budget:
            raise InputError("--no-budget is for --strategy uniform: auto mode spends the budget it is given")
    elif opts.data.calib is not None:
        raise InputError("--calib is for --strategy auto")
    if opts.no_eval and opts.fail_under_speedup is not None:
        raise InputError("--fail-under-speedup needs measurement; drop --no-eval")
    if opts.fail_under_speedup is not None and not (math.isfinite(opts.fail_under_speedup)
                                                    and opts.fail_under_speedup > 0):
        raise InputError(f"--fail-under-speedup must be a positive number, got {opts.fail_under_speedup}")
    if opts.quantize not in ("none", "int8"):
        raise InputError(f"--quantize must be none or int8, got {opts.quantize!r}")
    if opts.quantize == "int8" and opts.no_eval:
        raise InputError("--quantize int8 calibrates and measures: drop --no-eval")
    if opts.time_budget is not None and strategy != "auto":
        raise InputError("--time-budget is for --strategy auto")
    if opts.no_budget and not opts.budget.is_empty:
        raise InputError("--no-budget and a budget option contradict each other; drop one")
    return strategy  # type: ignore[return-value]


def output_files(opts: OptimizeOptions) -> tuple[list[InputFile], list[OutputTarget]]:
    """(what optimize reads, what it writes), for the write guard (convopt.outputs)."""
    model_out = OutputTarget(opts.output_path, "model", "-o")
    targets = [model_out, model_data_target(model_out)]
    if opts.report is not None:
        targets.append(OutputTarget(opts.report, "report", "--report"))
    if opts.latency_cache is not None:
        targets.append(OutputTarget(opts.latency_cache, "cache", "--latency-cache"))
    inputs = [InputFile(opts.model, "the input model", replaceable=True)]
    for role, path in (("--data", opts.data.data), ("--labels", opts.data.labels), ("--calib", opts.data.calib)):
        if path is not None:
            inputs.append(InputFile(Path(path), f"the {role} input"))
    return inputs, targets


def check_outputs(opts: OptimizeOptions, data_files: tuple[Path, ...] = (), kinds: bool = True) -> None:
    """Refuse, before any work, outputs that would overwrite an input (``data_files``: the input model's
    external data) or each other, or replace a file that is not convopt's (convopt.outputs.guard_outputs)."""
    inputs, targets = output_files(opts)
    inputs += [InputFile(f, "an external-data file of the input model") for f in data_files]
    guard_outputs(inputs, targets, opts.overwrite, kinds=kinds)


def gate(final: Measurement | None, fail_under_speedup: float | None) -> GateResult | None:
    """The CI gate on the final measurement's speedup (None when no gate was asked for)."""
    if fail_under_speedup is None:
        return None
    sp = None if final is None else final.speedup
    if sp is None:
        return GateResult(fail_under_speedup, False, "no latency was measured")
    if sp < fail_under_speedup:
        return GateResult(fail_under_speedup, False, f"speedup {sp:.3f}x is below --fail-under-speedup "
                                                     f"{fail_under_speedup}")
    return GateResult(fail_under_speedup, True, None)


def load_roles(model: onnx.ModelProto, opts: OptimizeOptions, strategy: Strategy) -> DataRoles:
    """The fit, select and report data. --data alone is split three ways by a seeded permutation (two ways in
    uniform mode, which fits nothing); --calib is split into fit and select and --data reports; without data,
    two sets of seeded random inputs select and report. Each role's inputs are kept in a file, mapped
    (convopt.measure.mapped): every role is read only now and then, between minutes of other work."""
    from convopt.measure.mapped import on_disk

    return _load_roles(model, opts, strategy, on_disk)  # each set as it is read, each role as it is split off


def _load_roles(model: onnx.ModelProto, opts: OptimizeOptions, strategy: Strategy,
                keep: Keep = as_is) -> DataRoles:
    from convopt.measure.data import load_eval_data
    from convopt.measure.roles import fit_size, split_calib, split_data

    d = opts.data
    def load(path: Path | None, labels: Path | None, seed: int) -> EvalData:
        return keep(load_eval_data(model, path, preprocess=d.preprocess, labels=labels, input_shapes=d.input_shapes,
                                   limit=d.limit, seed=seed, random_samples=opts.random_samples, resize=d.resize,
                                   targets=opts.metric is not None))

    data = load(d.data, d.labels, opts.seed)
    fits = strategy == "auto" or opts.quantize == "int8"  # INT8 calibrates on the fit data
    if d.calib is not None:
        calib = load(d.calib, None, opts.seed)
        return split_calib(calib, data, fit_size(calib.n, opts.refit_samples) if fits else 0, opts.seed, keep)
    if d.data is None:
        report = load(None, None, opts.seed + 1)
        fit = load(None, None, opts.seed + 2) if fits else None
        return DataRoles(fit, data, report, f"seeded random inputs: {data.n} to select (seed {opts.seed}), "
                                            f"{report.n} to report (seed {opts.seed + 1})"
                                            + (f", {fit.n} to fit (seed {opts.seed + 2})" if fit else ""))
    try:
        return split_data(data, fit_size(data.n, opts.refit_samples) if fits else 0, opts.seed, keep)
    except ValueError as exc:
        raise InputError(f"{exc}; give more samples") from None


def report_settings(opts: OptimizeOptions, strategy: Strategy, roles: DataRoles | None) -> dict[str, Any]:
    """The run's settings as the report records them (the strategy adds its own)."""
    s: dict[str, Any] = {"strategy": strategy, "seed": opts.seed, "quantize": opts.quantize, "budget": {
        **opts.budget.to_dict(), "no_budget": opts.no_budget, "fail_under_speedup": opts.fail_under_speedup}}
    if roles is not None:
        s.update(ort=opts.ort.to_dict(), data=roles.to_dict())
        ragged = roles.select.ragged_settings()  # samples of different shapes: how they run, what is timed
        if ragged is not None:
            s["ragged"] = ragged
    return s


@dataclass(frozen=True)
class Setup:
    """What a measured run decides and reports with."""

    roles: DataRoles
    select: Evaluator
    report: Evaluator
    budget: Budget | None
    message: str | None
    deploy: Deployment
    executor: Executor


def set_up(model: onnx.ModelProto, opts: OptimizeOptions, strategy: Strategy, warn: Say, progress: bool,
           say: Say | None = None) -> Setup:
    """Data roles, one evaluator per decision and report role (both on the executor of --executor, which the
    caller closes), the budget (the default unless --no-budget) and whether the decision data can certify it."""
    from convopt.measure.plugin import TaskMetric, load_metric

    executor = open_executor(opts.executor, opts.ort.threads, say)  # first: an unreachable cluster fails fast
    try:
        roles = load_roles(model, opts, strategy)
        if roles.select.warning:
            warn(roles.select.warning)
        ragged = roles.select.ragged_settings()
        if ragged is not None and say is not None:
            say(f"data: samples of {ragged['shapes']} shapes, run {ragged['run']}; latency timed on "
                f"{ragged['latency_sample']}")
        metric = None if opts.metric is None else (
            load_metric(opts.metric) if isinstance(opts.metric, str) else TaskMetric.from_callable(opts.metric))
        select = Evaluator(model, roles.select, opts.ort, progress=progress, metric=metric, role="select",
                           executor=executor)
        report = Evaluator(model, roles.report, opts.ort, progress=progress, metric=metric, role="report",
                           executor=executor, timing_from=select)
        budget, message = None, "no budget: --no-budget keeps rewrites unchecked"
        if not opts.no_budget:
            budget = opts.budget.defaulted(select.scored_index is not None)
            budget.validate(select.scored_index is not None, roles.select.labels is not None, metric is not None)
            message = budget.feasibility(roles.select.n, roles.select.labels is not None)
            if message:
                warn(message)
        deploy = deployment(opts, roles, warn)
        deploy = int8_within_budget(model, deploy, select, budget, opts.force_quantize, warn)
    except BaseException:
        executor.close()
        raise
    return Setup(roles, select, report, budget, message, deploy, executor)


def deployment(opts: OptimizeOptions, roles: DataRoles, warn: Say) -> Deployment:
    """FP32, or INT8 when asked for and faster on this CPU (or forced); INT8 calibrates on the fit data."""
    if opts.quantize != "int8":
        return FP32
    from convopt.quantize import int8_supported

    reason = int8_supported(opts.ort)
    if reason is not None and not opts.force_quantize:
        warn(f"INT8 is not faster on this CPU ({reason}): writing FP32; --force-quantize writes INT8 anyway")
        return FP32
    assert roles.fit is not None
    return Deployment("int8", roles.fit)


def int8_within_budget(model: onnx.ModelProto, deploy: Deployment, select: Evaluator, budget: Budget | None,
                       force: bool, warn: Say) -> Deployment:
    """INT8 only if the quantized original itself is certified within the budget on the select data: every
    step is judged quantized, so a rollback writes the quantized original, which no step decision checks.
    Otherwise FP32 is written (--force-quantize: INT8 anyway)."""
    if not deploy.quantized or budget is None or force:
        return deploy
    cert = budget.certify(select.measure(deploy.model(model), "original INT8", timed=False).outcomes)
    if cert.ok:
        return deploy
    warn(f"INT8 alone breaks the budget on the select data ({cert.reason}): writing FP32; --force-quantize "
         "writes INT8 anyway")
    return FP32


def budget_report(setup: Setup, result: OptimizeResult) -> BudgetReport:
    """The claim the written model carries: certified when the decision that kept it bounded every limited
    loss within the budget (the original is certified; nothing is, without a budget)."""
    cert, b = result.certificate, setup.budget
    kept = any(p.status == "kept" and p.rewritten and p.name != "fold_bn" for p in result.report.passes)
    certified = b is not None and (not kept or (cert is not None and cert.ok))
    return BudgetReport(limits={} if b is None else b.to_dict(), confidence=0.0 if b is None else b.confidence,
                        certified=certified, decision_samples=setup.roles.select.n,
                        report_samples=setup.roles.report.n, bound=None if cert is None else dict(cert.bounds),
                        message=setup.message, data=setup.roles.to_dict())


def optimize_model(model: onnx.ModelProto | Handoff, opts: OptimizeOptions, say: Say = lambda _m: None,
                   warn: Say = lambda _m: None, progress: bool = False) -> OptimizeResult:
    """Run the chosen strategy on a loaded model (``warn`` hears about data it could not use as asked). A
    Handoff of the model (the caller keeps no reference) lets a run without evaluation release the original
    once BN is folded: its peak is then two models, not three. A measured run works on a copy whose large
    weights wait in a temporary file until read (convopt.graph.offload); the model returned holds them all."""
    strategy = strategy_of(opts)
    cache = None
    if strategy == "auto" and opts.latency_cache is not None:  # checked before any work; --overwrite replaces
        from convopt.auto import LayerLatencyCache  # a file that is not a cache

        cache = LayerLatencyCache(opts.latency_cache, replace_invalid=opts.overwrite)
    passes = parse_passes(",".join(opts.passes)) if opts.passes else list(
        auto_passes() if strategy == "auto" else DEFAULT_UNIFORM_PASSES)
    policy = opts.rank.policy(opts.seed)
    names = {"model_name": str(opts.model), "output_name": str(opts.output_path)}
    if opts.no_eval:
        from convopt.uniform import optimize_uniform

        return optimize_uniform(model, passes, policy, fold_bn=opts.fold_bn, input_shapes=opts.data.input_shapes,
                                settings=report_settings(opts, strategy, None), on_event=say, **names)
    if isinstance(model, Handoff):
        model = model.take()
    with WeightFile() as weights:
        model = offload(model, weights)  # a copy: the weights in the page cache, not the process, until read
        trim_freed_memory()  # the original, and what reading and checking it left free in the heap, go back
        setup = set_up(model, opts, strategy, warn, progress, say)
        opts = with_timing_shapes(opts, setup.roles)
        try:
            result = _run_strategy(model, opts, strategy, setup, passes, policy, names, say, cache)
        finally:
            setup.executor.close()
        inline(result.model)
    settings = {**result.report.settings, "executor": setup.executor.info().to_dict()}  # workers, shards
    result.report = replace(result.report, settings=settings, budget=budget_report(setup, result))
    return result


def with_timing_shapes(opts: OptimizeOptions, roles: DataRoles) -> OptimizeOptions:
    """Samples of different shapes: the inputs --input-shape leaves out take the shape of the sample latency
    is timed on, so that the layers auto times have the shapes the whole model is timed at."""
    timing = roles.select.timing
    if timing is None or not roles.select.ragged:
        return opts
    shapes = {**{k: tuple(v.shape) for k, v in timing.feeds.items()}, **opts.data.input_shapes}
    return replace(opts, data=replace(opts.data, input_shapes=shapes))


def _run_strategy(model: onnx.ModelProto, opts: OptimizeOptions, strategy: Strategy, setup: Setup,
                  passes: list[str], policy: RankPolicy, names: dict[str, str], say: Say,
                  cache: LayerLatencyCache | None) -> OptimizeResult:
    """The strategy on the evaluators of ``setup`` (the caller closes their executor)."""
    settings = report_settings(opts, strategy, setup.roles)
    if strategy == "auto":
        from convopt.auto import AutoOptions, auto_optimize

        assert setup.roles.fit is not None and setup.budget is not None
        result = auto_optimize(model, fit=setup.roles.fit, select=setup.select, report=setup.report,
                               deploy=setup.deploy,
                               settings=opts.ort, budget=setup.budget, options=AutoOptions(
                                   passes=tuple(passes), align=opts.rank.align, seed=opts.seed,
                                   refit_samples=opts.refit_samples, time_budget=opts.time_budget),
                               input_shapes=opts.data.input_shapes, latency_cache=cache,
                               on_event=say, **names)
        result.report = replace(result.report, settings={**result.report.settings, **settings})
    else:
        from convopt.uniform import optimize_uniform

        result = optimize_uniform(model, passes, policy, fold_bn=opts.fold_bn, input_shapes=opts.data.input_shapes,
                                  select=setup.select, report=setup.report, budget=setup.budget, deploy=setup.deploy,
                                  require_faster=opts.require_faster, settings=settings, on_event=say, **names)
    return result


def run(opts: OptimizeOptions, say: Say = lambda _m: None, warn: Say = lambda _m: None,
        progress: bool = False) -> RunResult:
    """`convopt optimize`: check the outputs, load, optimize, gate, write the model and the report."""
    from convopt.io import load_model_report, save_outputs
    from convopt.limits import cap_threads
    from convopt.text import json_safe
    from convopt.writes import sweep_note

    strategy_of(opts)
    check_outputs(opts, kinds=False)  # the rest once the model (and its external-data files) is read
    loaded = load_model_report(opts.model, max_bytes=opts.max_model_bytes)
    for w in loaded.warnings:  # e.g. a graph output typed by inference: one line each
        warn(w)
    data_files, model = loaded.data_files, Handoff(loaded.model)
    del loaded  # the handoff holds the only reference
    check_outputs(opts, data_files)
    note = sweep_note(t.path.parent for t in output_files(opts)[1])
    if note:
        say(note)
    threads, note = cap_threads(opts.ort.threads)
    if note:
        warn(note)
        opts = replace(opts, ort=replace(opts.ort, threads=threads))
    result = optimize_model(model, opts, say, warn, progress)
    verdict = gate(result.final, opts.fail_under_speedup)
    report = result.report if verdict is None else replace(result.report, gate=verdict)
    out = opts.output_path
    check_outputs(opts, data_files)  # again: files may have changed during the run
    # the JSON holds no raw control or bidi character either (escaped as \uXXXX: the same values)
    extra = [] if opts.report is None else [(opts.report, (json_safe(report.to_json()) + "\n").encode())]
    save_outputs(result.model, out, extra)  # model and report renamed together
    return RunResult(report, out, opts.report, verdict)
