"""Auto mode: data-aware factors and latency-aware per-layer choice under an accuracy budget.

1. fold BN; list the dense k×k Convs (group 1, known shapes);
2. candidates per Conv: the applicable passes × a few aligned ranks, each timed as a single-layer ORT model
   interleaved with the dense layer (cached by shape, provider, threads); only candidates that measure at
   least ``min_layer_speedup`` faster than the dense layer are kept — a slower rewrite is never used;
3. accuracy cost of each kept candidate applied alone, with its last factor refit on calibration data,
   measured end to end on the calibration set (relative L2 error of the outputs vs the original);
   candidates that alone break the budget are dropped;
4. greedy sequence by latency saved per unit of cost; a grid of its steps (all of them when there are few)
   is built with sequential refitting and checked end to end on the calibration data; a non-decreasing
   curve is fitted to their budget usage (isotonic regression: noise can make a later step look better, a
   later step cannot really be), and the largest step within budget on it is taken; the result is then
   measured with the caller's evaluator (held-out data, latency interleaved with the original), backing
   off while the budget fails or the model measures no faster than the original.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from convopt.auto.candidates import Candidate, build_candidates
from convopt.auto.latency import LayerLatencyCache, measure_candidates
from convopt.auto.refit import Targets, collect_targets, iter_batches, refit_layer, refit_sequential
from convopt.auto.select import Choice, greedy_sequence, grid_steps, largest_within
from convopt.graph import ConvSpec, apply_replacements, read_convs
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Budget, Evaluator, Measurement
from convopt.measure.ort import OrtSettings, latency_batch, make_session
from convopt.passes.fold_bn import NAME as FOLD_BN, fold_batchnorm
from convopt.pipeline import OptimizeResult, conv_shapes, environment, totals, verify
from convopt.report import NodeRewrite, NodeSkip, PassReport, Report

Event = Callable[[str], None]
AUTO_PASSES = ("factorize", "bottleneck", "depthwise", "split5x5")
DEFAULT_BUDGET = Budget(max_accuracy_drop=1.0)
DEFAULT_REL_ERROR_BUDGET = Budget(max_rel_error=0.05)  # the default for models without a class-score output
REFIT_ROWS_PER_SAMPLE = 250  # output pixels per calibration sample kept as least-squares rows
ALONE_INPUT_BYTES = 256 << 20  # cap on one layer's input activations held to refit its candidates alone


def split_eval_data(data: EvalData, calib_fraction: float = 0.5, seed: int = 0) -> tuple[EvalData, EvalData]:
    """Split one data set into (calibration, evaluation) halves, disjoint, by a seeded permutation."""
    n = data.n
    if n < 2:
        raise ValueError("need at least 2 samples to split into calibration and evaluation data")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(max(1, int(round(n * calib_fraction))), n - 1)
    parts = []
    for idx, what in ((np.sort(perm[:k]), "calibration"), (np.sort(perm[k:]), "evaluation")):
        parts.append(EvalData({name: a[idx] for name, a in data.inputs.items()},
                              None if data.labels is None else data.labels[idx],
                              f"{data.source} [{what} split: {len(idx)} samples, seed {seed}]", data.warning))
    return parts[0], parts[1]


def budget_usage(acc: dict[str, Any], budget: Budget) -> float:
    """How much of ``budget`` a measurement's accuracy uses: the largest of drop / max drop, disagreement /
    allowed disagreement, rel. error / max rel. error (≤ 1 within budget; negative when accuracy improved;
    inf when a limit cannot be measured)."""
    parts: list[float] = []

    def ratio(v: Any, limit: float) -> float:
        if v is None or not np.isfinite(v):
            return float("inf")
        return float(v) / limit if limit > 0 else (0.0 if v <= 0 else float("inf"))

    if budget.max_accuracy_drop is not None:
        parts.append(ratio(acc.get("top1_drop"), budget.max_accuracy_drop))
    if budget.min_agreement is not None:
        agree = acc.get("top1_agreement")
        parts.append(ratio(None if agree is None else 100.0 - agree, 100.0 - budget.min_agreement))
    if budget.max_rel_error is not None:
        parts.append(ratio(acc.get("rel_l2_error"), budget.max_rel_error))
    return max(parts) if parts else 0.0


def calib_budget(budget: Budget, margin: float) -> Budget:
    """The budget the end-to-end checks on calibration data must meet: ``margin`` of each accuracy limit is
    held back, because the largest step that passes on a finite calibration set is partly a lucky one.
    Measured on SqueezeNet (500 + 500 ImageNet images, every greedy step evaluated on both halves): with
    refits on 64 images the two halves disagreed by up to 3 points at the same model (a top-1 difference on
    500 images has a standard error of about 1.4 points once 10 % of predictions flip); with refits on 128
    images and ReLU-aware fits they agreed within 1 point up to 8 rewritten layers: a quarter is held back."""
    keep = 1.0 - margin
    return Budget(
        max_accuracy_drop=None if budget.max_accuracy_drop is None else budget.max_accuracy_drop * keep,
        min_agreement=None if budget.min_agreement is None else 100.0 - (100.0 - budget.min_agreement) * keep,
        max_rel_error=None if budget.max_rel_error is None else budget.max_rel_error * max(keep, 0.8))


def pareto_spread(cands: list[Candidate], n: int) -> list[Candidate]:
    """Candidates not dominated in (layer speedup ↑, weight relative error ↓), thinned to at most ``n``
    spread evenly along the front (both ends kept): from the most accurate to the fastest."""
    front = [c for c in cands if not any(
        (o.speedup >= c.speedup and o.record.weight_rel_error <= c.record.weight_rel_error)
        and (o.speedup > c.speedup or o.record.weight_rel_error < c.record.weight_rel_error) for o in cands)]
    front.sort(key=lambda c: c.record.weight_rel_error)
    if len(front) <= n:
        return front
    idx = sorted({round(i * (len(front) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return [front[i] for i in idx]


def alone_model(base: onnx.ModelProto, conv: ConvSpec, k: Candidate, targets: Targets, x: EvalData,
                settings: OrtSettings) -> onnx.ModelProto:
    """``base`` with only candidate ``k`` applied to ``conv``, its last factor refit on ``x``, the layer's
    original input on the refit samples. The refit runs on the candidate's single-layer model alone (no
    full-model copy or run); it is the same fit refit_sequential makes for a model with one rewritten layer."""
    single = k.batch_free_single()
    refit_layer(single, conv.name, "y", targets, x, settings)
    return apply_replacements(base, [k.replacement(conv, single)])


def _latency_batch(model: onnx.ModelProto, settings: OrtSettings) -> int:
    """Layers are timed at the batch the end-to-end latency uses (the evaluator's): the model's fixed batch,
    else settings.latency_batch (not the accuracy batch: which rewrite wins depends on the batch)."""
    return latency_batch(make_session(model, settings), settings)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def auto_optimize(
    model: onnx.ModelProto,
    *,
    passes: list[str] | None = None,
    calib: EvalData,
    evaluator: Evaluator,
    budget: Budget | None = None,
    settings: OrtSettings,
    align: int = 8,
    seed: int = 0,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    latency_cache: LayerLatencyCache | str | Path | None = None,
    min_layer_speedup: float = 1.05,
    max_candidates_per_layer: int = 5,
    refit_samples: int = 128,
    calib_margin: float = 0.25,
    refit: bool = True,
    model_name: str = "",
    output_name: str | None = None,
    on_event: Event | None = None,
    max_checks: int = 12,
    every_step: bool = False,
    on_step: Callable[[int, onnx.ModelProto, Measurement], None] | None = None,
) -> OptimizeResult:
    """Optimize ``model`` in auto mode (see the module docstring) and return the model and its Report.

    ``calib_margin``: fraction of the accuracy budget held back in the calibration checks (see calib_budget).
    ``max_checks``: how many steps of the greedy sequence are checked end to end on calibration data (spread
    evenly; the largest step within budget on a monotone fit of their measurements is taken).
    ``every_step``: check every step instead; with ``on_step(k, model, calibration measurement)`` called for
    each built step, this maps the whole speed/accuracy frontier (bench/frontier.py).
    ``calib`` (calibration data: refits, candidate costs, the end-to-end checks) must be disjoint from the
    ``evaluator``'s data (the final, reported measurement). ``budget`` (None or empty) defaults to 1 point
    of top-1 (labelled, or of top-1 agreement without labels), or to a relative L2 output error of 0.05 for a
    model with no class-score output. ``latency_cache``: a LayerLatencyCache or a JSON path to persist it.
    """
    t_start = time.perf_counter()
    say = on_event or (lambda _m: None)
    passes = list(passes or AUTO_PASSES)
    if budget is None or budget.is_empty:
        budget = DEFAULT_BUDGET if evaluator.scored_index is not None else DEFAULT_REL_ERROR_BUDGET
    cache = latency_cache if isinstance(latency_cache, LayerLatencyCache) else LayerLatencyCache(
        None if latency_cache is None else Path(latency_cache))
    timings: dict[str, float] = {}
    evaluator.validate_budget(budget)  # InputError early when the budget cannot be measured on these outputs

    # -- 1. fold BN, list convs ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    shapes0 = conv_shapes(model, input_shapes)
    macs0, params0 = totals(model, shapes0)
    fold = fold_batchnorm(model)
    base = fold.model
    shapes = conv_shapes(base, input_shapes)
    specs = [c for c in read_convs(base, shapes) if isinstance(c, ConvSpec)]
    fold_report = PassReport(FOLD_BN, "kept" if fold.rewritten else "no_change", tuple(fold.rewritten),
                             tuple(fold.skipped), macs0, macs0, params0,
                             params0 - sum(r.params_before - r.params_after for r in fold.rewritten),
                             round(fold.seconds, 4))
    batch = _latency_batch(base, settings)
    skipped: dict[str, str] = {}
    eligible: list[ConvSpec] = []
    for c in specs:
        if c.kernel == (1, 1):
            continue  # 1x1 convs have nothing to factorize; not listed as skips
        if c.group != 1:
            skipped[c.name] = f"group {c.group} conv: auto mode rewrites dense (group 1) convs only"
        elif c.in_shape is None or c.out_shape is None or c.pads is None:
            skipped[c.name] = "shape unknown (give --input-shape)"
        else:
            eligible.append(c)
    say(f"auto: {len(eligible)} dense conv(s) to consider, latency batch {batch}, "
        f"threads {settings.threads or 'ORT default'}")
    timings["prepare"] = time.perf_counter() - t0

    # -- 2. candidates and their single-layer latency -----------------------------------------------------
    t0 = time.perf_counter()
    cands: dict[str, list[Candidate]] = {}
    all_cands: list[Candidate] = []
    lat_settings = replace(settings, repeats=max(settings.repeats, 30), warmup=max(settings.warmup, 3))
    for i, c in enumerate(eligible, 1):
        built, refused = build_candidates(c, passes, batch, align=align, seed=seed)
        if not built:
            skipped[c.name] = "no candidate lowers MACs enough: " + "; ".join(refused[:3])
            continue
        dense, ms = measure_candidates(c, [(k.key, k.single) for k in built], batch, lat_settings, cache)
        fast = []
        for k in built:
            k.dense_ms, k.ms = dense, ms[k.key]
            if k.speedup >= min_layer_speedup:
                fast.append(k)
            else:
                k.status = f"slower in ORT (layer speedup {k.speedup:.2f}x < {min_layer_speedup})"
            all_cands.append(k)
        keep = pareto_spread(fast, max_candidates_per_layer)
        for k in fast:
            if k not in keep:
                k.status = "not evaluated (dominated or thinned: another candidate is faster and as accurate)"
        if keep:
            cands[c.name] = keep
        else:
            skipped[c.name] = f"no candidate measured >= {min_layer_speedup}x faster than the dense layer in ORT"
        say(f"auto: [{i}/{len(eligible)}] {c.name}: dense {dense:.3f} ms, {len(built)} candidates, "
            f"{len(fast)} faster, best {max((k.speedup for k in built), default=float('nan')):.2f}x")
    cache.save()
    timings["latency"] = time.perf_counter() - t0

    # -- 3. accuracy cost of each candidate alone ---------------------------------------------------------
    t0 = time.perf_counter()
    spec_by_name = {c.name: c for c in eligible}
    order = [c.name for c in eligible]  # graph (topological) order
    calib_ev = Evaluator(model, calib, settings, measure_latency=False)
    base_meas = calib_ev.baseline()
    fit_data = calib if calib.n <= refit_samples else EvalData(
        {k2: a[:refit_samples] for k2, a in calib.inputs.items()},
        None if calib.labels is None else calib.labels[:refit_samples],
        f"{calib.source} [first {refit_samples}]", calib.warning)
    cost_ev = calib_ev if fit_data is calib else Evaluator(model, fit_data, settings, measure_latency=False)
    targets: Targets | None = None
    if refit and cands:
        say(f"auto: collecting original layer outputs on {fit_data.n} calibration samples")
        targets = collect_targets(base, {n: spec_by_name[n].y for n in cands}, fit_data, settings,
                                  rows=REFIT_ROWS_PER_SAMPLE * fit_data.n, seed=seed)

    def build(config: dict[str, Candidate], say_refit: bool = False) -> tuple[onnx.ModelProto, list[Any]]:
        names = [n for n in order if n in config]
        m = apply_replacements(base, [config[n].replacement(spec_by_name[n]) for n in names])
        if refit and targets is not None and names:
            return refit_sequential(m, [(n, spec_by_name[n].y) for n in names], targets, fit_data, settings,
                                    say if say_refit else None)
        return m, []

    # alone, a candidate is dropped only when it misses the budget by more than two samples' worth
    # (the cost set is small; the real budget is checked end to end on all calibration data below)
    slack = 200.0 / max(fit_data.n, 1)
    loose = Budget(
        max_accuracy_drop=None if budget.max_accuracy_drop is None else budget.max_accuracy_drop + slack,
        min_agreement=None if budget.min_agreement is None else max(0.0, budget.min_agreement - slack),
        max_rel_error=budget.max_rel_error)
    def layer_input(name: str) -> EvalData | None:
        """The original input of layer ``name`` on the refit samples (all candidates of a layer alone see it),
        or None when it would take more than ``ALONE_INPUT_BYTES`` (then each candidate refits in the model)."""
        c = spec_by_name[name]
        if not refit or targets is None or c.in_shape is None or \
                fit_data.n * int(np.prod(c.in_shape[1:])) * 4 > ALONE_INPUT_BYTES:
            return None
        parts = [x for _, (x,) in iter_batches(base, [c.x], fit_data, settings)]
        return EvalData({"x": np.concatenate(parts)}, None, f"input of {name}")

    def build_alone(name: str, k: Candidate, x: EvalData | None) -> onnx.ModelProto:
        if x is None:
            return build({name: k})[0]
        return alone_model(base, spec_by_name[name], k, targets, x, settings)  # type: ignore[arg-type]

    n_eval = sum(len(v) for v in cands.values())
    done = 0
    choices: list[Choice] = []
    for name in order:
        x_in = layer_input(name) if cands.get(name) else None
        for k in cands.get(name, []):
            done += 1
            m = build_alone(name, k, x_in)
            meas = cost_ev.measure(m, f"{name} {k.key}")
            acc = meas.accuracy
            k.calib = {key: acc.get(key) for key in ("rel_l2_error", "top1_drop", "top1_agreement")}
            k.cost = float(acc.get("rel_l2_error") or 0.0)
            broken = cost_ev.check(meas, loose)
            if broken:
                k.status = f"alone breaks the budget on calibration data ({broken})"
            else:
                k.status = "eligible"
                # output errors of independent layers add roughly in quadrature: the greedy spends cost²
                choices.append(Choice(name, k.key, k.saved_ms, k.cost ** 2))
            say(f"auto: cost [{done}/{n_eval}] {name} {k.key}: rel err {_fmt(k.cost, '.4f')}, "
                f"top-1 drop {_fmt(acc.get('top1_drop'), '.2f')}, layer {k.speedup:.2f}x, {k.status}")
    timings["costs"] = time.perf_counter() - t0

    # -- 4. greedy sequence, end-to-end checks, back-off -----------------------------------------------------
    t0 = time.perf_counter()
    by_key = {(k.layer, k.key): k for v in cands.values() for k in v}
    seq = greedy_sequence(choices)
    configs = [{n: by_key[(ch.layer, ch.key)] for n, ch in cfg.items()} for cfg in seq]
    checks: list[dict[str, Any]] = []

    def usage_at(k: int) -> float:
        m, infos = build(configs[k])
        meas = calib_ev.measure(m, f"auto step {k}")
        reason = calib_ev.check(meas, strict)
        if on_step is not None:
            on_step(k, m, meas)
        checks.append({"step": k, "layers": len(configs[k]), "data": "calibration",
                       "top1_drop": meas.accuracy.get("top1_drop"), "rel_l2_error": meas.accuracy.get("rel_l2_error"),
                       "ok": reason is None, "reason": reason})
        say(f"auto: check step {k}/{len(configs) - 1} ({len(configs[k])} layers) on calibration data: "
            f"top-1 drop {_fmt(meas.accuracy.get('top1_drop'), '.2f')}, rel err "
            f"{_fmt(meas.accuracy.get('rel_l2_error'), '.4f')} -> {'ok' if reason is None else 'over budget'}")
        return budget_usage(meas.accuracy, strict)

    n_steps = len(configs) - 1
    strict = calib_budget(budget, calib_margin)
    # check a grid of steps on calibration data, fit a non-decreasing curve to their budget usage (a later
    # step only adds rewrites: a lower measurement is sampling noise), take the largest step within budget
    steps = grid_steps(n_steps, n_steps if every_step else max_checks)
    best_k = largest_within(steps, [usage_at(k) for k in steps])
    # final measurement on the evaluator's (held-out) data; back off while the budget fails or it is slower
    final_model, final_infos, final_meas = base, [], None
    rolled: str | None = None
    tried = 0
    k = best_k
    while k > 0:
        m, infos = build(configs[k])  # rebuilt: holding every checked model would cost a model's size each
        verify(m, "auto mode")
        meas = evaluator.measure(m, f"auto ({len(configs[k])} layers rewritten)")
        reason = evaluator.check(meas, budget)
        sp = meas.latency.speedup if meas.latency is not None else None
        if reason is None and sp is not None and sp <= 1.0:
            reason = f"measured no faster than the original end to end (speedup {sp:.3f}x)"
        checks.append({"step": k, "layers": len(configs[k]), "data": "evaluation",
                       "top1_drop": meas.accuracy.get("top1_drop"), "rel_l2_error": meas.accuracy.get("rel_l2_error"),
                       "speedup": sp, "ok": reason is None, "reason": reason})
        say(f"auto: final check step {k} on {evaluator.data.n} evaluation samples: top-1 drop "
            f"{_fmt(meas.accuracy.get('top1_drop'), '.2f')}, speedup {_fmt(sp)}x -> {reason or 'kept'}")
        if reason is None:
            final_model, final_infos, final_meas = m, infos, meas
            break
        rolled = reason
        tried += 1
        k = k - 1 if tried < 3 else k // 2  # step back, then halve
    else:
        k = 0
    timings["select"] = time.perf_counter() - t0
    chosen = configs[k] if k > 0 else {}

    # -- report -------------------------------------------------------------------------------------------
    refit_by_layer = {i.layer: i for i in final_infos}
    rewrites: list[NodeRewrite] = []
    for n in order:
        if n in chosen:
            rewrites.append(chosen[n].record)
    skips = [NodeSkip(n, r) for n, r in skipped.items()]
    for n in order:
        if n in chosen or n in skipped:
            continue
        if n in cands:
            elig = [x for x in cands[n] if x.status == "eligible"]
            if not elig:
                skips.append(NodeSkip(n, "every faster candidate alone breaks the accuracy budget (kept dense)"))
            else:
                skips.append(NodeSkip(n, "left dense by the global choice (accuracy budget)"))
    macs_after = macs0 - sum(r.macs_before - r.macs_after for r in rewrites)
    params_after = fold_report.params_after - sum(r.params_before - r.params_after for r in rewrites)
    if final_meas is None:
        final_meas = evaluator.baseline()
    status = "kept" if rewrites else ("rolled_back" if rolled else "no_change")
    auto_report = PassReport(
        name="auto", status=status, rewritten=tuple(rewrites), skipped=tuple(skips),
        macs_before=macs0, macs_after=macs_after, params_before=fold_report.params_after,
        params_after=params_after, seconds=round(time.perf_counter() - t_start, 3),
        rollback_reason=None if rewrites else rolled, measurement=final_meas.to_dict())
    extra = {"auto": {
        "passes": passes,
        "budget": {k2: v for k2, v in vars(budget).items()},
        "calibration": {"source": calib.source, "samples": calib.n, "refit_samples": fit_data.n,
                        "baseline": base_meas.to_dict()["accuracy"]},
        "latency_batch": batch,
        "min_layer_speedup": min_layer_speedup,
        "calibration_budget": vars(strict) if cands else None,
        "refit": refit,
        "chosen": {n: {"candidate": chosen[n].key, "form": chosen[n].record.form, "ranks": chosen[n].ranks,
                       "layer_speedup": chosen[n].speedup,
                       "refit_layer_error": None if n not in refit_by_layer else
                       [refit_by_layer[n].rel_error_before, refit_by_layer[n].rel_error_after]}
                   for n in order if n in chosen},
        "candidates": [k2.to_dict() for k2 in all_cands],
        "sequence": [{n: c.key for n, c in cfg.items()} for cfg in configs],
        "checks": checks,
        "latency_cache": {"entries": len(cache), "hits": cache.hits, "misses": cache.misses},
        "timings_s": {k2: round(v, 2) for k2, v in timings.items()},
        "seconds": round(time.perf_counter() - t_start, 2),
    }}
    report = Report(
        model=model_name, output=output_name, passes=(fold_report, auto_report),
        settings={"strategy": "auto", "passes": passes, "fold_bn": True, "align": align, "seed": seed,
                  "input_shapes": {k2: list(v) for k2, v in (input_shapes or {}).items()},
                  "ort": settings.to_dict()},
        environment=environment(), macs_before=macs0, macs_after=macs_after, params_before=params0,
        params_after=params_after, baseline=evaluator.baseline().to_dict(), final=final_meas.to_dict(), extra=extra)
    say(f"auto: done in {time.perf_counter() - t_start:.1f}s: {len(rewrites)} layer(s) rewritten, "
        f"MACs {macs_after / max(macs0, 1):.3f}x, speedup {_fmt(final_meas.latency.speedup if final_meas.latency else None)}x")
    return OptimizeResult(final_model if rewrites else base, report, [final_meas])
