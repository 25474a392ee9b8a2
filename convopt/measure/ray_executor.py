"""Evaluation on a Ray cluster (``--executor ray``, the ``ray`` extra: ``pip install "convopt[ray]"``).

One actor per worker (``ShardWorker``), each holding a fixed set of shards: shard i always runs on worker
i mod W. Actors rather than tasks because the original's outputs stay where their shard runs: a worker runs
the original once per shard and compares every candidate with it, so a candidate costs one pass over the
data. Tasks would have to re-run the original for every candidate (twice the work) or ship its outputs
through the object store on every call (a segmentation model's outputs are larger than its inputs).

The original model and every shard of the data are put into Ray's object store once per run; a task
carries only references to them, and a candidate model is put once and read by every shard. A worker that
dies is restarted by Ray (``max_restarts``) and its unfinished tasks are retried (``max_task_retries``): the
new process rebuilds its state from the object store (the shard, the original, its outputs) and re-runs the
shard. Ctrl-C cancels the queued tasks and kills the workers. Latency is never timed here.
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from convopt.errors import ConvOptError, InputError
from convopt.graph.offload import serialized
from convopt.measure.ray_connect import connect, ray  # first: InputError when the ray extra is missing
from convopt.measure.data import EvalData
from convopt.measure.executor import (
    Candidate, CompareLog, EvaluationSpec, ExecutorInfo, ExecutorOptions, session_of,
)
from convopt.measure.ort import OrtSettings, Progress, session_batch
from convopt.measure.plugin import TaskMetric
from convopt.measure.shards import (
    Comparison, Reducer, ShardPlan, ShardRun, add_in_order, compare_shard, merge, plan_shards, reduce_shard,
    run_shard, shard_data,
)
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError  # after ray_connect's guard

MAX_RESTARTS = 3  # a worker process that dies is restarted this many times ...
MAX_TASK_RETRIES = 3  # ... and the shard it was running is re-run
START_TIMEOUT_S = 120.0  # workers that cannot be placed by then: the cluster has no free CPUs
Say = Callable[[str], None]


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to (re)build one shard's state: references into the object store (nested in
    this record, so Ray does not fetch them before the worker asks), the settings and how to judge."""

    key: str
    index: int
    start: int
    stop: int
    original: Any  # ray.ObjectRef of the original's bytes
    shard: Any  # ray.ObjectRef of the shard's EvalData
    settings: OrtSettings
    names: tuple[str, ...]
    labelled: bool
    metric: TaskMetric | None


def _worker_settings(settings: OrtSettings) -> OrtSettings:
    """Workers run ORT on ``threads`` threads, one when ORT would pick (one worker per CPU)."""
    return settings if settings.threads > 0 else replace(settings, threads=1)


class ShardWorker:
    """A Ray actor: runs shards, keeps the original's session and its outputs per shard, and the last
    candidate's session (every shard of this worker compares the same candidate in turn)."""

    def __init__(self) -> None:
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._refs: dict[tuple[str, int], list[np.ndarray]] = {}
        self._candidate: tuple[str, ort.InferenceSession] | None = None
        self._setup = 0.0  # seconds making sessions during the current task
        ctx = ray.get_runtime_context()
        self._name = f"{ctx.get_node_id()[:8]}:{os.getpid()}"
        self._restarted = bool(ctx.was_current_actor_reconstructed)

    def describe(self) -> dict[str, Any]:
        import convopt

        return {"worker": self._name, "pid": os.getpid(), "convopt": convopt.__version__,
                "onnxruntime": ort.__version__, "numpy": np.__version__}

    def _session(self, model: Any, settings: OrtSettings) -> ort.InferenceSession:
        """The session of a model in the object store (``model``: its reference), made once per worker."""
        key = model.hex()
        if key not in self._sessions:
            t0 = time.perf_counter()
            self._sessions[key] = session_of(onnx.load_from_string(ray.get(model)), _worker_settings(settings))
            self._setup += time.perf_counter() - t0
        return self._sessions[key]

    def _reference(self, job: ShardJob) -> list[np.ndarray]:
        if (job.key, job.index) not in self._refs:
            session = self._session(job.original, job.settings)
            self._refs[(job.key, job.index)] = run_shard(session, ray.get(job.shard), _worker_settings(job.settings),
                                                         None)
        return self._refs[(job.key, job.index)]

    def _candidate_session(self, key: str, blob: bytes, settings: OrtSettings) -> ort.InferenceSession:
        if self._candidate is None or self._candidate[0] != key:
            t0 = time.perf_counter()
            self._candidate = None  # free the previous candidate first
            self._candidate = (key, session_of(onnx.load_from_string(blob), _worker_settings(settings)))
            self._setup += time.perf_counter() - t0
        return self._candidate[1]

    def compare(self, job: ShardJob, candidate: bytes | None, candidate_key: str | None,
                what: str | None) -> Any:
        """The shard's ShardPartial, or the ConvOptError that stopped it (returned: it names the user's
        problem in one line, which Ray's wrapping would bury)."""
        t0, self._setup = time.perf_counter(), 0.0
        try:
            ref = self._reference(job)
            shard = ray.get(job.shard)
            cand = ref
            if candidate is not None:
                session = self._candidate_session(str(candidate_key), candidate, job.settings)
                cand = run_shard(session, shard, _worker_settings(job.settings), what)
            run = ShardRun(job.index, job.start, job.stop, time.perf_counter() - t0 - self._setup, self._name,
                           self._restarted, self._setup)
            return compare_shard(ref, cand, shard, job.names, labelled=job.labelled, metric=job.metric,
                                 what=what, run=run)
        except ConvOptError as e:
            return e

    def reference(self, job: ShardJob) -> Any:
        try:
            return self._reference(job)
        except ConvOptError as e:
            return e

    def reduce(self, refs: tuple[Any, Any], names: tuple[str, ...], reducer: Reducer, settings: OrtSettings) -> Any:
        """Σ of ``reducer`` over the shard's batches; ``refs``: (model, shard) in the object store."""
        try:
            model, shard = refs
            return reduce_shard(self._session(model, settings), names, ray.get(shard), reducer,
                                _worker_settings(settings))
        except ConvOptError as e:
            return e


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class RayEvaluation:
    """The original's outputs on one data set, kept on the workers that own its shards."""

    needs_model = True  # the workers load the candidate from its proto

    def __init__(self, executor: RayExecutor, spec: EvaluationSpec, plan: ShardPlan) -> None:
        self.plan, self._ex, self._spec = plan, executor, spec
        original = executor.put_model(spec.original)
        shards = executor.put_data(spec.data, plan)
        key = uuid.uuid4().hex
        self._jobs = [ShardJob(key, i, a, b, original, shards[i], spec.settings, spec.names, spec.labelled,
                               spec.metric) for i, (a, b) in enumerate(plan.ranges)]

    def compare(self, candidate: Candidate | None, progress: Progress | None = None) -> Comparison:
        t0 = time.perf_counter()
        assert candidate is None or candidate.model is not None, "a Ray evaluation needs the candidate's proto"
        blob = None if candidate is None else ray.put(serialized(candidate.model))
        key = None if blob is None else blob.hex()
        what = None if candidate is None else candidate.what
        refs = [self._ex.worker(j.index).compare.remote(j, blob, key, what) for j in self._jobs]
        cmp = merge(self._ex.gather(refs, [j.stop - j.start for j in self._jobs], progress))
        self._ex.log.append(CompareLog(self._spec.role, time.perf_counter() - t0, cmp.runs))
        return cmp

    def reference_outputs(self) -> list[np.ndarray]:
        refs = [self._ex.worker(j.index).reference.remote(j) for j in self._jobs]
        per_shard = self._ex.gather(refs, [j.stop - j.start for j in self._jobs], None)
        return [np.concatenate([r[k] for r in per_shard], axis=0) for k in range(len(per_shard[0]))]


class RayExecutor:
    """Shards evaluated on the workers of a Ray cluster (see the module docstring); one per run."""

    def __init__(self, options: ExecutorOptions, threads: int, say: Say | None = None) -> None:
        self.options = options
        self._workers: list[Any] = []
        self._closed, self._started = False, False
        self._started = connect(options.address)
        try:
            cpus = max(1, threads)
            self._cpus_per_worker = cpus
            workers = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus)
            actor = ray.remote(num_cpus=cpus, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                               scheduling_strategy="SPREAD")(ShardWorker)
            self._workers = [actor.remote() for _ in range(workers)]
            self._check_workers()
        except BaseException:
            self.close()
            raise
        self._models: dict[str, Any] = {}
        self._data: dict[int, tuple[weakref.ref[EvalData], ShardPlan, list[Any]]] = {}
        self._shards: dict[str, int] = {}
        self._seen: dict[int, set[str]] = {}  # worker index → the processes seen running its shards
        self.log: list[CompareLog] = []
        if say is not None:
            where = "a local Ray instance" if options.address is None else f"the Ray cluster at {options.address}"
            say(f"executor: ray on {where}, {len(self._workers)} workers; latency is timed on this machine")

    def _check_workers(self) -> None:
        """Wait for every worker; refuse workers whose convopt, onnxruntime or numpy differ from this machine's
        (their figures could differ)."""
        import convopt

        try:
            described = ray.get([w.describe.remote() for w in self._workers], timeout=START_TIMEOUT_S)
        except GetTimeoutError:
            raise InputError(f"Ray could not start {len(self._workers)} workers of {self._cpus_per_worker} CPU(s) "
                             f"in {START_TIMEOUT_S:.0f} s; free CPUs on the cluster (`ray status`)") from None
        here = {"convopt": convopt.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}
        for d in described:
            for pkg, version in here.items():
                if d[pkg] != version:
                    raise InputError(f"the Ray worker {d['worker']} has {pkg} {d[pkg]}, this machine {version}; "
                                     "install the same versions on every node")

    def worker(self, shard: int) -> Any:
        return self._workers[shard % len(self._workers)]

    def put_model(self, model: onnx.ModelProto) -> Any:
        """The model's bytes in the object store, once per run."""
        blob = serialized(model)  # offloaded weights inside: a worker cannot read this process's file
        key = _digest(blob)
        if key not in self._models:
            self._models[key] = ray.put(blob)
        return self._models[key]

    def put_data(self, data: EvalData, plan: ShardPlan) -> list[Any]:
        """Each shard of ``data`` in the object store, once per run."""
        held = self._data.get(id(data))
        if held is not None and held[0]() is data and held[1] == plan:
            return held[2]
        refs = [ray.put(shard_data(data, a, b)) for a, b in plan.ranges]
        self._data[id(data)] = (weakref.ref(data), plan, refs)
        return refs

    def gather(self, refs: list[Any], sizes: Sequence[int], progress: Progress | None) -> list[Any]:
        """The tasks' results in shard order; progress in samples as shards finish. Ctrl-C cancels the queued
        tasks and kills the workers; a ConvOptError a worker returned is raised here."""
        total, done, pending = sum(sizes), 0, list(refs)
        size_of = {r.hex(): s for r, s in zip(refs, sizes)}
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                done += sum(size_of[r.hex()] for r in ready)
                if progress is not None:
                    progress(done, total)
            results = ray.get(refs)
        except KeyboardInterrupt:
            self.abort(refs)
            raise
        except RayActorError as e:
            raise InputError(f"a Ray worker died more than {MAX_RESTARTS} times ({type(e).__name__}); check the "
                             "nodes' memory and logs (`ray status`), or use --executor local") from None
        except RayTaskError as e:
            cause = e.cause
            raise (cause if isinstance(cause, Exception) else e) from None
        for r in results:
            if isinstance(r, ConvOptError):
                raise r
            run = getattr(r, "run", None)
            if isinstance(run, ShardRun):
                self._seen.setdefault(run.index % len(self._workers), set()).add(run.worker)
        return results

    def evaluation(self, spec: EvaluationSpec, session: ort.InferenceSession) -> RayEvaluation:
        plan = plan_shards(spec.data.n, spec.batch, self.options.shard_size)  # workers make their own sessions
        self._shards[spec.role] = plan.count
        if spec.metric is not None:
            _ship_metric(spec.metric)
        return RayEvaluation(self, spec, plan)

    def map_reduce(self, model: onnx.ModelProto, names: Sequence[str], data: EvalData, reducer: Reducer,
                   settings: OrtSettings) -> tuple[np.ndarray, ...]:
        """As LocalExecutor.map_reduce, each shard summed on a worker; the driver adds the shards in order."""
        from convopt.graph.edit import with_outputs

        sub = with_outputs(model, list(names))
        plan = plan_shards(data.n, session_batch(session_of(sub, settings), settings), self.options.shard_size)
        ref, shards = self.put_model(sub), self.put_data(data, plan)
        tasks = [self.worker(i).reduce.remote((ref, s), tuple(names), reducer, settings) for i, s in enumerate(shards)]
        return add_in_order(self.gather(tasks, [b - a for a, b in plan.ranges], None))

    def info(self) -> ExecutorInfo:
        restarts = sum(len(p) - 1 for p in self._seen.values())
        return ExecutorInfo("ray", self.options.address or "local", len(self._workers), self.options.shard_size,
                            dict(self._shards), tuple(self.log), restarts)

    def pids(self) -> list[int]:
        """The worker processes' ids (diagnostics, and the fault test)."""
        return [d["pid"] for d in ray.get([w.describe.remote() for w in self._workers])]

    def abort(self, refs: Sequence[Any] = ()) -> None:
        """Cancel the queued tasks and stop the workers (their running tasks die with them)."""
        for r in refs:
            try:
                ray.cancel(r)
            except Exception:  # noqa: BLE001 -- already finished or gone: nothing to cancel
                pass
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # noqa: BLE001 -- a worker already gone
                pass
        if self._started:
            ray.shutdown()


def _ship_metric(metric: TaskMetric) -> None:
    """A metric loaded from a FILE.py lives in a module the workers cannot import: send it by value."""
    import sys

    module = sys.modules.get(getattr(metric.fn, "__module__", "") or "")
    if module is not None and module.__name__.startswith("convopt_metric_"):
        ray.cloudpickle.register_pickle_by_value(module)
