"""The Ray executor on a local Ray instance of 2 workers started here: the same figures, decisions and output
bytes as the local executor, a worker killed mid-run, an unreachable cluster, Ctrl-C. Skipped without the
ray extra (pip install -e ".[test,ray]")."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

ray = pytest.importorskip("ray", reason='the ray extra is not installed (pip install -e ".[test,ray]")')

from convopt import api  # noqa: E402
from convopt.measure.data import EvalData, load_eval_data  # noqa: E402
from convopt.measure.evaluator import Evaluator  # noqa: E402
from convopt.measure.executor import ExecutorOptions, LocalExecutor  # noqa: E402
from convopt.measure.ort import OrtSettings  # noqa: E402
from convopt.measure.plugin import TaskMetric  # noqa: E402
from convopt.measure.ray_executor import RayExecutor  # noqa: E402
from convopt.options import DataOptions, OptimizeOptions  # noqa: E402
from tests.helpers import NO_SHARED, SHARED, SHARED_MODELS, strip_keys  # noqa: E402
from tests.test_executor import conv_relu, images, shifted  # noqa: E402
from tests.test_measure_helpers import classifier_weights, numpy_classifier, tiny_classifier  # noqa: E402

FAST = OrtSettings(warmup=1, repeats=3, batch_size=4, threads=1)
IMAGENET = SHARED / "data" / "imagenet-sample"
VOLATILE = {"latency", "seconds", "environment", "speedup", "model", "output", "executor"}


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray instance of 2 CPUs for the module: no dashboard, errors only, workers' logs kept off
    the test output, a small object store (the data here are a few MB)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             object_store_memory=200 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture(scope="class")
def executor() -> Iterator[RayExecutor]:
    """2 workers shared by the tests of a class (a worker process takes seconds to start on a busy 2-core
    machine); closed after the class, so that later tests can start their own on the 2 CPUs."""
    ex = RayExecutor(ExecutorOptions("ray", shard_size=4), threads=1)
    yield ex
    ex.close()


def _strip(d: Any) -> Any:
    return strip_keys(d, VOLATILE)


def _same_outcomes(a: Any, b: Any) -> None:
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert (x is None and y is None) or np.array_equal(x, y, equal_nan=True), f.name


class TestOnePool:
    """Evaluations on one pool of 2 workers, against the local executor."""

    def test_workers_and_shards_are_recorded(self, executor: RayExecutor) -> None:
        ev = Evaluator(tiny_classifier("N"), EvalData({"X": images(10)}, None, "t"), FAST, executor=executor,
                       role="select")
        info = executor.info().to_dict()
        assert info["kind"] == "ray" and info["workers"] == 2 and info["shards"]["select"] == 3
        assert "never on workers" in info["latency"]
        assert len(set(executor.pids())) == 2 and os.getpid() not in executor.pids()
        assert ev.baseline().latency is not None  # timed here, on the driver


    @pytest.mark.parametrize("judge", ["labels", "metric", "unlabelled"])
    def test_same_figures_and_outcomes_as_local(self, executor: RayExecutor, judge: str) -> None:
        x = images(23)
        labels = numpy_classifier(x, *classifier_weights()).argmax(axis=1)
        labels[:4] = (labels[:4] + 1) % 4
        data = EvalData({"X": x}, None if judge == "unlabelled" else labels, "t")
        # a closure: Ray ships it by value to the workers
        metric = TaskMetric.from_callable(lambda out, lab, inp: -np.abs(out["Y"] - 1).sum(axis=1)) \
            if judge == "metric" else None
        runs = []
        for ex in (LocalExecutor(4), executor):
            ev = Evaluator(tiny_classifier("N"), data, FAST, measure_latency=False, metric=metric, executor=ex)
            runs.append((ev, ev.baseline(), ev.measure(shifted(), "shifted", timed=False)))
        (ev_l, base_l, m_l), (ev_r, base_r, m_r) = runs
        assert 0 < m_l.accuracy.top1_agreement < 100
        assert base_r.to_dict() | {"seconds": 0} == base_l.to_dict() | {"seconds": 0}
        assert m_r.to_dict() | {"seconds": 0} == m_l.to_dict() | {"seconds": 0}
        _same_outcomes(m_r.outcomes, m_l.outcomes)
        assert ev_r.original_accuracy == ev_l.original_accuracy
        np.testing.assert_array_equal(ev_r.reference[0], ev_l.reference[0])


    def test_map_reduce_same_sums_as_local(self, executor: RayExecutor) -> None:
        """Σ of an intermediate tensor: the same bits as the local executor (shards added in sample order)."""
        x = images(18)
        data = EvalData({"X": x}, None, "t")

        def reducer(t: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            r = t["r"].astype(np.float64)
            return r.sum(axis=0), np.einsum("nchw,ndhw->cd", r, r)

        got = executor.map_reduce(tiny_classifier(2), ["r"], data, reducer, FAST)
        want = LocalExecutor(4).map_reduce(tiny_classifier(2), ["r"], data, reducer, FAST)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        r = conv_relu(x, *classifier_weights())
        np.testing.assert_allclose(got[0], r.sum(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[1], np.einsum("nchw,ndhw->cd", r, r), rtol=1e-5)


    def test_model_and_data_enter_the_object_store_once(self, executor: RayExecutor) -> None:
        """Two evaluations of one model on one data set (as select and report would share the model) put
        the model once and each shard once; a task carries references only."""
        data = EvalData({"X": images(12)}, None, "t")
        evs = [Evaluator(tiny_classifier("N"), data, FAST, measure_latency=False, executor=executor)
               for _ in range(2)]
        jobs = [ev._evaluation._jobs for ev in evs]  # type: ignore[attr-defined]
        assert [j.original for j in jobs[0]] == [j.original for j in jobs[1]]  # one reference to the model
        assert [j.shard for j in jobs[0]] == [j.shard for j in jobs[1]]  # the same shard objects
        assert len({j.shard.hex() for j in jobs[0]}) == len(jobs[0]) == 3
        assert executor.put_model(tiny_classifier("N")) == jobs[0][0].original

    def test_broken_candidate_is_a_rewrite_error_from_the_workers(self, executor: RayExecutor) -> None:
        from convopt.errors import RewriteError
        from convopt.measure.executor import Candidate

        ev = Evaluator(tiny_classifier("N"), EvalData({"X": images(8)}, None, "t"), FAST, measure_latency=False,
                       executor=executor)
        w, b = classifier_weights(classes=5)
        wider = tiny_classifier("N", weights=(w, b), classes=5)
        # the local session check names the outputs; past it, a worker's comparison refuses the shapes
        session = ev.session(tiny_classifier("N"))
        with pytest.raises(RewriteError, match=r"the rewritten model \(wider\) changed its outputs: output 0"):
            ev._evaluation.compare(Candidate(wider, session, "the rewritten model (wider)"))


def _kill_soon(pid: int, after: float) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(after), os.kill(pid, signal.SIGKILL)))
    t.start()
    return t


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_a_worker_killed_mid_run_is_restarted_and_its_shards_rerun() -> None:
    """SIGKILL to one worker while a candidate's 12 shards run (about 0.5 s of work each worker; should the
    kill land between tasks instead, the restart path is the same). Ray restarts the process, the new one
    rebuilds its shards' state from the object store, the shards are re-run: the figures do not change."""
    model = onnx.load(SHARED_MODELS / "squeezenet1.1.onnx")
    data = load_eval_data(model, None, random_samples=48, seed=3)
    settings = OrtSettings(threads=1)
    ex = RayExecutor(ExecutorOptions("ray", shard_size=4), threads=1)
    try:
        ev = Evaluator(model, data, settings, measure_latency=False, executor=ex)
        victim = ex.pids()[1]
        killer = _kill_soon(victim, 0.5)
        got = ev.measure(_perturbed(model), "perturbed", timed=False)
        killer.join()
        again = ev.measure(_perturbed(model), "perturbed", timed=False)
        assert victim not in ex.pids()
        assert ex.info().worker_restarts >= 1
    finally:
        ex.close()
    local = Evaluator(model, data, settings, measure_latency=False, executor=LocalExecutor(4))
    want = local.measure(_perturbed(model), "perturbed", timed=False)
    for m in (got, again):
        assert m.to_dict() | {"seconds": 0} == want.to_dict() | {"seconds": 0}
        _same_outcomes(m.outcomes, want.outcomes)


def _perturbed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its last conv's bias shifted: a candidate whose outputs differ a little."""
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    last = [n for n in m.graph.node if n.op_type == "Conv"][-1]
    for i, t in enumerate(m.graph.initializer):
        if t.name == last.input[2]:
            b = numpy_helper.to_array(t)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(b + np.float32(0.5) * np.sign(b), t.name))
    return m


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "convopt.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_unreachable_cluster_is_one_line_exit_2(tmp_path: Path) -> None:
    model, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    model.write_bytes(tiny_classifier("N").SerializeToString())
    port = _free_port()  # nothing listens there
    p = _cli(["optimize", str(model), "-o", str(out), "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"])
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert "ray start --head" in lines[0] and not out.exists()


@pytest.mark.skipif(not SHARED_MODELS.is_dir() or not Path("/proc").is_dir(), reason=f"{NO_SHARED}, or no /proc")
def test_ctrl_c_stops_the_workers_and_writes_nothing(tmp_path: Path) -> None:
    """SIGINT once the workers run: exit 130, no output model, no report, and the local Ray instance gone."""
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    p = _cli(["optimize", str(SHARED_MODELS / "squeezenet1.1.onnx"), "-o", str(out), "--report", str(rep),
              "--strategy", "uniform", "--passes", "factorize", "--threads", "1", "--executor", "ray",
              "--repeats", "2"], cwd=tmp_path)
    assert p.stderr is not None
    seen = []
    for line in p.stderr:
        seen.append(line)
        if line.startswith("executor: ray"):
            break
    time.sleep(1.0)
    ray_processes = _descendants(p.pid)  # the local Ray instance it started: gcs, raylet, the 2 workers, ...
    assert len(ray_processes) >= 3
    p.send_signal(signal.SIGINT)
    _, rest = p.communicate(timeout=120)
    text = "".join(seen) + rest
    assert p.returncode == 130, text
    assert "interrupted by SIGINT: nothing was written" in text
    assert not out.exists() and not rep.exists()
    deadline = time.monotonic() + 30
    while any(map(_alive, ray_processes)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in ray_processes if _alive(pid)], "Ray processes outlived the interrupted run"


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        kids = [c for c, pp in parent.items() if pp == current]
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _options(tmp: Path, kind: str, extra: dict[str, Any]) -> OptimizeOptions:
    return OptimizeOptions(model=SHARED_MODELS / "squeezenet1.1.onnx", output=tmp / f"{kind}.onnx",
                           report=tmp / f"{kind}.json", executor=ExecutorOptions(kind, shard_size=4), **extra)


@pytest.mark.skipif(not IMAGENET.is_dir(), reason=NO_SHARED)
def test_same_decisions_figures_and_bytes_as_local(tmp_path: Path) -> None:
    """Uniform mode on SqueezeNet over 24 labelled images (--keep-slower: no decision rests on latency):
    the same kept and rolled-back passes, the same figures, the same output bytes."""
    extra = dict(strategy="uniform", passes=("factorize", "bottleneck"), require_faster=False,
                 data=DataOptions(data=IMAGENET, labels=IMAGENET / "labels.csv", preprocess="caffe", limit=24),
                 ort=OrtSettings(threads=1, warmup=1, repeats=2))
    reports, digests = {}, {}
    for kind in ("local", "ray"):
        api.run(_options(tmp_path, kind, extra))
        reports[kind] = json.loads((tmp_path / f"{kind}.json").read_text())
        digests[kind] = hashlib.sha256((tmp_path / f"{kind}.onnx").read_bytes()).hexdigest()
    local, remote = reports["local"], reports["ray"]
    assert digests["local"] == digests["ray"]
    assert _strip(remote) == _strip(local)
    assert [p["status"] for p in remote["passes"]] == [p["status"] for p in local["passes"]]
    assert remote["settings"]["executor"]["shards"] == {"select": 3, "report": 3}
    assert remote["settings"]["executor"]["workers"] == 2 and local["settings"]["executor"]["workers"] == 1


def test_auto_mode_same_decisions_and_bytes_as_local(tmp_path: Path) -> None:
    """Auto mode on the built-in example (200 labelled digits: 50 fit, 75 select, 75 report, 5 shards each).
    The runs share one layer-latency cache, so they build the same candidates and the same greedy sequence;
    every check on the select data must then agree to the last bit. Which certified step is kept also rests
    on an end-to-end speedup timed in each run: when both keep the same one, the bytes must be the same."""
    from convopt.core.budget import Budget
    from convopt.models.example import example_data_path, example_model_path

    reports, models = {}, {}
    for kind in ("local", "ray"):
        opts = OptimizeOptions(
            model=example_model_path(), output=tmp_path / f"{kind}.onnx", report=tmp_path / f"{kind}.json",
            data=DataOptions(data=example_data_path(), limit=200), budget=Budget(max_rel_error=0.05),
            passes=("factorize", "depthwise"), ort=OrtSettings(threads=1, warmup=1, repeats=3),
            executor=ExecutorOptions(kind, shard_size=16), latency_cache=tmp_path / "latency.json")  # type: ignore[arg-type]
        api.run(opts)
        reports[kind] = json.loads((tmp_path / f"{kind}.json").read_text())
        models[kind] = (tmp_path / f"{kind}.onnx").read_bytes()
    checks = {k: [{f: v for f, v in c.items() if f != "speedup"} for c in r["extra"]["auto"]["checks"]]
              for k, r in reports.items()}
    assert len(checks["local"]) >= 3 and any(c["ok"] for c in checks["local"])
    assert checks["ray"] == checks["local"]
    assert reports["ray"]["baseline"]["accuracy"] == reports["local"]["baseline"]["accuracy"]
    assert reports["ray"]["settings"]["executor"]["shards"] == {"fit": 4, "select": 5, "report": 5}  # fit: 50 / 16
    if reports["ray"]["extra"]["auto"]["chosen"] == reports["local"]["extra"]["auto"]["chosen"]:
        assert models["ray"] == models["local"]
        assert reports["ray"]["final"]["accuracy"] == reports["local"]["final"]["accuracy"]
