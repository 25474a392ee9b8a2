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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

import convopt.api as api
import convopt.measure.evaluator as evaluator_module
from convopt.core.budget import Budget
from convopt.measure.data import load_eval_data
from convopt.measure.executor import CompareLog, Executor, ExecutorOptions
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
    """One `convopt optimize` run; every executor it made is kept (the run's, and the in-process one that
    auto mode's fit-data cost evaluator makes for itself) to read their logs."""
    made: list[Executor] = []
    opener, local = api.open_executor, evaluator_module.LocalExecutor

    def keep_opened(*a: Any, **k: Any) -> Executor:
        made.append(opener(*a, **k))
        return made[-1]

    def keep_local(*a: Any, **k: Any) -> Executor:
        made.append(local(*a, **k))
        return made[-1]

    api.open_executor = keep_opened  # type: ignore[assignment]
    evaluator_module.LocalExecutor = keep_local  # type: ignore[assignment,misc]
    clock = Clock()
    opts = OptimizeOptions(model=MODEL, output=tmp / f"{kind}.onnx", report=tmp / f"{kind}.json",
                           data=DataOptions(data=npz), budget=Budget(max_accuracy_drop=budget),
                           ort=OrtSettings(threads=1), executor=ExecutorOptions(kind),  # type: ignore[arg-type]
                           latency_cache=tmp / "latency.json")
    try:
        result = api.run(opts, say=clock, warn=lambda m: clock(f"warning: {m}"))
    finally:
        api.open_executor, evaluator_module.LocalExecutor = opener, local  # type: ignore[assignment,misc]
    wall = time.perf_counter() - clock.t0
    report = result.report.to_dict()
    logs = tuple(c for ex in made for c in ex.info().log)
    return {"kind": kind, "wall_s": wall, "report": report, "info": made[0].info(), "logs": logs,
            "clock": clock, "model_bytes": (tmp / f"{kind}.onnx").read_bytes()}


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


def shard_table(log: Sequence[CompareLog]) -> list[dict[str, Any]]:
    """Per data role: shards, comparisons, seconds per shard (median, max), per sample, and the driver's
    overhead per comparison (wall minus the busiest worker)."""
    rows = []
    for role in sorted({c.role for c in log}):
        logs = [c for c in log if c.role == role]
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


def _fixed(ray_run: dict[str, Any]) -> float:
    """The median cost of a Ray comparison that more workers do not shrink: driver overhead + set-up."""
    return median([max(0.0, c.seconds - max(_busy(c).values())) + _setup(c) for c in ray_run["info"].log])


def project(res: dict[str, Any], roles: Sequence[str]) -> dict[str, Any]:
    """Projected wall time at W workers when the comparisons of ``roles`` are distributed (Amdahl): the rest
    of the run, the same work in both runs, taken from the less disturbed of the two (other users' load
    varies), plus each such comparison at W workers: the Ray run's cost that more workers do not shrink
    (driver overhead + one worker's session set-up) + its in-process shard seconds / W (each worker with a
    core of its own, shards of at most n/W samples, perfect balance: a lower bound)."""
    lo = {r["role"]: r for r in res["local"]["shards"]}
    ra = {r["role"]: r for r in res["ray"]["shards"]}
    rest = min(res["local"]["phases"]["total"] - sum(lo[r]["wall_s"] for r in roles),
               res["ray"]["phases"]["total"] - sum(ra[r]["wall_s"] for r in roles))
    in_process = rest + sum(lo[r]["wall_s"] for r in roles)
    rows = []
    for w in WORKERS:
        ev = sum(lo[r]["comparisons"] * res["fixed_s"] + lo[r]["shard_s"] / w for r in roles)
        rows.append({"workers": w, "evaluation_s": ev, "total_s": rest + ev, "speedup": in_process / (rest + ev)})
    return {"roles": list(roles), "rest_s": rest, "in_process_s": in_process, "rows": rows}


def parallel_check() -> dict[str, float]:
    """ms per SqueezeNet sample at 1 thread: one process alone, and each of two at once (this machine's
    parallel efficiency at the time of the benchmark, other users' load included)."""
    code = ("import time, numpy as np, onnx; from convopt.measure.ort import OrtSettings, make_session; "
            f"s = make_session(onnx.load('{MODEL}'), OrtSettings(threads=1)); "
            "x = np.zeros((1, 3, 224, 224), np.float32); [s.run(None, {'data_0': x}) for _ in range(5)]; "
            "t = time.perf_counter(); [s.run(None, {'data_0': x}) for _ in range(150)]; "
            "print((time.perf_counter() - t) / 150 * 1000)")
    run_one = lambda: subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)  # noqa: E731
    alone = float(run_one().communicate()[0])
    pair = [run_one(), run_one()]
    both = [float(p.communicate()[0]) for p in pair]
    return {"alone_ms": alone, "two_at_once_ms": sum(both) / 2}


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
    pb, pa = res["parallel_before"], res["parallel_after"]
    lines += ["", "## One comparison on the select data, by workers", "",
              "What the executor distributes: one candidate checked on the select data. In process: its "
              "measured wall time. On W workers: the Ray run's cost that more workers do not shrink "
              f"({res['fixed_s']:.2f} s, median) + the in-process shard seconds / W.", "",
              "| workers | s per comparison | speedup |", "|---|---|---|"]
    lines += _per_comparison(res)
    wired, fit = res["projection"]["as wired"], res["projection"]["with fit costs"]
    lines += ["", "## Projected on a larger cluster", "",
              "Amdahl: the comparisons that are distributed, each at W workers as in the table above, plus "
              "the rest of the run, which stays on this machine (candidate latency timing, the fit-data costs "
              "and refits unless distributed, the latency checks of every step, loading). Both runs do the "
              "same rest; it is taken from the less disturbed of the two (other users' load varies): "
              f"{wired['rest_s']:.0f} s as wired, {fit['rest_s']:.0f} s with fit costs, against "
              f"{wired['in_process_s']:.0f} s and {fit['in_process_s']:.0f} s for the whole run in process. "
              "*As wired*: the select and report comparisons (what `--executor ray` distributes today). *With "
              "fit costs*: also auto mode's per-candidate costs on the fit data, which `convopt/auto/search.py` "
              "evaluates on an in-process Evaluator of its own (passing it the run's executor would distribute "
              "them too).", "",
              "| workers | as wired: total s | speedup | with fit costs: total s | speedup |",
              "|---|---|---|---|---|"]
    for p, q in zip(wired["rows"], fit["rows"]):
        lines.append(f"| {p['workers']} | {p['total_s']:.1f} | {p['speedup']:.2f}× | {q['total_s']:.1f} | "
                     f"{q['speedup']:.2f}× |")
    lines += ["", f"Measured with 2 workers on this machine: {ra['phases']['total']:.1f} s (projected: "
              f"{wired['rows'][1]['total_s']:.1f} s). The local run took {lo['phases']['total']:.1f} s; its "
              f"'auto costs' phase, the same in-process work in both runs, took {lo['phases']['auto costs']:.0f} s "
              f"against {ra['phases']['auto costs']:.0f} s in the Ray run. This machine's parallel "
              f"efficiency at the time: one SqueezeNet process alone {pb['alone_ms']:.1f} ms/sample, each of "
              f"two at once {pb['two_at_once_ms']:.1f} (before the runs; after: {pa['alone_ms']:.1f} and "
              f"{pa['two_at_once_ms']:.1f}): the two workers share the 2 cores with the driver and with other "
              "users' processes, so the 2-worker measurement is below what 2 dedicated workers give."]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def _per_comparison(res: dict[str, Any]) -> list[str]:
    """Rows: a select comparison in process, projected on W workers, and as measured with 2."""
    local = {r["role"]: r for r in res["local"]["shards"]}["select"]
    remote = {r["role"]: r for r in res["ray"]["shards"]}["select"]
    wall, shards = local["wall_s"] / local["comparisons"], local["shard_s"] / local["comparisons"]
    rows = [f"| in process | {wall:.2f} | 1.00× |"]
    for w in WORKERS:
        t = res["fixed_s"] + shards / w
        rows.append(f"| {w} (projected) | {t:.2f} | {wall / t:.2f}× |")
    measured = remote["wall_s"] / remote["comparisons"]
    rows.append(f"| 2 (measured, this machine) | {measured:.2f} | {wall / measured:.2f}× |")
    return rows


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
    ap.add_argument("--render", action="store_true", help="only rewrite --md from the figures in --out")
    args = ap.parse_args()
    if args.render:
        args.md.write_text(markdown(json.loads(args.out.read_text()), args))
        print(args.md.read_text())
        return
    import onnxruntime
    import ray

    import os

    res: dict[str, Any] = {"load_before": os.getloadavg(), "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, 2 cores",
                           "onnxruntime": onnxruntime.__version__, "ray_version": ray.__version__, "notes": []}
    res["parallel_before"] = parallel_check()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        npz = build_npz(tmp, args.images)
        res["build_npz_s"] = time.perf_counter() - t
        runs = {kind: run(kind, npz, tmp, args.budget) for kind in ("local", "ray")}
    for kind, r in runs.items():
        res[kind] = {"phases": phases(r), "shards": shard_table(r["logs"]), "executor": r["info"].to_dict(),
                     "speedup": r["report"]["final"]["latency"]["speedup"] if r["report"]["final"] else None,
                     "checks": r["report"]["extra"]["auto"].get("checks")}
    res["roles"] = runs["local"]["report"]["settings"]["data"]["how"]
    res["same_bytes"] = runs["local"]["model_bytes"] == runs["ray"]["model_bytes"]
    strip = lambda r: _accuracies({k: v for k, v in r["report"].items() if k != "settings"})  # noqa: E731
    res["same_accuracy"] = strip(runs["local"]) == strip(runs["ray"])
    res["fixed_s"] = _fixed(runs["ray"])
    res["projection"] = {"as wired": project(res, ("select", "report")),
                         "with fit costs": project(res, ("select", "report", "fit"))}
    res["load_after"] = os.getloadavg()
    res["parallel_after"] = parallel_check()
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
        "the fixed cost per comparison was measured with the workers on this machine; across a network each "
        "node also receives the candidate model (SqueezeNet 1.1: 5 MB) once per comparison.",
        "phases that do the same work in both runs (auto costs, set-up) differ with the load other users put "
        "on the machine: compare the distributed part by its per-comparison times, not by the totals alone.",
    ]
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    args.md.write_text(markdown(res, args))
    print(args.md.read_text())


if __name__ == "__main__":
    main()
