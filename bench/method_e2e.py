"""End-to-end method comparison at matched MACs: every dense conv of a kind rewritten at the same ranks by each
fitting method, the whole model judged on held-out data by what it is for.

Per model and form (``factorize`` k×k → k×1·1×k and ``bottleneck`` Tucker-2 on the dense k×k convs;
``lowrank`` I→r→O on the dense 1×1 convs, a separate row group), a uniform rank fraction is chosen per MACs
level so that the rewritten layers keep the share of their MACs nearest the target (the pass's own uniform rank
policy, ``RankPolicy("fraction")``, aligned to 8 channels). The ranks are then identical for every method:

  svd               weight SVD: data-free factors (the pass's ``decompose`` without moments), bias kept
  refit             last-factor refit: the svd factors, then each layer's last factor and bias refit in graph
                    order by least squares on the fit data (``convopt.auto.refit.fit_plan``: auto before datafit)
  white             whitened: factors fitted under the uncentered input-patch moment S = E[x xᵀ], bias kept
                    (the pass's ``decompose`` given Moments with a zero mean: its covariance is then S and the
                    bias correction b + (W − Ŵ)·0 leaves b as it is; no convopt switch was needed)
  white+bias        whitened under the covariance C, then the mean-shift bias correction (``make_factors``)
  white+bias+refit  white+bias, then the sequential last-factor refit: what auto mode does now
                    (``AutoSearch.step_plan`` refits every step's plan with ``fit_plan``)

The moments are convopt.auto.stats.patch_moments on the original model's activations (as auto collects them),
the refit targets convopt.auto.refit.collect_targets (250 output pixels per fit sample, at most 128 samples'
worth: auto mode's rows at its default --refit-samples). Models are built by convopt.core.plan.apply_plan and
measured by convopt.measure.evaluator.Evaluator on the held-out samples (never fitted on): top-1 drop with its
95 % paired interval where there are labels, relative output error with its interval, the task metric's drop
for the ddddocr models; and, paired on the same samples, each method against refit.

    python bench/method_e2e.py [squeezenet vgg-digits example ddddocr-det ddddocr-ocr] [--levels 0.7 0.5]
        [--fit N] [--test N] [--seed 0]

Writes bench/results/method_e2e.json (models not named keep their last run) and method_e2e.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from convopt import decompose
from convopt.auto.refit import RefitInfo, Targets, collect_targets, fit_plan
from convopt.auto.search import REFIT_ROWS_PER_SAMPLE
from convopt.auto.stats import MOMENT_BYTES, patch_moments
from convopt.core.driver import Driver, verify
from convopt.core.plan import Choice, Plan, apply_plan
from convopt.datafit import Moments
from convopt.graph import ConvSpec
from convopt.io import approx_model_bytes
from convopt.measure import stats
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.measurement import Outcomes
from convopt.measure.ort import OrtSettings
from convopt.passes import Factors, FitContext, RankPolicy, Ranks, get_pass

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_e2e_setup import SETUPS, Task  # noqa: E402
from method_e2e_table import render  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("svd", "refit", "white", "white+bias", "white+bias+refit")
ALIGN = 8
FRACTIONS = tuple(round(f, 2) for f in np.arange(0.02, 1.0001, 0.01))
REFIT_SAMPLES = 128  # auto mode's default --refit-samples: the refit rows are those of that many samples
SETTINGS = OrtSettings(threads=1)


@dataclass(frozen=True)
class Level:
    """One form at one MACs target: the uniform ``fraction`` chosen and the ranks it gives each layer it
    rewrites; ``macs``: MACs of the form's layers after / before (the layers it does not rewrite count as
    kept)."""

    form: str
    target: float
    fraction: float
    ranks: dict[str, Ranks]
    macs: float


def form_layers(convs: dict[str, ConvSpec], form: str) -> list[ConvSpec]:
    """The dense convs a form is compared on: k×k for factorize/bottleneck, 1×1 (not Gemm) for lowrank."""
    one = form == "lowrank"
    return [c for c in convs.values() if c.op == "Conv" and c.group == 1 and (c.kernel == (1, 1)) == one]


def rank_table(layers: list[ConvSpec], form: str) -> dict[float, dict[str, Ranks]]:
    """fraction → layer → the ranks uniform mode gives it (``ConvPass.choose``), for every fraction."""
    p = get_pass(form)
    table: dict[float, dict[str, Ranks]] = {f: {} for f in FRACTIONS}
    for c in layers:
        if p.applies(c) is not None:
            continue
        with decompose.svd_reuse():  # one SVD per layer, shared by every fraction
            for f in FRACTIONS:
                got = p.choose(c, RankPolicy("fraction", f, ALIGN))
                if not isinstance(got, str):
                    table[f][c.name] = got[0]
    return table


def levels_for(layers: list[ConvSpec], form: str, targets: tuple[float, ...]) -> list[Level]:
    """Per target, the fraction whose MACs ratio over ``layers`` is nearest the target (the cheaper on a tie;
    a target giving the same ranks as a larger one is left out)."""
    p = get_pass(form)
    dense = {c.name: p.dense_macs(c) for c in layers}
    table = rank_table(layers, form)
    ratio = {f: sum(p.macs(c, r[c.name]) if c.name in r else dense[c.name] for c in layers) / sum(dense.values())
             for f, r in table.items() if r}
    out: list[Level] = []
    for t in sorted(targets, reverse=True):
        f = min(ratio, key=lambda g: (abs(ratio[g] - t), ratio[g]))
        if not out or table[f] != out[-1].ranks:
            out.append(Level(form, t, f, table[f], ratio[f]))
    return out


def uncentered(m: Moments) -> Moments:
    """The same second moment S with a zero mean: factors fitted under S, the bias left as it is."""
    return Moments(m.count, np.zeros_like(m.mean), m.second)


def whitened(base: onnx.ModelProto, convs: dict[str, ConvSpec], levels: list[Level], fit: EvalData,
             seed: int) -> dict[tuple[int, str], dict[str, Factors]]:
    """(level index, "white" | "white+bias") → layer → its data-aware factors, fitted under the moments of the
    layer's input patches on ``fit`` (a memory-bounded group of layers at a time, as auto mode does)."""
    out: dict[tuple[int, str], dict[str, Factors]] = {(i, m): {} for i in range(len(levels))
                                                      for m in ("white", "white+bias")}
    names = {n for lv in levels for n in lv.ranks}
    layers = [c for n, c in convs.items() if n in names]
    budget = max(MOMENT_BYTES, approx_model_bytes(base))
    for moments in patch_moments(base, layers, fit, SETTINGS, seed, budget):
        for name, m in moments.items():
            fits = {"white": FitContext(seed=seed, moments={name: uncentered(m)}),
                    "white+bias": FitContext(seed=seed, moments={name: m})}
            for i, lv in enumerate(levels):
                if name in lv.ranks:
                    for meth, ctx in fits.items():
                        out[(i, meth)][name] = get_pass(lv.form).decompose(convs[name], lv.ranks[name], ctx)
    return out


def plans(base: onnx.ModelProto, convs: dict[str, ConvSpec], level: Level, white: dict[str, dict[str, Factors]],
          targets: Targets, fit: EvalData) -> Iterator[tuple[str, Plan, list[RefitInfo], float]]:
    """(method, its plan with factors, its refits, seconds to fit) for every method, in METHODS order."""
    order = [n for n in convs if n in level.ranks]
    data_free = Plan({n: Choice(level.form, level.ranks[n]) for n in order})
    white_plans = {m: Plan({n: Choice(level.form, level.ranks[n], white[m][n]) for n in order}) for m in white}
    for meth in METHODS:
        t0 = time.perf_counter()
        if meth in ("refit", "white+bias+refit"):
            start = data_free if meth == "refit" else white_plans["white+bias"]
            plan, infos = fit_plan(base, start, convs, targets, fit, SETTINGS)
        else:
            plan, infos = (data_free if meth == "svd" else white_plans[meth]), []
        yield meth, plan, infos, time.perf_counter() - t0


def paired(a: Outcomes, b: Outcomes) -> dict[str, object]:
    """Method ``a`` against refit ``b`` on the same held-out samples: the ratio of their relative output
    errors (< 1: ``a`` is closer to the original) and, with labels, ``a``'s top-1 gain over ``b`` in points;
    with a task metric, ``a``'s mean score gain; each with its 95 % interval (paired)."""
    out: dict[str, object] = {}
    if np.all(np.isfinite(a.err_sq)) and np.sum(b.err_sq) > 0:
        out["err_ratio"] = float(np.sqrt(np.sum(a.err_sq) / np.sum(b.err_sq)))
        out["err_ratio_interval"] = list(stats.rel_error_interval(a.err_sq, b.err_sq))
    if a.correct_after is not None and b.correct_after is not None:
        n10 = int(np.sum(b.correct_after & ~a.correct_after))  # refit right, a wrong
        n01 = int(np.sum(~b.correct_after & a.correct_after))
        lo, hi = stats.paired_drop_interval(n10, n01, a.n)
        out.update(top1_gain=100.0 * (n01 - n10) / a.n, top1_gain_interval=[-100.0 * hi, -100.0 * lo],
                   flips=[n01, n10])
    if a.score_after is not None and b.score_after is not None:
        d = a.score_after - b.score_after
        out.update(metric_gain=float(np.mean(d)), metric_gain_interval=list(stats.mean_interval(d)))
    return out


def refit_summary(infos: list[RefitInfo]) -> dict[str, object] | None:
    if not infos:
        return None
    kept = [i for i in infos if i.kept]
    gm = lambda v: float(np.exp(np.mean(np.log(np.maximum(v, 1e-12))))) if v else None  # noqa: E731
    return {"layers": len(infos), "kept": len(kept), "error_before": gm([i.rel_error_before for i in kept]),
            "error_after": gm([i.rel_error_after for i in kept])}


def run_level(driver: Driver, level: Level, white: dict[str, dict[str, Factors]], targets: Targets, task: Task,
              ev: Evaluator) -> dict:
    """Every method at one level, built, checked and measured on the held-out data."""
    rec: dict = {"form": level.form, "target": level.target, "fraction": level.fraction,
                 "layers": len(level.ranks), "macs_layers": level.macs, "methods": {}, "vs_refit": {}}
    outcomes: dict[str, Outcomes] = {}
    for meth, plan, infos, secs in plans(driver.base, driver.convs, level, white, targets, task.fit):
        applied = apply_plan(driver.base, plan, driver.convs)
        verify(applied.model, f"{task.name} {level.form} {meth}")
        got = {r.node: r.ranks for r in applied.records}
        assert got == level.ranks, f"{meth}: ranks differ from the level's"
        saved = sum(r.macs_before - r.macs_after for r in applied.records)  # type: ignore[operator]
        rec["macs_model"] = (driver.macs0 - saved) / driver.macs0
        m = ev.measure(applied.model, f"{task.name} {level.form} {level.target} {meth}", timed=False)
        assert m.outcomes is not None
        outcomes[meth] = m.outcomes
        rec["methods"][meth] = {**m.accuracy.to_dict(), "fit_seconds": round(secs, 1), "refit": refit_summary(infos)}
        a = m.accuracy
        print(f"  {task.name} {level.form} {level.target:.2f} ({level.macs:.3f}) {meth:17s} "
              + (f"top-1 drop {a.top1_drop:.1f} " if task.figure == "top1" else "") + f"rel err {a.rel_l2_error:.4f}"
              + (f" metric drop {a.metric_drop:.3f}" if a.metric_drop is not None else "")
              + f" (fit {secs:.1f} s)", flush=True)
    rec["vs_refit"] = {m: paired(outcomes[m], outcomes["refit"]) for m in METHODS if m != "refit"}
    return rec


def run_task(task: Task, targets_kxk: tuple[float, ...], targets_1x1: tuple[float, ...], seed: int) -> dict:
    t0 = time.perf_counter()
    driver = Driver(task.model, task.shapes)
    ev = Evaluator(task.model, task.test, SETTINGS, measure_latency=False, metric=task.metric, role="held-out")
    base_acc = ev.baseline().accuracy
    rec: dict = {"fit": task.fit.source, "test": task.test.source, "fit_samples": task.fit.n,
                 "test_samples": task.test.n, "figure": task.figure, "macs_model": driver.macs0,
                 "original": {"labelled_top1": ev.original_accuracy and ev.original_accuracy["top1"],
                              "metric": None if task.metric is None else task.metric.name,
                              "metric_score": base_acc.metric_score}, "levels": []}
    for group, forms, tg in (("kxk", [f for f in task.forms if f != "lowrank"], targets_kxk),
                             ("1x1", [f for f in task.forms if f == "lowrank"], targets_1x1)):
        levels = [lv for f in forms for lv in levels_for(form_layers(driver.convs, f), f, tg)]
        if not levels:
            continue
        white = whitened(driver.base, driver.convs, levels, task.fit, seed)
        names = {n for lv in levels for n in lv.ranks}
        targets = collect_targets(driver.base, {n: c.y for n, c in driver.convs.items() if n in names}, task.fit,
                                  SETTINGS, rows=REFIT_ROWS_PER_SAMPLE * min(task.fit.n, REFIT_SAMPLES), seed=seed,
                                  specs=driver.convs)
        for i, lv in enumerate(levels):
            per = {m: white[(i, m)] for m in ("white", "white+bias")}
            rec["levels"].append(run_level(driver, lv, per, targets, task, ev))
        print(f"  {task.name} {group}: {time.perf_counter() - t0:.0f} s so far", flush=True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=list(SETUPS), help=f"any of {', '.join(SETUPS)}")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.7, 0.5], help="MACs targets of the k×k convs")
    ap.add_argument("--levels-1x1", type=float, nargs="+", default=[0.85, 0.7], help="MACs targets of the 1×1 convs")
    ap.add_argument("--fit", type=int, help="fit samples (default: half the labelled data; 16 det, 32 ocr)")
    ap.add_argument("--test", type=int, help="held-out samples (default: the other half; all of examples/data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=RESULTS / "method_e2e.json", help="the JSON to update "
                    "(the markdown is written beside it)")
    args = ap.parse_args(argv)
    unknown = [m for m in args.models if m not in SETUPS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(SETUPS)}")
    path: Path = args.results
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}  # other models' last run kept
    results["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M"), "onnxruntime": onnxruntime.__version__,
                       "numpy": np.__version__, "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} "
                       f"cores, load average {os.getloadavg()[0]:.1f} at start", "threads": SETTINGS.threads}
    shown = [a for i, a in enumerate(argv) if "--results" not in argv[max(i - 1, 0):i + 1]]  # not where it went
    command = " ".join(["python bench/method_e2e.py", *shown])
    t0 = time.perf_counter()
    with decompose.one_blas_thread():
        for name in args.models:
            print(f"{name}:", flush=True)
            task = SETUPS[name](args.seed, args.fit, args.test)
            results["models"][name] = {**run_task(task, tuple(args.levels), tuple(args.levels_1x1), args.seed),
                                       "command": command}
            path.write_text(json.dumps(results, indent=1))
    print(f"done in {time.perf_counter() - t0:.0f} s")
    md = path.with_suffix(".md")
    md.write_text(render(results, __doc__.split("    python")[0].strip()))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
