"""auto_optimize: the auto strategy's entry point — a Driver, an AutoSearch on it, and the report."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

import onnx

from convopt.auto.latency import LayerLatencyCache
from convopt.auto.search import AutoOptions, AutoSearch, OnStep
from convopt.core.budget import Budget
from convopt.core.deploy import FP32, Deployment
from convopt.core.driver import Driver, OptimizeResult
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.ort import OrtSettings
from convopt.passes import FitContext, auto_passes, get_pass
from convopt.report import NodeSkip

Say = Callable[[str], None]


def auto_optimize(
    model: onnx.ModelProto,
    *,
    fit: EvalData,
    select: Evaluator,
    report: Evaluator | None,
    settings: OrtSettings,
    budget: Budget | None = None,
    options: AutoOptions = AutoOptions(),
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    latency_cache: LayerLatencyCache | Path | None = None,
    model_name: str = "",
    output_name: str | None = None,
    on_event: Say | None = None,
    on_step: OnStep | None = None,
    deploy: Deployment = FP32,
) -> OptimizeResult:
    """Optimize ``model`` in auto mode (see convopt.auto.search) and return the model and its report.

    Three disjoint data roles: ``fit`` (refits, and the candidate costs that order the search), ``select``
    (every decision, on confidence bounds) and ``report`` (the final model, measured once at the end).
    ``budget`` None: Budget.default (1 point of top-1, or 0.05 relative output error for a model without class
    scores). ``on_step(k, model, select measurement)`` is called for each tested step.
    """
    t_start = time.perf_counter()
    say = on_event or (lambda _m: None)
    passes = list(options.passes or auto_passes())
    for p in passes:
        get_pass(p)
    budget = (budget or Budget()).defaulted(select.scored_index is not None)
    budget.validate(select.scored_index is not None, select.data.labels is not None, select.metric is not None)
    cache = latency_cache if isinstance(latency_cache, LayerLatencyCache) else LayerLatencyCache(latency_cache)
    driver = Driver(model, input_shapes, fold_bn=True, fit=FitContext(seed=options.seed), say=say, deploy=deploy)
    search = AutoSearch(driver, fit, select, budget, settings, options, passes, cache, say, on_step)
    configs, k, decision, rolled = search.run()
    macs_before, params_before = driver.macs, driver.params
    if decision is not None:
        driver.decide(decision, [])
    chosen = configs[k] if k > 0 else {}
    status = "kept" if chosen else ("rolled_back" if rolled else "no_change")
    driver.record("auto", status, driver.kept_records, _skips(search, chosen), macs_before, params_before,
                  time.perf_counter() - t_start, None if chosen else rolled,
                  None if decision is None else decision.step.measure(select), driver.kept if chosen else None)
    baseline = final = None
    rows: tuple = ()
    if report is not None:
        baseline, final, rows = driver.finish(report)
    extra = _extra(search, passes, budget, configs, k, cache, time.perf_counter() - t_start)
    result = driver.report(model_name=model_name, output_name=output_name, settings={
        "strategy": "auto", "passes": passes, "fold_bn": True, "align": options.align, "seed": options.seed,
        "input_shapes": {k2: list(v) for k2, v in (input_shapes or {}).items()}, "ort": settings.to_dict()},
        baseline=baseline, final=final, extra={"auto": extra}, precisions=rows)
    sp = None if final is None else final.speedup
    say(f"auto: done in {time.perf_counter() - t_start:.1f}s: {len(chosen)} layer(s) rewritten, MACs "
        f"{'unknown' if driver.macs is None or not driver.macs0 else f'{driver.macs / driver.macs0:.3f}x'}, "
        f"speedup {'n/a' if sp is None else f'{sp:.3f}'}x")
    cert = None if decision is None else decision.verdicts[0].certificate
    return OptimizeResult(driver.model, result, final, cert)


def _skips(search: AutoSearch, chosen: dict) -> list[NodeSkip]:
    skips = [NodeSkip(n, r) for n, r in search.skipped.items()]
    for n in search.driver.convs:
        if n in chosen or n in search.skipped or n not in search.cands:
            continue
        if any(k.status == "eligible" for k in search.cands[n]):
            skips.append(NodeSkip(n, "left dense by the global choice (accuracy budget)"))
        else:
            skips.append(NodeSkip(n, "every faster candidate alone breaks the accuracy budget (kept dense)"))
    return skips


def _extra(search: AutoSearch, passes: list[str], budget: Budget, configs: list[dict], k: int,
           cache: LayerLatencyCache, seconds: float) -> dict[str, Any]:
    chosen, refits = (configs[k], search.refits.get(k, {})) if k > 0 else ({}, {})
    return {
        "passes": passes,
        "budget": budget.to_dict(),
        "fit": {"source": search.fit_data.source, "samples": search.fit_data.n},
        "select": {"source": search.select_ev.data.source, "samples": search.select_ev.data.n},
        "latency_batch": search.batch,
        "min_layer_speedup": search.options.min_layer_speedup,
        "refit": search.options.refit,
        "chosen": {n: {"candidate": c.key, "form": c.form, "ranks": dict(c.choice.ranks),
                       "layer_speedup": c.speedup, "refit_layer_error": refits.get(n)}
                   for n, c in chosen.items()},
        "candidates": [k.to_dict() for k in search.all_cands],
        "sequence": [{n: c.key for n, c in cfg.items()} for cfg in configs],
        "checks": [asdict(c) for c in search.checks],
        "latency_cache": {"entries": len(search.cache), "hits": cache.hits, "misses": cache.misses},
        "timings_s": {k: round(v, 2) for k, v in search.timings.items()},
        "seconds": round(seconds, 2),
    }
