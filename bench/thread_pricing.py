"""Does a candidate's price predict what it saves end to end? Old pricing (the Conv alone, single-layer model,
``convopt.auto.latency``) and context pricing (the layer's window, ``convopt.auto.context``) against the
measured end-to-end saving (the whole model with only that rewrite, paired round by round with the
original), on SqueezeNet 1.1 at 1 and 2 intra-op threads.

    python bench/thread_pricing.py [--threads 1 2] [--passes 3] [--repeats 100] [--model-repeats 300]

Each pass prices every candidate three ways (old, window, whole model) at each thread count; the passes
alternate thread counts so machine load spreads over both. Figures are medians over passes; ``spread`` is the
range over passes. Writes bench/results/thread_pricing.json and prints the tables of thread_pricing.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from convopt.auto.context import ContextPricer, Rounds, random_feeds, summarize
from convopt.auto.latency import candidate_model, single_conv_model
from convopt.core.driver import Driver
from convopt.core.plan import Choice, Plan, apply_plan
from convopt.measure.ort import OrtSettings, make_session
from convopt import decompose
from convopt.passes import FitContext, get_pass

sys.path.insert(0, str(Path(__file__).resolve().parent))
from thread_costs import AUTO_1T, RESULTS, SHARED, Busy, quiet_rounds  # noqa: E402


def candidates(d: Driver) -> list[tuple[str, Choice]]:
    """Four rewrites per dense 3×3 layer: factorize at about half its full rank, the smallest bottleneck on
    the input side, bottleneck on the output side at half, depthwise at multiplier 2 (fewer where the grid
    has none); plus the rewrite auto chose for it at 1 thread, when another."""
    out = []
    for name, c in d.convs.items():
        if c.kernel != (3, 3):
            continue
        picks: list[tuple[str, dict[str, int]]] = []
        for p in ("factorize", "bottleneck", "depthwise"):
            grid = [r for r in get_pass(p).rank_grid(c, 8) if get_pass(p).saving_refusal(c, r) is None]
            if p == "factorize" and grid:
                picks.append((p, grid[len(grid) // 2]))
            elif p == "bottleneck":
                ins = [r for r in grid if list(r) == ["rank_in"]]
                outs = [r for r in grid if list(r) == ["rank_out"]]
                picks += [(p, r) for r in (ins[:1] + outs[len(outs) // 2:][:1])]
            elif p == "depthwise":
                picks += [(p, r) for r in grid if r.get("multiplier") == 2]
        picks += [(ch.pass_name, ch.ranks) for lay, ch in AUTO_1T.items() if lay == name and (ch.pass_name, ch.ranks) not in picks]
        with decompose.one_blas_thread():  # factors once; every pricing reuses them
            out += [(name, Choice(p, dict(r), get_pass(p).decompose(c, dict(r), FitContext()))) for p, r in picks]
    return out


def multi_configs(d: Driver, singles: list[tuple[str, Choice]]) -> dict[str, dict[str, Choice]]:
    by_pass: dict[str, dict[str, Choice]] = {}
    for layer, ch in singles:
        by_pass.setdefault(ch.pass_name + (":in" if "rank_in" in ch.ranks else ""), {}).setdefault(layer, ch)
    named = {"auto@1thr": AUTO_1T, "factorize ~half rank": by_pass["factorize"],
             "bottleneck-in smallest": by_pass["bottleneck:in"], "depthwise m2": by_pass["depthwise"]}
    return {f"{k} ({len(v)} layers)": v for k, v in named.items()}


def old_prices(d: Driver, layer: str, choices: list[Choice], settings: OrtSettings, rounds: Rounds,
               repeats: int) -> dict[str, float]:
    """Auto's pricing today (``latency.measure_candidates``): the Conv alone and each candidate alone as
    single-layer models, interleaved; saving = dense median − candidate median."""
    conv = d.convs[layer]
    assert conv.in_shape is not None
    models = [single_conv_model(conv, 1)] + [candidate_model(conv, c, 1) for c in choices]
    t = rounds([make_session(m, settings) for m in models], random_feeds({"x": conv.in_shape}), 5, repeats)
    med = np.median(t, axis=0) * 1e3
    return {c.key: float(med[0] - med[i + 1]) for i, c in enumerate(choices)}


def one_pass(d: Driver, singles: list[tuple[str, Choice]], multis: dict[str, dict[str, Choice]], threads: int,
             repeats: int, model_repeats: int, rounds: Rounds) -> dict[str, object]:
    s = OrtSettings(threads=threads, warmup=5, repeats=repeats)
    layers = list(dict.fromkeys(layer for layer, _ in singles))
    window = ContextPricer(d.base, d.convs, s, repeats=repeats, rounds=rounds)
    model = ContextPricer(d.base, d.convs, s, scope="model", repeats=model_repeats, rounds=rounds)
    rows: dict[str, dict[str, float]] = {}
    cost = {"old": 0.0, "window": 0.0, "model": 0.0}
    for layer in layers:
        chs = [c for lay, c in singles if lay == layer]
        t0 = time.perf_counter()
        old = old_prices(d, layer, chs, s, rounds, repeats)
        t1 = time.perf_counter()
        wp = window.price(layer, chs)
        win = wp.by_key()
        t2 = time.perf_counter()
        e2e = model.price(layer, chs)
        t3 = time.perf_counter()
        cost["old"], cost["window"], cost["model"] = cost["old"] + t1 - t0, cost["window"] + t2 - t1, cost["model"] + t3 - t2
        for p in e2e.prices:
            g = win[p.key].graph
            rows[f"{layer} {p.key}"] = {"old": old[p.key], "window": win[p.key].saved_ms, "window_ci": win[p.key].ci_ms,
                                        "e2e": p.saved_ms, "e2e_ci": p.ci_ms, "model_ms": e2e.dense_ms,
                                        "window_ms": wp.dense_ms, "nodes": g.nodes, "reorders": g.reorders,
                                        "fused": g.fused_activations}
    names = list(multis)
    models = [d.base] + [apply_plan(d.base, Plan(multis[n]), d.convs).model for n in names]
    sess = [make_session(m, s) for m in models]
    _, res = summarize(rounds(sess, random_feeds({"data_0": (1, 3, 224, 224)}), 5, model_repeats))
    multi = {n: {"e2e": r[0], "e2e_ci": r[1]} for n, r in zip(names, res)}
    return {"singles": rows, "multi": multi, "pricing_seconds": cost}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--model-repeats", type=int, default=300)
    ap.add_argument("--quiet", type=float, default=1.0,
                    help="keep only blocks of rounds during which other processes used at most this share of the "
                         "machine (1: keep all)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one timing may wait for quiet blocks")
    ap.add_argument("--out", type=Path, default=RESULTS / "thread_pricing.json")
    ap.add_argument("--report", type=Path, help="print the tables of a results JSON and exit")
    ap.add_argument("--cost", action="store_true", help="only time context pricing of ResNet-50's 3x3 layers")
    args = ap.parse_args(argv)
    if args.cost:
        for t in args.threads:
            print(f"threads {t}: {resnet50_cost(t, args.repeats)}", flush=True)
        return 0
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    d = Driver(onnx.load(str(SHARED / "squeezenet1.1.onnx")))
    singles = candidates(d)
    multis = multi_configs(d, singles)
    res: dict[str, object] = {"candidates": [f"{a} {b.key}" for a, b in singles],
                              "multi": {k: {a: b.key for a, b in v.items()} for k, v in multis.items()},
                              "args": {k: str(v) for k, v in vars(args).items()}, "passes": []}
    busy = Busy()
    gate: list[float] = []
    waiting: list[float] = []
    level = [1.0]  # the gate of the current thread count (one thread: preemption only stretches a few runs)

    def rounds(sessions: list, feeds: dict[str, np.ndarray], warmup: int, repeats: int) -> np.ndarray:
        t, stats = quiet_rounds(sessions, feeds, repeats, level[0], args.timeout, warmup=warmup)
        gate.append(stats["kept_share"])
        waiting.append(stats["waiting"])
        return t

    for p in range(args.passes):
        for t in (args.threads if p % 2 == 0 else args.threads[::-1]):
            busy.start()
            gate.clear()
            waiting.clear()
            level[0] = args.quiet if t > 1 else 1.0
            row = one_pass(d, singles, multis, t, args.repeats, args.model_repeats, rounds)
            row.update(threads=t, foreign_busy=busy.stop(), kept_share=float(np.mean(gate)),
                       waiting=float(np.mean(waiting)))
            res["passes"].append(row)  # type: ignore[union-attr]
            print(f"pass {p + 1} threads {t}: foreign busy {row['foreign_busy']:.2f}, pricing s {row['pricing_seconds']}",
                  flush=True)
            args.out.write_text(json.dumps(res, indent=1))
    print(report(res))
    print(f"wrote {args.out}")
    return 0



# ------------------------------------------------------------------------------------------------ report


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def medians(res: dict, threads: int, part: str) -> dict[str, dict[str, float]]:
    """Per candidate (or multi config): each field's median over the passes at ``threads``, and its range."""
    rows = [p[part] for p in res["passes"] if p["threads"] == threads]
    out: dict[str, dict[str, float]] = {}
    for k in rows[0]:
        out[k] = {}
        for f in rows[0][k]:
            v = [r[k][f] for r in rows]
            out[k][f], out[k][f + "_range"] = float(np.median(v)), float(max(v) - min(v))
    return out


def report(res: dict) -> str:
    lines = []
    ths = sorted({p["threads"] for p in res["passes"]})
    rows = {t: medians(res, t, "singles") for t in ths}
    lines += ["| threads | pricing | Spearman ρ vs end to end | mean abs error (ms) | mean error (ms) | "
              "sign agrees (faster or not) |", "|---|---|---|---|---|---|"]
    for t in ths:
        e2e = [r["e2e"] for r in rows[t].values()]
        for f in ("old", "window"):
            pred = [r[f] for r in rows[t].values()]
            agree = np.mean([(p > 0) == (q > 0) for p, q in zip(pred, e2e)])
            lines.append(f"| {t} | {f} | {spearman(pred, e2e):.2f} | {np.mean(np.abs(np.subtract(pred, e2e))):.3f} | "
                         f"{np.mean(np.subtract(pred, e2e)):+.3f} | {agree:.0%} |")
    lines += ["", "| candidate | " + " | ".join(f"{f} {t}t" for t in ths for f in ("old", "window", "e2e")) + " |",
              "|---|" + "---|" * 3 * len(ths)]
    for k in rows[ths[0]]:
        cells = []
        for t in ths:
            r = rows[t][k]
            cells += [f"{r['old']:+.3f}", f"{r['window']:+.3f}", f"{r['e2e']:+.3f} ±{r['e2e_ci']:.3f}"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if len(ths) > 1:
        lo, hi = ths[0], ths[-1]
        flips = [k for k in rows[lo] if rows[lo][k]["e2e"] > 0 >= rows[hi][k]["e2e"]]
        halves = [k for k in rows[lo] if rows[lo][k]["e2e"] > 0 and rows[hi][k]["e2e"] < 0.5 * rows[lo][k]["e2e"]]
        lines += ["", f"faster end to end at {lo} thread(s), not at {hi}: {len(flips)} of {len(rows[lo])}: "
                  + (", ".join(flips) or "none"),
                  f"keep less than half their {lo}-thread saving at {hi}: {len(halves)}: " + (", ".join(halves) or "none")]
    lines += ["", "| multi-layer | " + " | ".join(f"old {t}t | window {t}t | e2e {t}t" for t in ths) + " |",
              "|---|" + "---|" * 3 * len(ths)]
    for name, cfg in res["multi"].items():
        cells = []
        for t in ths:
            keys = [f"{layer} {key}" for layer, key in cfg.items()]
            known = [k for k in keys if k in rows[t]]
            m = medians(res, t, "multi")[name]
            sums = [sum(rows[t][k][f] for k in known) if len(known) == len(keys) else float("nan") for f in ("old", "window")]
            cells += [f"{sums[0]:+.3f}", f"{sums[1]:+.3f}", f"{m['e2e']:+.3f} ±{m['e2e_ci']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| threads | seconds per pass: old | window | whole model | foreign CPU busy (passes) | our threads "
              "waiting for a CPU | rounds kept | original ms |", "|---|---|---|---|---|---|---|---|"]
    for t in ths:
        ps = [p for p in res["passes"] if p["threads"] == t]
        sec = {f: np.median([p["pricing_seconds"][f] for p in ps]) for f in ("old", "window", "model")}
        model_ms = np.median([r["model_ms"] for p in ps for r in p["singles"].values()])
        busy = ", ".join(f"{p['foreign_busy']:.2f}" for p in ps)
        kept = ", ".join(f"{p.get('kept_share', 1.0):.0%}" for p in ps)
        wait = ", ".join(f"{p['waiting']:.0%}" if "waiting" in p else "n/a" for p in ps)
        lines.append(f"| {t} | {sec['old']:.1f} | {sec['window']:.1f} | {sec['model']:.1f} | {busy} | {wait} | {kept} | "
                     f"{model_ms:.2f} |")
    return "\n".join(lines)



def resnet50_cost(threads: int, repeats: int, per_layer: int = 5) -> dict[str, float]:
    """What context pricing costs on ResNet-50 (224², random weights, BN folded): every dense 3×3 conv with up
    to ``per_layer`` candidates from its passes' grids, priced with one shared cache."""
    from convopt.models.registry import build

    t0 = time.perf_counter()
    d = Driver(build("resnet50", seed=0))
    layers = [c for c in d.convs.values() if c.kernel == (3, 3) and c.group == 1]
    pricer = ContextPricer(d.base, d.convs, OrtSettings(threads=threads), repeats=repeats)
    t1 = time.perf_counter()
    n, sizes, keys, fits, fresh = 0, [], set(), 0.0, 0
    for c in layers:
        grid = [(p, r) for p in ("factorize", "bottleneck", "depthwise") for r in get_pass(p).rank_grid(c, 8)
                if get_pass(p).saving_refusal(c, r) is None]
        f0 = time.perf_counter()
        with decompose.one_blas_thread():
            chs = [Choice(p, r, get_pass(p).decompose(c, r, FitContext())) for p, r in grid[::max(1, len(grid) // per_layer)][:per_layer]]
        fits += time.perf_counter() - f0
        lp = pricer.price(c.name, chs)
        fresh += not all(p.cached for p in lp.prices)
        n += len(chs)
        sizes.append(lp.nodes)
        keys.add(pricer.window(c.name)[0].key)
    t2 = time.perf_counter()
    return {"layers": len(layers), "candidates": n, "distinct_windows": len(keys), "layers_timed": fresh,
            "window_nodes_median": float(np.median(sizes)), "setup_s": t1 - t0, "factors_s": fits,
            "pricing_s": t2 - t1 - fits}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
