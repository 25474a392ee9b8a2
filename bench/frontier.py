"""Benchmark: the whole speed/accuracy frontier of auto mode on one model, step by step.

Auto mode builds a greedy sequence of configurations (more layers, cheaper forms) and normally bisects it on
the calibration data. Here every step is built (with its sequential refits) and measured on *both* halves:
calibration (what auto decides on) and held-out (what it reports), then all steps are timed interleaved with
the original in one run. It shows how far the calibration estimate of an accuracy drop can be trusted on
this many samples, and what speed the accuracy budget leaves.

    python bench/frontier.py squeezenet [--threads 1] [--refit-samples 128] [--margin 0.25]

Uses the setups of run_auto.py; writes bench/results/frontier_<model>.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import onnx

import run_auto
from convopt.auto import auto_optimize
from convopt.measure.evaluator import Evaluator, Measurement
from convopt.measure.latency import measure_latency
from convopt.measure.ort import OrtSettings, batch_feeds, latency_batch, make_session


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(run_auto.SETUPS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--refit-samples", type=int, default=128)
    ap.add_argument("--margin", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args(argv)
    cfg = run_auto.SETUPS[args.model](False)
    model, cal, held, budget = cfg["model"], cfg["calib"], cfg["eval"], cfg["budget"]
    settings = OrtSettings(threads=args.threads, **cfg.get("settings", {}))
    held_ev = Evaluator(model, held, settings, measure_latency=False)
    steps: list[tuple[int, onnx.ModelProto, Measurement, Measurement]] = []

    def on_step(k: int, m: onnx.ModelProto, calib_meas: Measurement) -> None:
        steps.append((k, m, calib_meas, held_ev.measure(m, f"step {k}")))
        print(f"step {k}: calibration drop {calib_meas.accuracy.get('top1_drop')}, held-out "
              f"{steps[-1][3].accuracy.get('top1_drop')}", flush=True)

    t0 = time.perf_counter()
    res = auto_optimize(model, calib=cal, evaluator=Evaluator(model, held, settings), budget=budget,
                        settings=settings, refit_samples=args.refit_samples, calib_margin=args.margin,
                        latency_cache=run_auto.RESULTS / "latency_cache.json", every_step=True, on_step=on_step)
    seconds = time.perf_counter() - t0
    sess = make_session(model, settings)
    feeds = batch_feeds(sess, held, 0, latency_batch(sess, settings))
    stats = measure_latency([model] + [s[1] for s in steps], feeds,
                            OrtSettings(threads=args.threads, warmup=5, repeats=args.repeats))
    seq = res.report.extra["auto"]["sequence"]
    rows = []
    for (k, _, cm, hm), st in zip(steps, stats[1:]):
        rows.append({"step": k, "layers": len(seq[k]), "config": seq[k],
                     "calibration": {key: cm.accuracy.get(key) for key in ("top1_drop", "top1_drop_ci95", "rel_l2_error")},
                     "heldout": {key: hm.accuracy.get(key) for key in ("top1_drop", "top1_drop_ci95", "rel_l2_error")},
                     "latency_ratio": st.median_ms / stats[0].median_ms})
    chosen = res.report.extra["auto"]["checks"]
    out = {"model": args.model, "threads": args.threads, "refit_samples": args.refit_samples, "margin": args.margin,
           "budget": vars(budget), "calibration_samples": cal.n, "heldout_samples": held.n,
           "original_ms": stats[0].median_ms, "optimizer_s": seconds, "steps": rows, "auto_checks": chosen}
    run_auto.RESULTS.mkdir(parents=True, exist_ok=True)
    (run_auto.RESULTS / f"frontier_{args.model}.json").write_text(json.dumps(out, indent=1, default=float))

    def cell(d: dict, key: str = "top1_drop") -> str:
        v, ci = d.get(key), d.get("top1_drop_ci95")
        if v is None:
            return f"rel {d.get('rel_l2_error', float('nan')):.3f}"
        return f"{-v:+.1f} ±{ci:.1f}" if ci is not None else f"{-v:+.1f}"

    print(f"| step | layers | calibration Δ top-1 | held-out Δ top-1 | output rel. error (held-out) | latency ratio ({args.threads} thr) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['layers']} | {cell(r['calibration'])} | {cell(r['heldout'])} | "
              f"{r['heldout']['rel_l2_error']:.3f} | {r['latency_ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
