"""Auto mode on SqueezeNet 1.1 over 2000 labelled samples, ``--executor local`` against ``--executor ray``
(a local Ray instance of 2 workers on this machine), ``--threads 1``: wall time per phase and per shard, and
the scaling a larger cluster would bring, projected from the per-shard timings.

    python bench/ray_scale.py [--budget 2.0] [--out bench/results/ray_scale.json] [--md bench/results/ray_scale.md]

The 2000 samples are the 1000 ImageNet-sample images (``--preprocess caffe``, labels.csv) and their
horizontal flips with the same labels, written as one .npz in a temporary folder. Each run is
``convopt optimize`` through the Python API (``convopt.api.run``); the two share one layer-latency cache (the
local run times the candidate layers, the Ray run reads the same timings), so that both build the same
candidates and the same greedy sequence: only then can their decisions be compared. The executor of each run
is kept (by wrapping ``convopt.api.open_executor``) to read
its log: every comparison's wall time on this machine and every shard's seconds on its worker.

Projection to W workers (stated again in the Markdown): a comparison on W workers takes its driver overhead
(wall time minus the busiest worker's seconds, measured in the Ray run), one worker's session set-up (each
worker makes its own sessions) and its shard seconds spread evenly over W workers (shards of at most n/W
samples, perfect balance: a lower bound); everything that is
not a comparison (candidate latency timing, the fit-data costs and refits, the driver's latency checks,
loading) stays on this machine and is carried over as measured (Amdahl).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import onnx

import convopt.api as api
from convopt.core.budget import Budget
from convopt.measure.data import load_eval_data
from convopt.measure.executor import Executor, ExecutorInfo, ExecutorOptions
from convopt.measure.ort import OrtSettings
from convopt.options import DataOptions, OptimizeOptions

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "squeezenet1.1.onnx"
IMAGES = SHARED / "data" / "imagenet-sample"
WORKERS = (1, 2, 4, 8, 16, 32, 64)


def build_npz(folder: Path, images: int) -> Path:
    """The first ``images`` images (all 1000 by default) and their horizontal flips (labels unchanged) as
    one .npz: 2000 samples."""
    model = onnx.load(MODEL)
    d = load_eval_data(model, IMAGES, preprocess="caffe", labels=IMAGES / "labels.csv", limit=images)
    (name, x), = d.inputs.items()
    assert d.labels is not None
    both = np.concatenate([x, x[..., ::-1]])
    out = folder / "squeezenet-2000.npz"
    np.savez(out, **{name: both, "labels": np.concatenate([d.labels, d.labels])})
    return out


class Clock:
    """The run's progress lines with the time each was said (seconds from the start)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.lines: list[tuple[float, str]] = []

    def __call__(self, msg: str) -> None:
        t = time.perf_counter() - self.t0
        self.lines.append((t, msg))
        print(f"  {t:7.1f}s {msg}", file=sys.stderr, flush=True)

    def first(self, prefix: str) -> float | None:
        return next((t for t, m in self.lines if m.startswith(prefix)), None)


def run(kind: str, npz: Path, tmp: Path, budget: float) -> dict[str, Any]:
    made: list[Executor] = []
    opener = api.open_executor

    def keep(*a: Any, **k: Any) -> Executor:
        made.append(opener(*a, **k))
        return made[-1]

    api.open_executor = keep  # type: ignore[assignment]
    clock = Clock()
    opts = OptimizeOptions(model=MODEL, output=tmp / f"{kind}.onnx", report=tmp / f"{kind}.json",
                           data=DataOptions(data=npz), budget=Budget(max_accuracy_drop=budget),
                           ort=OrtSettings(threads=1), executor=ExecutorOptions(kind),  # type: ignore[arg-type]
                           latency_cache=tmp / "latency.json")
    try:
        result = api.run(opts, say=clock, warn=lambda m: clock(f"warning: {m}"))
    finally:
        api.open_executor = opener  # type: ignore[assignment]
    wall = time.perf_counter() - clock.t0
    report = result.report.to_dict()
    return {"kind": kind, "wall_s": wall, "report": report, "info": made[0].info(), "clock": clock,
            "model_bytes": (tmp / f"{kind}.onnx").read_bytes()}


def phases(r: dict[str, Any]) -> dict[str, float]:
    """Wall seconds per phase: set-up (Ray start, loading and splitting the data, the original's reference
    runs), auto's own phases (its report's timings), the report measurement, and the total."""
    clock: Clock = r["clock"]
    auto = r["report"]["extra"]["auto"]["timings_s"]
    start = clock.first("auto: ") or 0.0
    report_at = clock.first("report: ") or r["wall_s"]
    out = {"set-up": start}
    out.update({f"auto {k}": float(v) for k, v in auto.items()})
    out["report"] = (clock.first("auto: done") or r["wall_s"]) - report_at
    out["total"] = r["wall_s"]
    return out


def shard_table(info: ExecutorInfo) -> list[dict[str, Any]]:
    """Per data role: shards, comparisons, seconds per shard (median, max), per sample, and the driver's
    overhead per comparison (wall minus the busiest worker)."""
    rows = []
    for role in sorted({c.role for c in info.log}):
        logs = [c for c in info.log if c.role == role]
        shard_s = [r.seconds for c in logs for r in c.runs]
        samples = sum(r.stop - r.start for c in logs for r in c.runs)
        over = [c.seconds - max(_busy(c).values()) for c in logs]
        setup = [r.setup for c in logs for r in c.runs]
        rows.append({"role": role, "shards": len(logs[0].runs), "comparisons": len(logs),
                     "setup_s": sum(setup),
                     "samples": logs[0].runs[-1].stop, "median_shard_s": median(shard_s),
                     "max_shard_s": max(shard_s), "per_sample_ms": 1000 * sum(shard_s) / samples,
                     "wall_s": sum(c.seconds for c in logs), "shard_s": sum(shard_s),
                     "median_overhead_s": median(over)})
    return rows


def _busy(c: Any) -> dict[str, float]:
    """Seconds each worker spent on a comparison (session set-up and shards)."""
    busy: dict[str, float] = {}
    for r in c.runs:
        busy[r.worker] = busy.get(r.worker, 0.0) + r.seconds + r.setup
    return busy


def _setup(c: Any) -> float:
    """The longest session set-up of a comparison: every worker makes its own sessions, whatever W."""
    return max((r.setup for r in c.runs), default=0.0)


def project(ray_run: dict[str, Any]) -> list[dict[str, Any]]:
    """Projected wall time at W workers (see the module docstring): per comparison, the driver's overhead +
    one worker's session set-up + the shard seconds spread over W workers; the rest as measured."""
    info: ExecutorInfo = ray_run["info"]
    compare_wall = sum(c.seconds for c in info.log)
    rest = ray_run["wall_s"] - compare_wall
    out = []
    for w in WORKERS:
        ev = sum(max(0.0, c.seconds - max(_busy(c).values())) + _setup(c) + sum(r.seconds for r in c.runs) / w
                 for c in info.log)
        out.append({"workers": w, "evaluation_s": ev, "rest_s": rest, "total_s": ev + rest})
    return out


def markdown(res: dict[str, Any], args: argparse.Namespace) -> str:
    lo, ra = res["local"], res["ray"]
    lines = [
        f"# Ray executor: auto mode on SqueezeNet 1.1, {2 * args.images} samples, local against Ray (2 workers)",
        "",
        f"Command: `python bench/ray_scale.py --budget {args.budget} --images {args.images}` ({res['date']}, {res['machine']}, "
        f"onnxruntime {res['onnxruntime']}, ray {res['ray_version']}).", "",
        f"{2 * args.images} labelled samples: the {args.images} ImageNet-sample images (`--preprocess caffe`) and their horizontal "
        f"flips; auto mode splits them into {res['roles']}. `--threads 1`, `--max-accuracy-drop "
        f"{args.budget}`. Ray: a local instance started by convopt on this 2-core machine, 2 workers of 1 CPU; "
        "latency is timed on this machine in both runs, never on workers.", "",
        f"Same answers: output models byte-identical: **{res['same_bytes']}**; every accuracy figure of the "
        f"report identical: **{res['same_accuracy']}** (decisions that rest on measured latency can differ "
        "between any two runs; see the notes).", "",
        "## Wall time per phase (s)", "",
        "| phase | local | ray (2 workers) |", "|---|---|---|",
    ]
    for k in lo["phases"]:
        lines.append(f"| {k} | {lo['phases'][k]:.1f} | {ra['phases'].get(k, float('nan')):.1f} |")
    lines += ["", "## Shards", "",
              "Seconds per shard: running and comparing it on its worker (sessions made before, counted apart as "
              "set-up). Overhead: a comparison's wall time here minus its busiest worker's seconds (sending the "
              "candidate, scheduling, merging; locally, the candidate's run outside the shards is nil).", "",
              "| run | role | samples | shards | comparisons | median s/shard | max s/shard | ms/sample | "
              "set-up s (summed) | wall s (all comparisons) | shard s (summed) | overhead s/comparison |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in ("local", "ray"):
        for r in res[run]["shards"]:
            lines.append(f"| {run} | {r['role']} | {r['samples']} | {r['shards']} | {r['comparisons']} | "
                         f"{r['median_shard_s']:.2f} | {r['max_shard_s']:.2f} | {r['per_sample_ms']:.2f} | "
                         f"{r['setup_s']:.1f} | {r['wall_s']:.1f} | {r['shard_s']:.1f} | "
                         f"{r['median_overhead_s']:.3f} |")
    lines += ["", "## Projected on a larger cluster", "",
              "From the Ray run: each comparison = its measured driver overhead (wall minus the busiest worker) "
              "+ one worker's session set-up (each worker makes its own) + its summed shard seconds / W "
              "(shards of at most n/W samples, perfectly balanced: a lower bound); the rest of the run "
              "(candidate latency timing, fit-data costs and refits, latency checks, loading) stays on this "
              "machine as measured.", "",
              "| workers | evaluation s | rest s (this machine) | total s | vs local |", "|---|---|---|---|---|"]
    for p in res["projection"]:
        lines.append(f"| {p['workers']} | {p['evaluation_s']:.1f} | {p['rest_s']:.1f} | {p['total_s']:.1f} | "
                     f"{lo['phases']['total'] / p['total_s']:.2f}× |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def _load(avg: tuple[float, ...]) -> str:
    return "/".join(f"{v:.1f}" for v in avg)


def _accuracies(d: Any) -> list[Any]:
    if isinstance(d, dict):
        return [v for k, v in d.items() if k == "accuracy"] + [a for k, v in d.items() if k != "accuracy"
                                                               for a in _accuracies(v)]
    if isinstance(d, list):
        return [a for v in d for a in _accuracies(v)]
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=2.0, help="--max-accuracy-drop (points)")
    ap.add_argument("--images", type=int, default=1000, help="images to take (a quick check: 40)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ray_scale.json")
    ap.add_argument("--md", type=Path, default=Path(__file__).parent / "results" / "ray_scale.md")
    args = ap.parse_args()
    import onnxruntime
    import ray

    import os

    res: dict[str, Any] = {"load_before": os.getloadavg(), "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, 2 cores",
                           "onnxruntime": onnxruntime.__version__, "ray_version": ray.__version__, "notes": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        npz = build_npz(tmp, args.images)
        res["build_npz_s"] = time.perf_counter() - t
        runs = {kind: run(kind, npz, tmp, args.budget) for kind in ("local", "ray")}
    for kind, r in runs.items():
        res[kind] = {"phases": phases(r), "shards": shard_table(r["info"]), "executor": r["info"].to_dict(),
                     "speedup": r["report"]["final"]["latency"]["speedup"] if r["report"]["final"] else None,
                     "checks": r["report"]["extra"]["auto"].get("checks")}
    res["roles"] = runs["local"]["report"]["settings"]["data"]["how"]
    res["same_bytes"] = runs["local"]["model_bytes"] == runs["ray"]["model_bytes"]
    strip = lambda r: _accuracies({k: v for k, v in r["report"].items() if k != "settings"})  # noqa: E731
    res["same_accuracy"] = strip(runs["local"]) == strip(runs["ray"])
    res["projection"] = project(runs["ray"])
    res["load_after"] = os.getloadavg()
    res["notes"] += [
        "the runs share one layer-latency cache: the Ray run's 'auto latency' phase reads the local run's "
        "timings (without it, each run's own timings give other candidates and another greedy sequence).",
        "end-to-end speedups are timed in each run: the largest certified step is kept only if it measures "
        "faster, so the kept step can still differ between two runs of either executor.",
        f"load average (1, 5, 15 min) before {_load(res['load_before'])}, after {_load(res['load_after'])}: "
        "the machine is shared, so the figures carry other processes' load.",
        f"building the 2000-sample .npz took {res['build_npz_s']:.0f} s (not in the table).",
        "auto's fit-data costs run on an Evaluator that convopt/auto creates itself, so they stay in process "
        "in both runs (the 'auto costs' phase).",
    ]
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    args.md.write_text(markdown(res, args))
    print(args.md.read_text())


if __name__ == "__main__":
    main()
