"""Do convopt's accuracy claims survive fresh data? SqueezeNet 1.1 in auto mode, given N of the 1000 labelled
ImageNet-sample images; the top-1 drop of the model it writes is then measured on the 1000 − N images it never
saw, with its 95 % interval, next to the claim of its report (budget.certified, the bound on the select data,
the report-split figure and interval).

    python bench/honesty.py                      # N = 200 and 600, budgets 1 and 2 points, draws 0 and 1
    python bench/honesty.py --given 600 --budget 2 --draws 1

Writes bench/results/honesty.json and bench/results/honesty.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from convopt import api
from convopt.core.budget import Budget
from convopt.io import load_model
from convopt.measure import stats
from convopt.measure.data import load_eval_data
from convopt.measure.ort import OrtSettings, make_session, run_model
from convopt.options import DataOptions, OptimizeOptions

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "squeezenet1.1.onnx"
IMAGES = SHARED / "data" / "imagenet-sample"
RESULTS = Path(__file__).resolve().parent / "results"


def top1(model, x: np.ndarray, settings: OrtSettings) -> np.ndarray:
    from convopt.measure.data import EvalData

    out = run_model(make_session(model, settings), EvalData({"data_0": x}, None, "fresh"), settings)[0]
    return out.reshape(out.shape[0], -1).argmax(1)


def one(given: int, budget: float, draw: int, x: np.ndarray, labels: np.ndarray, settings: OrtSettings,
        tmp: Path) -> dict:
    perm = np.random.default_rng(1000 + draw).permutation(len(labels))
    g, fresh = np.sort(perm[:given]), np.sort(perm[given:])
    npz = tmp / f"given_{given}_{draw}.npz"
    np.savez(npz, data_0=x[g], labels=labels[g])
    out = tmp / "out.onnx"
    opts = OptimizeOptions(model=MODEL, output=out, data=DataOptions(data=npz), budget=Budget(max_accuracy_drop=budget),
                           ort=settings, seed=draw)
    t0 = time.perf_counter()
    res = api.run(opts, say=lambda m: print("   ", m, flush=True))
    seconds = time.perf_counter() - t0
    rep = res.report
    before, after = top1(load_model(MODEL), x[fresh], settings), top1(load_model(out), x[fresh], settings)
    right_b, right_a = before == labels[fresh], after == labels[fresh]
    n10, n01 = int(np.sum(right_b & ~right_a)), int(np.sum(~right_b & right_a))
    lo, hi = stats.paired_drop_interval(n10, n01, len(fresh), 0.95)
    fa = rep.final.accuracy
    return {
        "given": given, "budget": budget, "draw": draw, "seconds": round(seconds, 1),
        "kept_layers": sum(len(p.rewritten) for p in rep.passes if p.name == "auto"),
        "certified": rep.budget.certified, "bound": rep.budget.bound, "message": rep.budget.message,
        "decision_samples": rep.budget.decision_samples, "report_samples": rep.budget.report_samples,
        "report_drop": fa.top1_drop, "report_interval": fa.top1_drop_interval, "speedup": rep.final.speedup,
        "fresh_samples": len(fresh), "fresh_drop": 100.0 * (n10 - n01) / len(fresh),
        "fresh_interval": [100.0 * lo, 100.0 * hi], "fresh_flips": [n10, n01],
    }


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"# Accuracy claims on fresh data (SqueezeNet 1.1, auto, 1 thread)\n\n`{command}`\n",
             "| given | budget | draw | decide/report | kept layers | certified (bound) | report drop [95 %] | "
             "fresh drop [95 %] (n) | speedup | time |", "|" + "---|" * 10]
    for r in rows:
        bound = r["bound"] or {}
        b = bound.get("max_accuracy_drop")
        ri, fi = r["report_interval"] or [None, None], r["fresh_interval"]
        lines.append(
            f"| {r['given']} | {r['budget']:g} | {r['draw']} | {r['decision_samples']}/{r['report_samples']} | "
            f"{r['kept_layers']} | {'yes' if r['certified'] else 'no'} ({'–' if b is None else f'{b:.2f}'}) | "
            f"{r['report_drop']:+.2f} [{ri[0]:+.2f}, {ri[1]:+.2f}] | {r['fresh_drop']:+.2f} [{fi[0]:+.2f}, "
            f"{fi[1]:+.2f}] ({r['fresh_samples']}) | {r['speedup']:.2f}× | {r['seconds']:.0f} s |")
    notes = [r["message"] for r in rows if r["message"]]
    if notes:
        lines += ["", "Messages convopt printed:", ""] + [f"- {m}" for m in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--given", type=int, nargs="*", default=[200, 600])
    ap.add_argument("--budget", type=float, nargs="*", default=[1.0, 2.0])
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    settings = OrtSettings(threads=a.threads, repeats=30)
    model = load_model(MODEL)
    d = load_eval_data(model, IMAGES, preprocess="caffe", labels=IMAGES / "labels.csv")
    x, labels = d.inputs["data_0"], d.labels
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for given in a.given:
            for budget in a.budget:
                for draw in range(a.draws):
                    print(f"given {given}, budget {budget}, draw {draw}", flush=True)
                    rows.append(one(given, budget, draw, x, labels, settings, Path(tmp)))
                    print(json.dumps(rows[-1]), flush=True)
    command = "python bench/honesty.py " + " ".join(
        [f"--given {' '.join(map(str, a.given))}", f"--budget {' '.join(f'{b:g}' for b in a.budget)}",
         f"--draws {a.draws}", f"--threads {a.threads}"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "honesty.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    (RESULTS / "honesty.md").write_text(markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
