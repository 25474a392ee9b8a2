"""The library behind `convopt optimize`: choose the strategy, load and split the data, set up the evaluator,
run the strategy on the driver, apply the CI gate, write the outputs. The CLI parses options into an
``OptimizeOptions``, calls ``run`` and renders what it returns."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import onnx

from convopt.core.budget import Budget
from convopt.core.driver import OptimizeResult
from convopt.errors import InputError
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.measurement import Measurement
from convopt.options import OptimizeOptions, Strategy
from convopt.passes import auto_passes, parse_passes
from convopt.report import GateResult, Report

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
    elif opts.data.calib is not None:
        raise InputError("--calib is for --strategy auto")
    if opts.no_eval and opts.fail_under_speedup is not None:
        raise InputError("--fail-under-speedup needs measurement; drop --no-eval")
    return strategy  # type: ignore[return-value]


def check_outputs(opts: OptimizeOptions) -> None:
    """Refuse, before any work, outputs that would overwrite the input or each other."""
    from convopt.io import same_file

    out = opts.output_path
    if same_file(out, opts.model) and not opts.overwrite:
        raise InputError(f"refusing to overwrite the input model {opts.model}; choose another -o or pass --overwrite")
    if opts.report is not None and (same_file(opts.report, opts.model) or same_file(opts.report, out)):
        raise InputError("--report must not be the input or the output model")


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


def load_data(model: onnx.ModelProto, opts: OptimizeOptions, strategy: Strategy) -> tuple[EvalData, EvalData | None]:
    """(evaluation data, calibration data or None): auto without --calib splits --data in two halves."""
    from convopt.auto import split_eval_data
    from convopt.measure.data import load_eval_data

    d = opts.data
    data = load_eval_data(model, d.data, preprocess=d.preprocess, labels=d.labels, input_shapes=d.input_shapes,
                          limit=d.limit, seed=opts.seed)
    if strategy != "auto":
        return data, None
    if d.calib is not None:
        calib = load_eval_data(model, d.calib, preprocess=d.preprocess, input_shapes=d.input_shapes, limit=d.limit,
                               seed=opts.seed)
        return data, calib
    calib, data = split_eval_data(data, 0.5, seed=opts.seed)
    return data, calib


def report_settings(opts: OptimizeOptions, strategy: Strategy, data: EvalData | None,
                    calib: EvalData | None) -> dict[str, Any]:
    """The run's settings as the report records them (the strategy adds its own)."""
    s: dict[str, Any] = {"strategy": strategy, "seed": opts.seed, "budget": {
        **opts.budget.to_dict(), "fail_under_speedup": opts.fail_under_speedup}}
    if data is not None:
        s.update(ort=opts.ort.to_dict(), data=data.source, samples=data.n)
    if calib is not None:
        s.update(calib=calib.source, calib_samples=calib.n)
    return s


def optimize_model(model: onnx.ModelProto, opts: OptimizeOptions, say: Say = lambda _m: None,
                   warn: Say = lambda _m: None, progress: bool = False) -> OptimizeResult:
    """Run the chosen strategy on a loaded model (``warn`` hears about data it could not use as asked)."""
    strategy = strategy_of(opts)
    passes = parse_passes(",".join(opts.passes)) if opts.passes else list(
        auto_passes() if strategy == "auto" else DEFAULT_UNIFORM_PASSES)
    policy = opts.rank.policy(opts.seed)
    data = calib = evaluator = None
    if not opts.no_eval:
        data, calib = load_data(model, opts, strategy)
        if data.warning:
            warn(data.warning)
        evaluator = Evaluator(model, data, opts.ort, measure_latency=True, progress=progress)
    settings = report_settings(opts, strategy, data, calib)
    names = {"model_name": str(opts.model), "output_name": str(opts.output_path)}
    if strategy == "auto":
        from convopt.auto import AutoOptions, auto_optimize

        assert evaluator is not None and calib is not None
        result = auto_optimize(model, calib=calib, evaluator=evaluator, settings=opts.ort,
                               budget=None if opts.budget.is_empty else opts.budget,
                               options=AutoOptions(passes=tuple(passes), align=opts.rank.align, seed=opts.seed),
                               input_shapes=opts.data.input_shapes, latency_cache=opts.latency_cache,
                               on_event=say, **names)
        result.report = replace(result.report, settings={**result.report.settings, **settings})
        return result
    from convopt.uniform import optimize_uniform

    budget: Budget | None = None if opts.budget.is_empty else opts.budget
    result = optimize_uniform(model, passes, policy, fold_bn=opts.fold_bn, input_shapes=opts.data.input_shapes,
                              evaluator=evaluator, budget=budget, require_faster=opts.require_faster and evaluator
                              is not None, settings=settings, on_event=say, **names)
    return result


def run(opts: OptimizeOptions, say: Say = lambda _m: None, warn: Say = lambda _m: None,
        progress: bool = False) -> RunResult:
    """`convopt optimize`: check the outputs, load, optimize, gate, write the model and the report."""
    from convopt.io import atomic_write_bytes, load_model, save_model

    strategy_of(opts)
    check_outputs(opts)
    model = load_model(opts.model)
    result = optimize_model(model, opts, say, warn, progress)
    verdict = gate(result.final, opts.fail_under_speedup)
    report = result.report if verdict is None else replace(result.report, gate=verdict)
    out = opts.output_path
    save_model(result.model, out, input_path=opts.model, overwrite=opts.overwrite)
    if opts.report is not None:
        atomic_write_bytes(opts.report, (report.to_json() + "\n").encode())
    return RunResult(report, out, opts.report, verdict)
