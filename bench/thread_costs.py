"""Why 2-thread wins vanish: ORT's per-op profile of SqueezeNet 1.1, original vs rewritten, at 1 and 2 threads,
and micro-models that isolate each suspected cost (µs per extra node, per NCHWc reorder, per lost fusion).

    python bench/thread_costs.py [--runs 200] [--passes 3] [--threads 1 2] [--quiet 0.1]
    python bench/thread_costs.py --report bench/results/thread_pricing_costs.json   # the tables again

Every comparison is timed in one process with the sessions interleaved run by run; each part is repeated
``--passes`` times and reported as the median over passes with its range. The CPU time other processes took
during each pass is recorded (``foreign_busy``: 0 = machine otherwise idle, 1 = both cores taken).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from convopt.auto.context import paired_rounds
from convopt.core.driver import Driver
from convopt.core.plan import Choice, Plan, apply_plan
from convopt.measure.ort import OrtSettings, make_session

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "models"
RESULTS = Path(__file__).resolve().parent / "results"
THREE = ["fire2", "fire3", "fire4", "fire5", "fire6", "fire7", "fire8", "fire9"]
# the 8 rewrites auto chose at 1 thread (bench/results/auto_squeezenet.json, variant auto@1thr)
AUTO_1T = {"conv1_1": Choice("bottleneck", {"rank_out": 16}), "fire2/expand3x3_1": Choice("factorize", {"rank": 32}),
           "fire3/expand3x3_1": Choice("factorize", {"rank": 32}), "fire4/expand3x3_1": Choice("factorize", {"rank": 64}),
           "fire5/expand3x3_1": Choice("factorize", {"rank": 48}), "fire6/expand3x3_1": Choice("factorize", {"rank": 96}),
           "fire8/expand3x3_1": Choice("factorize", {"rank": 96}),
           "fire9/expand3x3_1": Choice("depthwise", {"multiplier": 4})}


class Busy:
    """CPU share other processes used between start() and stop(): (all busy jiffies − ours) / capacity."""

    def start(self) -> None:
        self.t0, self.c0, self.w0 = self._stat(), self._own(), time.perf_counter()

    def stop(self) -> float:
        busy = self._stat() - self.t0
        own = self._own() - self.c0
        cap = (time.perf_counter() - self.w0) * (os.cpu_count() or 1)
        return float(max(0.0, busy - own) / max(cap, 1e-9))

    @staticmethod
    def _stat() -> float:
        v = list(map(int, open("/proc/stat").readline().split()[1:]))
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime


class Waiting:
    """Share of wall time this process's threads spent runnable but waiting for a CPU (the kernel's per-task
    run_delay, /proc/self/task/*/schedstat), between start() and stop(): the contention a timing suffered.
    Other processes' CPU use alone would not show it: while we hold both cores they barely run."""

    def start(self) -> None:
        self.d0, self.w0 = self._delay(), time.perf_counter()

    def stop(self) -> float:
        return (self._delay() - self.d0) / max(time.perf_counter() - self.w0, 1e-9)

    @staticmethod
    def _delay() -> float:
        total = 0
        for t in os.listdir("/proc/self/task"):
            try:
                total += int(open(f"/proc/self/task/{t}/schedstat").read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
        return total / 1e9


def wait_quiet(max_foreign: float, deadline: float, probe: float = 0.3) -> float:
    """Sleep until other processes used at most ``max_foreign`` of the machine over ``probe`` s (or the
    deadline passes); returns the last reading."""
    b = Busy()
    while True:
        b.start()
        time.sleep(probe)
        f = b.stop()
        if f <= max_foreign or time.perf_counter() > deadline:
            return f


MAX_WAITING = 0.03  # a block is kept when our threads waited for a CPU at most 3 % of its wall time


def rotated_rounds(sessions: list, feeds: dict[str, np.ndarray], block: int, start: int) -> np.ndarray:
    """``paired_rounds`` whose rotation goes on from round ``start``: each block begins with the session
    the last one would have run next. (Restarting it per block made the first session — the dense model —
    always run first after the gate's pause; with blocks of one round it alone paid every wake-up.)"""
    k = start % len(sessions)
    t = paired_rounds(sessions[k:] + sessions[:k], feeds, 0, block)
    return np.roll(t, k, axis=1)


def quiet_rounds(sessions: list, feeds: dict[str, np.ndarray], rounds: int, max_foreign: float,
                 timeout: float, block_s: float = 0.05, warmup: int = 5) -> tuple[np.ndarray, dict[str, float]]:
    """``paired_rounds`` in blocks of ``block`` rounds, each started when other processes use at most
    ``max_foreign`` of the machine and kept only when our threads then waited for a CPU at most
    ``MAX_WAITING`` of the time (``max_foreign`` 1.0: keep everything); stops at ``rounds`` kept rounds or
    after ``timeout`` s. Blocks last about ``block_s`` (short blocks find quiet more often). Returns (kept
    seconds (n, sessions), gate stats)."""
    first = paired_rounds(sessions, feeds, warmup, 1)
    block = int(np.clip(block_s / max(float(first.sum()), 1e-6), 1, 10))
    kept, seen, busy, waits = [], 0, Waiting(), []
    deadline = time.perf_counter() + timeout
    while sum(len(k) for k in kept) < rounds and time.perf_counter() < deadline:
        if max_foreign < 1.0:
            wait_quiet(max_foreign, deadline)
        busy.start()
        t = rotated_rounds(sessions, feeds, block, seen)
        seen += block
        w = busy.stop()
        if max_foreign >= 1.0 or w <= MAX_WAITING:
            kept.append(t)
            waits.append(w)
    share = sum(len(k) for k in kept) / max(seen, 1)
    if not kept:  # never quiet: keep the last block (kept_share 0 flags it)
        kept, waits = [t], [w]
    return np.concatenate(kept), {"kept_share": float(share), "waiting": float(np.mean(waits))}


@dataclass
class Profile:
    """Per-node medians (µs) of one session's profiled runs, keyed by node name; op type and domain per node."""

    wall_us: float
    node_us: dict[str, float]
    op: dict[str, str]
    worker_share: float  # fraction of parallel-capable nodes in which the intra-op worker ran a task
    extra: dict[str, float] = field(default_factory=dict)

    def by_op(self) -> Counter:
        c: Counter = Counter()
        for n, v in self.node_us.items():
            c[self.op[n]] += v
        return c


def _session(model: onnx.ModelProto, threads: int, prefix: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    so.enable_profiling, so.profile_file_prefix = True, prefix
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _parse(path: str, skip: int, keep: set[int] | None) -> Profile:
    """Per-node medians over the runs after ``skip`` whose index (counted after ``skip``) is in ``keep``."""
    import bisect

    ev = json.load(open(path))
    os.unlink(path)
    runs = sorted((e for e in ev if e["name"] == "model_run"), key=lambda e: e["ts"])[skip:]
    starts = [r["ts"] for r in runs]
    durs: dict[str, list[float]] = defaultdict(list)
    op: dict[str, str] = {}
    worker, parallel, last = 0, 0, None
    for e in sorted((e for e in ev if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                    key=lambda e: e["ts"]):
        i = bisect.bisect_right(starts, e["ts"]) - 1
        subs = (e["args"].get("thread_scheduling_stats") or {}).get("sub_threads") or {}
        runs_now = sum(int(s.get("num_run", 0)) for s in subs.values())
        if i >= 0 and (keep is None or i in keep):
            name = e["name"][: -len("_kernel_time")]
            durs[name].append(e["dur"])
            op[name] = e["args"].get("op_name", "?")
            if subs and last is not None:
                parallel += 1
                worker += runs_now > last
        last = runs_now if subs else last
    med = {k: float(np.median(v)) for k, v in durs.items()}
    walls = [r["dur"] for i, r in enumerate(runs) if keep is None or i in keep]
    return Profile(float(np.median(walls)), med, op, worker / max(parallel, 1), {"runs": float(len(walls))})


def profile(models: list[onnx.ModelProto], threads: int, runs: int, feeds: dict[str, np.ndarray],
            max_foreign: float = 1.0, timeout: float = 600.0, burst: int = 5) -> list[Profile]:
    """Profiles of ``models`` run interleaved (``runs`` rounds after 5 warm-up runs each). With
    ``max_foreign`` < 1, rounds run in bursts started when the machine is quiet, and only bursts during which
    other processes used at most that share of it are kept (as in ``quiet_rounds``)."""
    prefix = f"/tmp/convopt-prof-{os.getpid()}"
    ss = [_session(m, threads, f"{prefix}-{i}") for i, m in enumerate(models)]
    for s in ss:
        for _ in range(5):
            s.run(None, feeds)
    deadline, busy, keep, done = time.perf_counter() + timeout, Waiting(), set(), 0
    while len(keep) < runs and time.perf_counter() < deadline:
        if max_foreign < 1.0:
            wait_quiet(max_foreign, deadline)
        busy.start()
        for _ in range(burst):
            for s in ss:
                s.run(None, feeds)
        if max_foreign >= 1.0 or busy.stop() <= MAX_WAITING:
            keep.update(range(done, done + burst))
        done += burst
    kept = len(keep)
    out = [_parse(s.end_profiling(), 5, keep or None) for s in ss]  # nothing quiet: every run, flagged below
    for p in out:
        p.extra["kept_runs"] = float(kept)
    return out


def optimized_ops(model: onnx.ModelProto, threads: int = 1) -> Counter:
    """Op counts of the graph ORT runs (after its optimizers: fusions, NCHWc layout)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = threads, 3
    path = f"/tmp/convopt-opt-{os.getpid()}.onnx"
    so.optimized_model_filepath = path
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    g = onnx.load(path).graph
    os.unlink(path)
    c: Counter = Counter(("nchwc." if n.domain.endswith("nchwc") else "") + n.op_type for n in g.node)
    c["fused activations"] = sum(1 for n in g.node for a in n.attribute if a.name == "activation")
    return c


# ------------------------------------------------------------------------------------------ micro-models


def chain_model(k: int, c: int, hw: int, kernel: int = 1, relu: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x (1, c, hw, hw) → k × [Conv kernel×kernel c→c (+ Relu)]: time grows by one node's cost per step of k."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(k):
        w = numpy_helper.from_array(rng.standard_normal((c, c, kernel, kernel)).astype(np.float32) * 0.1, f"w{i}")
        b = numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}")
        inits += [w, b]
        nodes.append(helper.make_node("Conv", [x, w.name, b.name], [f"y{i}"], pads=[kernel // 2] * 4))
        x = f"y{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, hw, hw])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def slope(ks: list[int], seconds: list[float]) -> float:
    """Least-squares µs per step of k (``seconds``: median run time per k)."""
    return float(np.polyfit(np.asarray(ks, float), np.asarray(seconds, float) * 1e6, 1)[0])


SIZES = [("tiny 16ch 4x4", 16, 4)] + [(f"64ch {h}x{h}", 64, h) for h in (13, 20, 27, 41, 55)]


def node_cost(threads: int, repeats: int, max_foreign: float = 1.0, timeout: float = 600.0) -> dict[str, float]:
    """µs each extra 1×1 Conv+Relu node adds (the slope over chains of 1, 2, 4, 8), for a near-empty node
    (16 channels, 4×4: the fixed cost of a node at this thread count) and for 64 channels from SqueezeNet's
    late 13×13 to its early 55×55 (where a second thread starts to pay)."""
    out = {}
    for label, c, hw in SIZES:
        ks = [1, 2, 4, 8]
        models = [chain_model(k, c, hw) for k in ks]
        sess = [make_session(m, OrtSettings(threads=threads)) for m in models]
        x = np.random.default_rng(0).standard_normal((1, c, hw, hw)).astype(np.float32)
        t, st = quiet_rounds(sess, {"x": x}, repeats, max_foreign, timeout)
        out[label] = slope(ks, list(np.median(t, axis=0)))
        out[label + " waiting"], out[label + " kept"] = st["waiting"], st["kept_share"]
    return out


# ------------------------------------------------------------------------------------------------- study


def squeezenet_configs(d: Driver) -> dict[str, dict[str, Choice]]:
    """Rewritten variants of SqueezeNet: auto's 1-thread choice, factorize at half rank on every expand3x3,
    and single rewrites whose factor shapes differ in NCHWc terms (rank 8 < block, 24 padded, 16 aligned)."""
    half = {f"{f}/expand3x3_1": Choice("factorize", {"rank": max(8, d.convs[f"{f}/expand3x3_1"].in_channels * 3 // 2 // 8 * 8)})
            for f in THREE}
    return {"auto@1thr (8 layers)": AUTO_1T, "factorize half rank (8 layers)": half,
            "fire2 factorize r8": {"fire2/expand3x3_1": Choice("factorize", {"rank": 8})},
            "fire2 factorize r16": {"fire2/expand3x3_1": Choice("factorize", {"rank": 16})},
            "fire2 factorize r24": {"fire2/expand3x3_1": Choice("factorize", {"rank": 24})},
            "fire9 depthwise m4": {"fire9/expand3x3_1": Choice("depthwise", {"multiplier": 4})}}


def graph_part(d: Driver, models: dict[str, onnx.ModelProto]) -> dict[str, dict[str, int]]:
    base = optimized_ops(d.base)
    out = {"original": dict(base)}
    for name, m in models.items():
        ops = optimized_ops(m)
        out[name] = {k: ops[k] - base[k] for k in sorted(set(ops) | set(base)) if ops[k] != base[k]}
    return out


def profile_part(d: Driver, models: dict[str, onnx.ModelProto], threads: int, runs: int, max_foreign: float,
                 timeout: float) -> dict[str, object]:
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    names = list(models)
    profs = profile([d.base] + [models[n] for n in names], threads, runs, {"data_0": x}, max_foreign, timeout)
    base = profs[0]
    out: dict[str, object] = {"original": {"wall_us": base.wall_us, "nodes": len(base.node_us),
                                           "sum_nodes_us": sum(base.node_us.values()), "by_op": dict(base.by_op()),
                                           "worker_share": base.worker_share, "node_us": base.node_us,
                                           "runs": base.extra["runs"], "kept_runs": base.extra["kept_runs"]}}
    for n, p in zip(names, profs[1:]):
        out[n] = {"wall_us": p.wall_us, "nodes": len(p.node_us), "sum_nodes_us": sum(p.node_us.values()),
                  "by_op": dict(p.by_op()), "worker_share": p.worker_share, "node_us": p.node_us,
                  "runs": p.extra["runs"], "kept_runs": p.extra["kept_runs"]}
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quiet", type=float, default=1.0, help="time only while other processes use at most this "
                    "share of the machine (1: always)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds each part may wait for quiet")
    ap.add_argument("--configs", nargs="*", help="names of the rewritten variants to profile (default: all)")
    ap.add_argument("--only-nodes", action="store_true", help="only the per-node cost chains")
    ap.add_argument("--out", type=Path, default=RESULTS / "thread_pricing_costs.json")
    ap.add_argument("--report", type=Path, help="print the tables of a results JSON and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    d = Driver(onnx.load(str(SHARED / "squeezenet1.1.onnx")))
    configs = {k: v for k, v in squeezenet_configs(d).items() if k in args.configs} if args.configs else squeezenet_configs(d)
    models = {n: apply_plan(d.base, Plan(c), d.convs).model for n, c in configs.items()}
    res: dict[str, object] = {"ort": ort.__version__, "cpu_count": os.cpu_count(), "graph": graph_part(d, models),
                              "passes": []}
    busy = Busy()
    for p in range(args.passes):
        row: dict[str, object] = {}
        for t in args.threads:
            busy.start()
            gate = args.quiet if t > 1 else 1.0  # one thread: preemption only stretches a few runs
            if not args.only_nodes:
                row[f"profile_t{t}"] = profile_part(d, models, t, args.runs, gate, args.timeout)
            row[f"node_cost_t{t}"] = node_cost(t, args.runs, gate, args.timeout)
            row[f"foreign_busy_t{t}"] = busy.stop()
            print(f"pass {p + 1} threads {t}: foreign busy {row[f'foreign_busy_t{t}']:.2f}", flush=True)
        res["passes"].append(row)  # type: ignore[union-attr]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(report(res))
    print(f"wrote {args.out}")
    return 0


def _med(res: dict, key: str, f) -> tuple[float, float]:
    """(median, range) over passes of ``f(pass[key])``."""
    v = [f(p[key]) for p in res["passes"] if key in p]
    return float(np.median(v)), float(np.ptp(v)) if len(v) > 1 else 0.0


def _layer_us(node_us: dict[str, float], layer: str) -> float:
    """µs of one layer's nodes in a profile: the Conv ORT names after the layer's output (the dense Conv, or
    a rewrite's last factor, which keeps it) and every other node a pass made for it (named pass/layer/...)."""
    stem = layer.rsplit("_", 1)[0] + "_"
    return sum(v for k, v in node_us.items() if f"/{layer}/" in k or (k.startswith(stem) and k.endswith("nchwc")))


def report(res: dict) -> str:
    ths = sorted({int(k.split("_t")[1]) for p in res["passes"] for k in p if k.startswith("node_cost_t")})
    lines = [f"ORT {res['ort']}, {res['cpu_count']} CPUs, {len(res['passes'])} pass(es).", "",
             "| variant | ORT graph: ops added (vs original) |", "|---|---|"]
    for name, delta in res["graph"].items():
        if name != "original":
            lines.append(f"| {name} | {', '.join(f'{k} {v:+d}' for k, v in delta.items()) or 'none'} |")
    lines += ["", "µs one extra 1×1 Conv+Relu node adds (slope over chains of 1, 2, 4, 8 nodes; our threads' "
              "CPU wait share in brackets)", "", "| node | " + " | ".join(f"{t} thread(s)" for t in ths) + " |",
              "|---|" + "---|" * len(ths)]
    for label, _, _ in SIZES:
        cells = []
        for t in ths:
            m, r = _med(res, f"node_cost_t{t}", lambda d: d[label])
            w, _ = _med(res, f"node_cost_t{t}", lambda d: d.get(label + " waiting", float("nan")))
            cells.append(f"{m:.1f} ±{r / 2:.1f} [{w:.0%}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per-op profile (ORT enable_profiling, median µs over kept runs): whole-run wall, sum of node "
              "times, Conv time, and the saving against the original", "",
              "| variant | threads | wall µs | saved wall | sum nodes | saved Conv µs | nodes | worker share |",
              "|---|---|---|---|---|---|---|---|"]
    for t in ths:
        key = f"profile_t{t}"
        if not any(key in p for p in res["passes"]):
            continue
        for name in res["passes"][0][key]:
            w, _ = _med(res, key, lambda d: d[name]["wall_us"])
            ow, _ = _med(res, key, lambda d: d["original"]["wall_us"])
            sn, _ = _med(res, key, lambda d: d[name]["sum_nodes_us"])
            sc, _ = _med(res, key, lambda d: d["original"]["by_op"]["Conv"] - d[name]["by_op"]["Conv"])
            v = res["passes"][0][key][name]
            lines.append(f"| {name} | {t} | {w:.0f} | {ow - w:+.0f} | {sn:.0f} | {sc:+.0f} | {v['nodes']} | "
                         f"{v['worker_share']:.2f} |")
        auto = "auto@1thr (8 layers)"
        if auto in res["passes"][0][key]:
            for layer in AUTO_1T:
                dense, _ = _med(res, key, lambda d: _layer_us(d["original"]["node_us"], layer))
                fac, _ = _med(res, key, lambda d: _layer_us(d[auto]["node_us"], layer))
                lines.append(f"| · {layer} {AUTO_1T[layer].key} | {t} | dense {dense:.0f} | factors {fac:.0f} | "
                             f"{dense - fac:+.0f} | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
