"""Auto mode: a search over plans, run on the driver.

1. list the dense k×k Convs of the BN-folded model (group 1, known shapes);
2. candidates per Conv: the applicable passes × their rank grids, each priced at the deployment thread count
   in context (``pricing="window"``, convopt.auto.context: the layer's window — producer, consumers, siblings —
   with the candidate in place, timed paired with the dense window, cached by window structure, provider,
   threads) or as a single-layer ORT model interleaved with the dense layer (``pricing="layer"``; always for
   a Gemm and for INT8 deployment); only candidates that measure at least ``min_layer_speedup`` faster than
   the dense layer are kept (in context: beyond their noise too, and with the layer's share of the window's
   time as its dense time) — a slower rewrite is never used;
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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Callable, Literal

import numpy as np
import onnx

from convopt.auto.candidates import Candidate, build_candidates, set_aside
from convopt.auto.context import ContextPricer, LayerPrices
from convopt.auto.latency import LayerLatencyCache, candidate_model, measure_candidates
from convopt.auto.refit import RefitCache, Targets, collect_targets, fit_plan, run_bytes
from convopt.auto.stats import MOMENT_BYTES, CostModel, Sensitivity, patch_moments, sensitivity, top1_margins
from convopt.io import approx_model_bytes
from convopt.limits import trim_freed_memory
from convopt.pages import drop_all_pages
from convopt.measure.metrics import class_scores
from convopt.auto.select import Choice as Pick, greedy_sequence, grid_steps
from convopt.core.budget import Budget
from convopt.core.driver import Decision, Driver
from convopt.core.instruments import BudgetGuard, SpeedGuard, Verdict, rejection
from convopt.core.plan import Plan
from convopt.graph import ConvSpec
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.measurement import Measurement
from convopt.measure.ort import OrtSettings, latency_batch, make_session, release_shared_arena
from convopt.passes import get_pass

Say = Callable[[str], None]
OnStep = Callable[[int, onnx.ModelProto, Measurement], None]
REFIT_ROWS_PER_SAMPLE = 250  # output pixels per calibration sample kept as least-squares rows
PRUNE = 2.0  # a candidate predicted alone to cost more than this many budgets is not used


@dataclass(frozen=True)
class AutoOptions:
    """Auto mode's knobs. ``max_checks``: steps of the greedy sequence tested on the select data (spread
    evenly); ``every_step`` measures them all (the selection still stops at the first uncertified step).
    ``time_budget`` (seconds): stop early with the best plan found so far (layers not reached stay dense).
    ``passes`` None: every registered pass that auto mode tries by default. ``pricing``: how a candidate's
    latency is measured — "window" (in context: the layer with its neighbours, laid out, fused and woken as
    the model runs them; bench/results/thread_pricing.md compares both with whole-model savings) or "layer"
    (the Conv alone, single-layer models)."""

    passes: tuple[str, ...] | None = None
    align: int = 8
    seed: int = 0
    min_layer_speedup: float = 1.05
    max_candidates_per_layer: int = 5
    refit: bool = True
    refit_samples: int = 128
    max_checks: int = 12
    every_step: bool = False
    time_budget: float | None = None
    pricing: Literal["window", "layer"] = "window"


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
    """Candidates not dominated in (layer speedup ↑, layer error ↓), thinned to at most ``n`` spread evenly
    along the front (both ends kept): from the most accurate to the fastest."""
    def dominated(c: Candidate) -> bool:
        return any(o.speedup >= c.speedup and o.error <= c.error and
                   (o.speedup > c.speedup or o.error < c.error) for o in cands)
    front = sorted((c for c in cands if not dominated(c)), key=lambda c: c.error)
    if len(front) <= n:
        return front
    idx = sorted({round(i * (len(front) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return [front[i] for i in idx]


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def read_window_prices(lp: LayerPrices, share: float, cands: list[Candidate], min_speedup: float
                       ) -> list[Candidate]:
    """Set each candidate's dense/candidate ms from its in-context saving (``lp.prices`` in the order of
    ``cands``): the layer's dense time is its ``share`` of the dense window's, the candidate's that minus the
    saving (floored at 0.1 % of it), so ``saved_ms`` is the window's paired saving. Returns the fast ones: at
    least ``min_speedup`` by that reading and, when that asks for any speedup (> 1), saving more than their
    own measurement noise."""
    fast = []
    dense = lp.dense_ms * share
    for k, p in zip(cands, lp.prices, strict=True):
        k.dense_ms, k.ms = dense, max(dense - p.saved_ms, 1e-3 * dense)
        if k.speedup >= min_speedup and (p.pays or min_speedup <= 1.0):
            fast.append(k)
    return fast


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
        self.refit_cache: RefitCache = {}
        self.fit_data = fit
        plain = fit if select.metric is None else replace(fit, labels=None)  # a metric's labels are not classes
        assert driver.original is not None, "auto measures against the original"
        self.cost_ev = Evaluator(driver.original, plain, settings, measure_latency=False, role="fit",
                           executor=select.executor)
        self.targets: Targets | None = None
        self.verdicts: dict[int, tuple[Verdict, ...]] = {}
        self.measured: dict[int, Measurement] = {}
        self.sensitivity: dict[str, Sensitivity] = {}
        # what a run of the model holds per sample: it bounds every batch of activations the search reads
        self.run_bytes = run_bytes(driver.base, driver.shapes, driver.convs.values())
        tb = options.time_budget
        self.deadline = None if tb is None else time.perf_counter() + tb

    def out_of_time(self, layers: Sequence[str] = ()) -> bool:
        """True once --time-budget is spent; ``layers`` not reached are then left dense, with the reason."""
        if self.deadline is None or time.perf_counter() < self.deadline:
            return False
        for n in layers:
            self.skipped.setdefault(n, "not considered: --time-budget reached")
        return True

    # -- 1, 2: layers, statistics, candidates, their latency ------------------------------------------------

    def eligible(self) -> list[ConvSpec]:
        """Dense convs of known size that some pass auto mode tries applies to (the others are skipped, with the
        reasons of the passes when none applies)."""
        out = []
        for c in self.driver.convs.values():
            reasons = [r for r in (get_pass(p).applies(c) for p in self.passes) if r]
            if c.group != 1:
                self.skipped[c.name] = f"group {c.group} conv: auto mode rewrites dense (group 1) convs only"
            elif c.in_shape is None or c.out_shape is None or c.pads is None:
                self.skipped[c.name] = "shape unknown (give --input-shape)"
            elif len(reasons) == len(self.passes):
                self.skipped[c.name] = "; ".join(dict.fromkeys(reasons))
            else:
                out.append(c)
        return out

    def fit_and_time(self, eligible: list[ConvSpec], batch: int) -> float:
        """Every layer's candidates, their factors fitted under the layer's input-patch moments on the fit data
        (collected a memory-bounded group of layers at a time, each layer's dropped once its factors exist), each
        layer's timed as soon as they exist: only the factors of the fast, non-dominated ones stay, so memory
        holds one layer's candidates, not every layer's. Returns the seconds spent timing."""
        lat = replace(self.settings, repeats=max(self.settings.repeats, 30), warmup=max(self.settings.warmup, 3))
        pricer = self.context_pricer(lat, batch)
        # a group of layers' moments takes at most the model's size (one wide layer may take more, alone)
        budget = max(MOMENT_BYTES, approx_model_bytes(self.driver.base))
        groups = patch_moments(self.driver.base, eligible, self.fit_data, self.settings, self.options.seed, budget,
                               self.run_bytes)
        by_name = {c.name: c for c in eligible}
        done: list[str] = []
        timed = 0.0
        for moments in groups:
            fit = replace(self.driver.fit, moments=moments)
            for name in list(moments):
                if self.out_of_time([c.name for c in eligible if c.name not in done]):
                    break
                done.append(name)
                cands, refused = build_candidates(by_name[name], self.passes, self.options.align, fit)
                del moments[name]  # the layer's moments (and their cached covariance) are no longer needed
                if not cands:
                    self.skipped[name] = "no candidate lowers MACs: " + "; ".join(refused[:3])
                    continue
                t = time.perf_counter()
                self.time_layer(name, cands, pricer, lat, batch, f"[{len(done)}/{len(eligible)}]")
                timed += time.perf_counter() - t
                release_shared_arena()  # the windows' activations ...
                trim_freed_memory()  # ... and the layer's moments, dropped factors and window sessions are freed
                drop_all_pages()  # ... and the set-aside arrays it read (its candidates, the fit data)
            if self.out_of_time():
                break
        self.say(f"auto: {len(self.all_cands)} candidate(s) fitted on the layer inputs of {self.fit_data.n} fit "
                 f"samples and timed; {sum(len(v) for v in self.cands.values())} kept")
        self.cache.save()
        return timed

    def time_layer(self, name: str, cands: list[Candidate], pricer: ContextPricer | None, lat: OrtSettings,
                   batch: int, progress: str) -> None:
        """Time one layer's candidates (in its window, or alone); keep the fast, non-dominated ones (at most
        ``max_candidates_per_layer``) and drop the others' factors."""
        o, c = self.options, self.driver.convs[name]
        if pricer is not None and c.op == "Conv":
            lp = pricer.price(name, [k.choice for k in cands])
            fast = read_window_prices(lp, pricer.layer_share(name), cands, o.min_layer_speedup)
            where = f"in a window of {lp.nodes} nodes ({lp.scope})"
        else:
            models = [(k.key, candidate_model(c, k.choice, batch)) for k in cands]
            dense, ms = measure_candidates(c, models, batch, lat, self.cache, self.driver.deploy)
            for k in cands:
                k.dense_ms, k.ms = dense, ms[k.key]
            fast = [k for k in cands if k.speedup >= o.min_layer_speedup]
            where = "alone"
        for k in cands:
            if k not in fast:
                k.status = f"slower in ORT (layer speedup {k.speedup:.2f}x < {o.min_layer_speedup}, {where})"
        self.all_cands += cands
        keep = pareto_spread(fast, o.max_candidates_per_layer)
        for k in cands:
            if k not in keep:
                k.drop_factors()  # memory: only the kept candidates' factors stay
                if k in fast:
                    k.status = "not used (dominated or thinned: another candidate is faster and as accurate)"
        if keep:
            set_aside(keep)  # memory: their factors wait in a file until a plan writes them
            self.cands[name] = keep
        else:
            self.skipped[name] = f"no candidate measured >= {o.min_layer_speedup}x faster than the dense layer"
        self.say(f"auto: {progress} {name}: dense {cands[0].dense_ms:.3f} ms, {len(cands)} candidates timed "
                 f"{where}, {len(fast)} faster, best {max((k.speedup for k in cands), default=float('nan')):.2f}x")

    def context_pricer(self, settings: OrtSettings, batch: int) -> ContextPricer | None:
        """The window pricer at the deployment settings and latency batch (None: ``pricing="layer"``, or an
        INT8 deployment, whose candidates are timed quantized one layer at a time)."""
        if self.options.pricing != "window" or self.driver.deploy.quantized:
            return None
        base = self.driver.base
        inits = {t.name for t in base.graph.initializer}
        hints = {i.name: (batch, *self.driver.shapes[i.name][1:]) for i in base.graph.input
                 if i.name not in inits and i.name in self.driver.shapes and len(self.driver.shapes[i.name]) > 0}
        return ContextPricer(base, self.driver.convs, settings, input_shapes=hints, cache=self.cache,
                             repeats=max(settings.repeats, 50), warmup=settings.warmup)

    # -- 3: prices ------------------------------------------------------------------------------------------

    def collect(self) -> None:
        """The original layers' outputs at sampled pixels of the fit data (refit targets, and the scale of the
        noise that measures each layer's sensitivity)."""
        if self.cands:
            self.say(f"auto: collecting original layer outputs on {self.fit_data.n} fit samples")
            layers = {n: self.driver.convs[n].y for n in self.cands}
            self.targets = collect_targets(self.driver.base, layers, self.fit_data, self.settings,
                                           rows=REFIT_ROWS_PER_SAMPLE * self.fit_data.n, seed=self.options.seed,
                                           specs=self.driver.convs, sample_bytes=self.run_bytes)

    def price(self) -> tuple[list[Pick], CostModel]:
        """Each candidate's own cost is its layer's output error on the fit data; a configuration is priced by
        the cost model built from each layer's sensitivity (one run per layer, of its middle rewrite): the expected %
        of top-1 flips for a top-1 budget on class scores, else the relative output error. A ranking on the fit
        data, not a decision: every step is certified on the select data."""
        self.say(f"auto: measuring {len(self.cands)} layer sensitivities on {self.fit_data.n} fit samples")
        for name, cands in self.cands.items():
            rep = sorted(cands, key=lambda k: k.error)[len(cands) // 2]  # a middle rewrite of the layer
            model = self.driver.apply(f"sensitivity of {name}", Plan({name: rep.choice})).model
            self.sensitivity[name] = sensitivity(model, rep.error, self.cost_ev)
        top1 = self.budget.max_accuracy_drop is not None or self.budget.min_agreement is not None
        ref = self.cost_ev.reference[self.cost_ev.scored_index] if self.cost_ev.scored_index is not None else None
        scores = None if ref is None else class_scores(ref)  # None for ragged outputs: priced by output error
        margins = top1_margins(scores.astype(np.float64))[1] if top1 and scores is not None else None
        model = CostModel(self.sensitivity, margins)
        limit = PRUNE * self._limit(margins is not None)
        picks = []
        for name, cands in self.cands.items():
            for k in cands:
                k.cost = model({name: k.error})
                if k.cost > limit:
                    k.status = f"predicted alone to cost {k.cost:.3g}, more than {PRUNE:g}× the budget: not used"
                    k.drop_factors()
                    continue
                k.status = "eligible"
                picks.append(Pick(name, k.key, k.saved_ms, k.error))
            self.say(f"auto: {name}: sensitivity {self.sensitivity[name].rel:.3f}, predicted cost alone "
                     + ", ".join(f"{k.key} {k.cost:.3g}" for k in cands))
        return picks, model

    def _limit(self, top1: bool) -> float:
        """The budget in the cost model's units: % of flips for a top-1 budget, else relative error."""
        b = self.budget
        if top1:
            return min(v for v in (b.max_accuracy_drop, None if b.min_agreement is None else 100 - b.min_agreement)
                       if v is not None)
        return b.max_rel_error if b.max_rel_error is not None else float("inf")

    # -- 4: sequence, checks, final -------------------------------------------------------------------------

    def step_plan(self, k: int, config: dict[str, Candidate]) -> Plan:
        """The plan of step ``k`` of the sequence, with sequential refits, in graph order (built once)."""
        if k not in self.plans:
            plan, infos = Plan({n: config[n].choice for n in self.driver.convs if n in config}), []
            if self.targets is not None and len(plan):
                plan, infos = fit_plan(self.driver.base, plan, self.driver.convs, self.targets, self.fit_data,
                                       self.settings, cache=self.refit_cache)
            self.plans[k] = plan
            self.refits[k] = {i.layer: [i.rel_error_before, i.rel_error_after] for i in infos}
        return self.plans[k]

    def check(self, k: int, config: dict[str, Candidate], n_steps: int) -> tuple[Verdict, ...]:
        """Step ``k`` tested on the select data: certified when every bound is within the budget. Returns the
        verdicts; the step's model is freed before the next one is built."""
        step = self.driver.apply(f"auto step {k}", self.step_plan(k, config))
        if self.on_step is None:  # memory: the step's model goes once its session is made (nothing else reads it)
            step.remember(self.select_ev, self.select_ev.measure(step.hand_off(), step.name))
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
        self.verdicts[k], self.measured[k] = decision.verdicts, meas
        del step, decision  # memory: no step's model is held; the one taken is rebuilt from its plan
        self.select_ev.release_timing()  # nor the original's timing session through the next step's refits
        trim_freed_memory()  # ... and the heap pages they took go back to the system
        drop_all_pages()  # ... as do the pages of the set-aside arrays the step read (its factors, the data)
        return self.verdicts[k]

    def decision(self, k: int) -> Decision:
        """Step ``k``'s decision, its model rebuilt from its plan (factors and refits included: the same model,
        byte for byte), with the select measurement it had."""
        step = self.driver.apply(f"auto step {k}", self.plans[k])
        step.remember(self.select_ev, self.measured[k])
        return Decision(step, self.verdicts[k])

    def select(self, picks: list[Pick], cost: CostModel | None
               ) -> tuple[list[dict[str, Candidate]], int, Decision | None, str | None]:
        """The greedy sequence under ``cost``; fixed-sequence testing along its grid (increasing steps, stop at
        the first uncertified one); the largest certified step that measures faster than the original."""
        by_key = {(k.layer, k.key): k for v in self.cands.values() for k in v}
        seq = greedy_sequence(picks, cost) if cost is not None else [{}]
        configs = [{n: by_key[(p.layer, p.key)] for n, p in cfg.items()} for cfg in seq]
        n_steps = len(configs) - 1
        grid = grid_steps(n_steps, n_steps if self.options.every_step else self.options.max_checks)
        used = {id(c) for k in grid for c in configs[k].values()}
        for c in by_key.values():
            if id(c) not in used:
                c.drop_factors()  # memory: in no step that will be built (its figures stay, for the report)
        certified, rejected = [], None
        for k in grid:
            if self.out_of_time():
                self.say("auto: --time-budget reached: the largest step certified so far is taken")
                break
            verdicts = self.check(k, configs[k], n_steps)
            if all(v.ok for v in verdicts) and rejected is None:
                certified.append(k)
            elif rejected is None:
                rejected = rejection(list(verdicts))
                if not self.options.every_step:
                    break
        guard = SpeedGuard(self.select_ev, what="the original end to end")
        for k in reversed(certified):
            speed = guard.verdict(self.measured[k])  # judged on its select measurement: no model rebuilt
            if speed.ok:
                return configs, k, self.decision(k), rejected
            rejected = speed.reason
        return configs, 0, None, rejected

    def release(self) -> None:
        """Once the step is taken (its model rebuilt, holding its own factors): drop what only the search used,
        before the report phase measures the result — the candidates' factors, the steps' plans, the refits and
        the refit targets' files."""
        for k in self.all_cands:
            k.drop_factors()
        self.plans.clear()
        self.refit_cache.clear()
        if self.targets is not None:
            self.targets.close()
        trim_freed_memory()
        drop_all_pages()  # the data's pages too: the report phase reads only the report data

    def run(self) -> tuple[list[dict[str, Candidate]], int, Decision | None, str | None]:
        """Phases 1–4; returns the greedy sequence, the step taken (0: none), its decision, the last rejection."""
        t0 = time.perf_counter()
        eligible = self.eligible()
        self.batch = latency_batch(make_session(self.driver.base, self.settings), self.settings)
        self.say(f"auto: {len(eligible)} dense conv(s) to consider, latency batch {self.batch}, "
                 f"threads {self.settings.threads or 'ORT default'}")
        timed = self.fit_and_time(eligible, self.batch)
        t2 = time.perf_counter()
        self.collect()
        picks, cost = self.price() if self.cands else ([], None)
        t3 = time.perf_counter()
        result = self.select(picks, cost)
        self.release()
        self.timings = {"fit": t2 - t0 - timed, "latency": timed, "costs": t3 - t2, "select": time.perf_counter() - t3}
        return result


__all__ = ["AutoOptions", "AutoSearch", "Check", "pareto_spread", "read_window_prices", "split_eval_data"]


