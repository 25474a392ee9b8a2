"""Auto mode: a search over plans, run on the driver.

1. list the dense k×k Convs of the BN-folded model (group 1, known shapes);
2. candidates per Conv: the applicable passes × their rank grids, each timed as a single-layer ORT model
   interleaved with the dense layer (cached by shape, provider, threads); only candidates that measure at
   least ``min_layer_speedup`` faster than the dense layer are kept — a slower rewrite is never used;
3. price each candidate alone: its last factor refit on the fit data, the model measured end to end on
   the refit samples (relative L2 error of the outputs vs the original); candidates that alone break the
   budget (with a little slack) are dropped;
4. a greedy sequence by latency saved per unit of cost (built from fit data only, so its order is fixed before
   any decision); a grid of its steps is built with sequential refits and tested on the select data in
   increasing order, each kept only when the upper confidence bound of its loss is within the budget, stopping
   at the first that is not (fixed-sequence testing: every step claimed holds at the full confidence, with no
   correction for the number of looks); of the certified steps the largest that measures faster than the
   original end to end is taken. The report data are measured once, afterwards, by the driver.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import onnx

from convopt.auto.candidates import Candidate, build_candidates
from convopt.auto.latency import LayerLatencyCache, candidate_model, measure_candidates
from convopt.auto.refit import Targets, collect_targets, fit_plan, iter_batches, refit_layer
from convopt.auto.select import Choice as Pick, greedy_sequence, grid_steps, largest_within
from convopt.core.budget import Budget
from convopt.core.driver import Decision, Driver
from convopt.core.instruments import BudgetGuard, SpeedGuard, Step, Verdict
from convopt.core.plan import Plan
from convopt.graph import ConvSpec
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.measurement import Measurement
from convopt.measure.ort import OrtSettings, latency_batch, make_session

Say = Callable[[str], None]
OnStep = Callable[[int, onnx.ModelProto, Measurement], None]
REFIT_ROWS_PER_SAMPLE = 250  # output pixels per calibration sample kept as least-squares rows
ALONE_INPUT_BYTES = 256 << 20  # cap on one layer's input activations held to refit its candidates alone


@dataclass(frozen=True)
class AutoOptions:
    """Auto mode's knobs. ``max_checks``: steps of the greedy sequence tested on the select data (spread
    evenly); ``every_step`` measures them all (the selection still stops at the first uncertified step).
    ``passes`` None: every registered pass that auto mode tries by default."""

    passes: tuple[str, ...] | None = None
    align: int = 8
    seed: int = 0
    min_layer_speedup: float = 1.05
    max_candidates_per_layer: int = 5
    refit: bool = True
    refit_samples: int = 128
    max_checks: int = 12
    every_step: bool = False


@dataclass(frozen=True)
class Check:
    """One step of the greedy sequence tested on the select data: its point estimates, the bounds the
    decision used, whether it was certified, and its speedup (timed interleaved with the original)."""

    step: int
    layers: int
    data: str
    top1_drop: float | None
    rel_l2_error: float | None
    ok: bool
    reason: str | None
    speedup: float | None = None
    bound: dict[str, float] | None = None


def split_eval_data(data: EvalData, calib_fraction: float = 0.5, seed: int = 0) -> tuple[EvalData, EvalData]:
    """Split one data set into (calibration, evaluation) halves, disjoint, by a seeded permutation."""
    n = data.n
    if n < 2:
        raise ValueError("need at least 2 samples to split into calibration and evaluation data")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(max(1, int(round(n * calib_fraction))), n - 1)
    parts = []
    for idx, what in ((np.sort(perm[:k]), "calibration"), (np.sort(perm[k:]), "evaluation")):
        parts.append(data.subset(idx, f"{what} split: {len(idx)} samples, seed {seed}"))
    return parts[0], parts[1]


def pareto_spread(cands: list[Candidate], n: int) -> list[Candidate]:
    """Candidates not dominated in (layer speedup ↑, weight relative error ↓), thinned to at most ``n``
    spread evenly along the front (both ends kept): from the most accurate to the fastest."""
    def dominated(c: Candidate) -> bool:
        return any(o.speedup >= c.speedup and o.weight_rel_error <= c.weight_rel_error and
                   (o.speedup > c.speedup or o.weight_rel_error < c.weight_rel_error) for o in cands)
    front = sorted((c for c in cands if not dominated(c)), key=lambda c: c.weight_rel_error)
    if len(front) <= n:
        return front
    idx = sorted({round(i * (len(front) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return [front[i] for i in idx]


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


class AutoSearch:
    """One auto run's state: the driver, the data roles, the candidates and the checks."""

    def __init__(self, driver: Driver, fit: EvalData, select: Evaluator, budget: Budget,
                 settings: OrtSettings, options: AutoOptions, passes: list[str], cache: LayerLatencyCache,
                 say: Say, on_step: OnStep | None = None) -> None:
        self.driver, self.select_ev, self.budget = driver, select, budget
        self.settings, self.options, self.passes, self.cache = settings, options, passes, cache
        self.say, self.on_step = say, on_step
        self.timings: dict[str, float] = {}
        self.skipped: dict[str, str] = {}
        self.cands: dict[str, list[Candidate]] = {}
        self.all_cands: list[Candidate] = []
        self.checks: list[Check] = []
        self.plans: dict[int, Plan] = {}  # step → its plan with refit factors (small: factors, not models)
        self.refits: dict[int, dict[str, list[float]]] = {}  # step → layer → refit error [before, after]
        self.fit_data = fit
        self.cost_ev = Evaluator(driver.original, fit, settings, measure_latency=False, role="fit")
        self.targets: Targets | None = None
        self.decisions: dict[int, Decision] = {}

    # -- 1, 2: layers and candidates -------------------------------------------------------------------------

    def eligible(self) -> list[ConvSpec]:
        out = []
        for c in self.driver.convs.values():
            if c.kernel == (1, 1):
                continue  # 1x1 convs have nothing to factorize; not listed as skips
            if c.group != 1:
                self.skipped[c.name] = f"group {c.group} conv: auto mode rewrites dense (group 1) convs only"
            elif c.in_shape is None or c.out_shape is None or c.pads is None:
                self.skipped[c.name] = "shape unknown (give --input-shape)"
            else:
                out.append(c)
        return out

    def time_candidates(self, eligible: list[ConvSpec], batch: int) -> None:
        o = self.options
        lat = replace(self.settings, repeats=max(self.settings.repeats, 30), warmup=max(self.settings.warmup, 3))
        for i, c in enumerate(eligible, 1):
            built, refused = build_candidates(c, self.passes, o.align, self.driver.fit)
            if not built:
                self.skipped[c.name] = "no candidate lowers MACs enough: " + "; ".join(refused[:3])
                continue
            models = [(k.key, candidate_model(c, k.choice, batch)) for k in built]
            dense, ms = measure_candidates(c, models, batch, lat, self.cache)
            fast = []
            for k in built:
                k.dense_ms, k.ms = dense, ms[k.key]
                if k.speedup >= o.min_layer_speedup:
                    fast.append(k)
                else:
                    k.status = f"slower in ORT (layer speedup {k.speedup:.2f}x < {o.min_layer_speedup})"
            self.all_cands += built
            keep = pareto_spread(fast, o.max_candidates_per_layer)
            for k in fast:
                if k not in keep:
                    k.status = "not evaluated (dominated or thinned: another candidate is faster and as accurate)"
            if keep:
                self.cands[c.name] = keep
            else:
                self.skipped[c.name] = f"no candidate measured >= {o.min_layer_speedup}x faster than the dense layer"
            self.say(f"auto: [{i}/{len(eligible)}] {c.name}: dense {dense:.3f} ms, {len(built)} candidates, "
                     f"{len(fast)} faster, best {max((k.speedup for k in built), default=float('nan')):.2f}x")
        self.cache.save()

    # -- 3: prices ------------------------------------------------------------------------------------------

    def collect(self) -> None:
        if self.options.refit and self.cands:
            self.say(f"auto: collecting original layer outputs on {self.fit_data.n} fit samples")
            layers = {n: self.driver.convs[n].y for n in self.cands}
            self.targets = collect_targets(self.driver.base, layers, self.fit_data, self.settings,
                                           rows=REFIT_ROWS_PER_SAMPLE * self.fit_data.n, seed=self.options.seed)

    def layer_input(self, name: str) -> EvalData | None:
        """The original input of layer ``name`` on the refit samples (all its candidates alone see it), or
        None when it would take more than ``ALONE_INPUT_BYTES`` (then each candidate refits in the model)."""
        c = self.driver.convs[name]
        if self.targets is None or c.in_shape is None or \
                self.fit_data.n * int(np.prod(c.in_shape[1:])) * 4 > ALONE_INPUT_BYTES:
            return None
        parts = [x for _, (x,) in iter_batches(self.driver.base, [c.x], self.fit_data, self.settings)]
        return EvalData({"x": np.concatenate(parts)}, None, f"input of {name}")

    def alone(self, name: str, k: Candidate, x: EvalData | None) -> Plan:
        """The plan with only ``k``, its last factor refit (on the layer's cached input when there is one)."""
        plan = Plan({name: k.choice})
        if self.targets is None:
            return plan
        if x is None:
            return fit_plan(self.driver.base, plan, self.driver.convs, self.targets, self.fit_data,
                            self.settings)[0]
        single = candidate_model(self.driver.convs[name], k.choice, "N")
        info = refit_layer(single, name, "y", self.targets, x, self.settings)
        if not info.kept:
            return plan
        assert k.choice.factors is not None and info.weight is not None and info.bias is not None
        return Plan({name: k.choice.with_factors(k.choice.factors.with_last(info.weight, info.bias))})

    def price(self) -> list[Pick]:
        """Each candidate alone, on the fit data: its output error orders the greedy sequence; one that misses
        the budget's point estimate by more than two samples' worth is not used (a ranking, not a decision on
        the claim: every step is certified on the select data)."""
        loose = self.budget.loosened(200.0 / max(self.fit_data.n, 1))
        guard = _PointGuard(self.cost_ev, loose)
        total, done, picks = sum(len(v) for v in self.cands.values()), 0, []
        for name in self.driver.convs:
            x = self.layer_input(name) if self.cands.get(name) else None
            for k in self.cands.get(name, []):
                done += 1
                step = self.driver.apply(f"{name} {k.key}", self.alone(name, k, x))
                verdict = guard.after_step(step)
                acc = step.measure(self.cost_ev).accuracy
                k.calib, k.cost = acc, float(acc.rel_l2_error or 0.0)
                k.status = "eligible" if verdict.ok else f"alone breaks the budget on the fit data ({verdict.reason})"
                if verdict.ok:  # output errors of independent layers add roughly in quadrature: spend cost²
                    picks.append(Pick(name, k.key, k.saved_ms, k.cost ** 2))
                self.say(f"auto: cost [{done}/{total}] {name} {k.key}: rel err {fmt(k.cost, '.4f')}, top-1 drop "
                         f"{fmt(acc.top1_drop, '.2f')}, layer {k.speedup:.2f}x, {k.status}")
        return picks

    # -- 4: sequence, checks, final -------------------------------------------------------------------------

    def build(self, k: int, config: dict[str, Candidate]) -> Plan:
        """The plan of step ``k`` of the sequence, with sequential refits, in graph order (built once)."""
        if k not in self.plans:
            plan, infos = Plan({n: config[n].choice for n in self.driver.convs if n in config}), []
            if self.targets is not None and len(plan):
                plan, infos = fit_plan(self.driver.base, plan, self.driver.convs, self.targets, self.fit_data,
                                       self.settings)
            self.plans[k] = plan
            self.refits[k] = {i.layer: [i.rel_error_before, i.rel_error_after] for i in infos}
        return self.plans[k]

    def check(self, k: int, config: dict[str, Candidate], n_steps: int) -> Decision:
        """Step ``k`` tested on the select data: certified when every bound is within the budget."""
        step = self.driver.apply(f"auto step {k}", self.build(k, config))
        decision = self.driver.judge(step, [BudgetGuard(self.select_ev, self.budget)])
        meas = step.measure(self.select_ev)
        if self.on_step is not None:
            self.on_step(k, step.model, meas)
        acc, cert = meas.accuracy, decision.verdicts[0].certificate
        self.checks.append(Check(k, len(config), "select", acc.top1_drop, acc.rel_l2_error, decision.kept,
                                 decision.reason, meas.speedup, None if cert is None else cert.bounds))
        self.say(f"auto: step {k}/{n_steps} ({len(config)} layers) on {meas.samples} select samples: top-1 drop "
                 f"{fmt(acc.top1_drop, '.2f')}, rel err {fmt(acc.rel_l2_error, '.4f')}, speedup "
                 f"{fmt(meas.speedup)}x -> {'certified' if decision.kept else 'not certified: ' + str(decision.reason)}")
        self.decisions[k] = decision
        return decision

    def select(self, picks: list[Pick]) -> tuple[list[dict[str, Candidate]], int, Decision | None, str | None]:
        """Fixed-sequence testing along the grid (increasing steps, stop at the first uncertified one), then the
        largest certified step that measures faster than the original end to end."""
        by_key = {(k.layer, k.key): k for v in self.cands.values() for k in v}
        configs = [{n: by_key[(p.layer, p.key)] for n, p in cfg.items()} for cfg in greedy_sequence(picks)]
        n_steps = len(configs) - 1
        certified, rejected = [], None
        for k in grid_steps(n_steps, n_steps if self.options.every_step else self.options.max_checks):
            decision = self.check(k, configs[k], n_steps)
            if decision.kept and rejected is None:
                certified.append(k)
            elif rejected is None:
                rejected = decision.reason
                if not self.options.every_step:
                    break
        guard = SpeedGuard(self.select_ev, what="the original end to end")
        for k in reversed(certified):
            speed = guard.after_step(self.decisions[k].step)
            if speed.ok:
                return configs, k, self.decisions[k], rejected
            rejected = speed.reason
        return configs, 0, None, rejected

    def run(self) -> tuple[list[dict[str, Candidate]], int, Decision | None, str | None]:
        """Phases 1–4; returns the greedy sequence, the step taken (0: none), its decision, the last rejection."""
        t0 = time.perf_counter()
        eligible = self.eligible()
        self.batch = latency_batch(make_session(self.driver.base, self.settings), self.settings)
        self.say(f"auto: {len(eligible)} dense conv(s) to consider, latency batch {self.batch}, "
                 f"threads {self.settings.threads or 'ORT default'}")
        t1 = time.perf_counter()
        self.time_candidates(eligible, self.batch)
        t2 = time.perf_counter()
        self.collect()
        picks = self.price()
        t3 = time.perf_counter()
        result = self.select(picks)
        self.timings = {"prepare": t1 - t0, "latency": t2 - t1, "costs": t3 - t2, "select": time.perf_counter() - t3}
        return result


__all__ = ["AutoOptions", "AutoSearch", "Check", "pareto_spread", "split_eval_data"]


@dataclass
class _PointGuard:
    """The fit-data ranking rule: a candidate alone within the (loosened) budget's point estimates."""

    evaluator: Evaluator
    budget: Budget
    name: str = "alone"

    def after_step(self, step: Step) -> Verdict:
        reason = self.budget.check(step.measure(self.evaluator).accuracy)
        return Verdict(self.name, reason is None, reason)

    def after_decision(self, step: Step, kept: bool) -> None:
        return None
