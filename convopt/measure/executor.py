"""Where evaluation runs: the executor behind the Evaluator's "run a model over the data and compare it with
the original's outputs", and a generic map-reduce over the data.

``LocalExecutor`` (the default) runs every shard in this process, one after the other. ``RayExecutor``
(``convopt.measure.ray_executor``, the ``ray`` extra) runs them on the workers of a Ray cluster. Both cut the
data by the same ``ShardPlan`` and merge the same per-sample pieces in sample order, so they give the same
figures to the last bit. Latency is never an executor's business: the Evaluator times candidates on this
machine, interleaved with the original.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnx
import onnxruntime as ort

from convopt.errors import InputError, ModelLoadError
from convopt.measure.data import EvalData
from convopt.measure.model_file import model_file
from convopt.measure.ort import ORT_ERRORS, OrtSettings, Progress, make_session, session_batch
from convopt.measure.plugin import TaskMetric
from convopt.measure.shards import (
    DEFAULT_SHARD_SIZE, Comparison, Reducer, ShardPlan, ShardRun, add_in_order, compare_shard, merge, plan_shards,
    reduce_shard, run_shard, shard_data, timed_run,
)

ExecutorKind = Literal["local", "ray"]
LATENCY_NOTE = "timed on this machine (the one running convopt), interleaved with the original; never on workers"


@dataclass(frozen=True)
class ExecutorOptions:
    """How evaluation is executed: ``kind`` local (in-process) or ray; ``address`` of the Ray cluster (None:
    start a local Ray instance; ``auto``: join the running cluster this machine belongs to; else host:port);
    ``shard_size``: samples per shard, about; ``workers`` (Ray): None for one per ``threads`` CPUs of the
    cluster."""

    kind: ExecutorKind = "local"
    address: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise InputError(f"--executor must be local or ray, not {self.kind!r}")
        if self.address is not None and self.kind != "ray":
            raise InputError("--ray-address is for --executor ray; add --executor ray or drop --ray-address")
        if self.shard_size < 1 or (self.workers is not None and self.workers < 1):
            raise InputError("shard_size and workers must be at least 1")


@dataclass(frozen=True)
class Candidate:
    """A model to compare with the original: its proto, its ORT session on this machine (the local executor
    runs it; a remote one loads its own from the proto) and how messages name it. ``model`` None: the session
    is all there is (for an evaluation that does not ``needs_model``)."""

    model: onnx.ModelProto | None
    session: ort.InferenceSession
    what: str


@dataclass(frozen=True)
class EvaluationSpec:
    """What an evaluation compares against: the original model, the data, the ORT settings, the original's
    samples per run (``batch``: its fixed batch, else ``settings.batch_size``; the shard plan follows it), the
    output names, whether top-1/top-5 are judged on the labels (``labelled``), a task metric, and the data role
    (for the report)."""

    original: onnx.ModelProto
    data: EvalData
    settings: OrtSettings
    batch: int
    names: tuple[str, ...]
    labelled: bool
    metric: TaskMetric | None
    role: str


class Evaluation(Protocol):
    """The original's outputs on one data set, kept where its shards run; candidates compared against them."""

    plan: ShardPlan
    needs_model: bool  # whether ``compare`` reads the candidate's proto (a remote executor ships it)

    def compare(self, candidate: Candidate | None, progress: Progress | None = None) -> Comparison:
        """``candidate`` (None: the original itself) against the original's outputs, merged in sample order."""
        ...

    def reference_outputs(self) -> list[np.ndarray]:
        """The original's outputs over all samples, concatenated on axis 0 (fetched to this machine)."""
        ...


@dataclass(frozen=True)
class CompareLog:
    """One comparison (a candidate, or the original's reference run) on one data role: wall time on this
    machine from submitting the shards to the merged answer, and where and how long each shard ran."""

    role: str
    seconds: float
    runs: tuple[ShardRun, ...]


@dataclass(frozen=True)
class ExecutorInfo:
    """What the report records about execution: the executor, its workers, the shards per data role, the
    work done (per role: comparisons, wall seconds here, seconds spent in shards), and worker restarts."""

    kind: ExecutorKind
    address: str | None
    workers: int
    shard_size: int
    shards: dict[str, int] = field(default_factory=dict)  # data role → shards
    log: tuple[CompareLog, ...] = ()
    worker_restarts: int = 0  # worker processes restarted after a crash (their shards re-run)

    def work(self) -> dict[str, dict[str, Any]]:
        """Per data role: comparisons, and ``seconds``: wall time here and summed in shards (timings sit under
        a ``seconds`` key, as everywhere in the report, so diffs of two reports can leave them out)."""
        out: dict[str, dict[str, Any]] = {}
        for c in self.log:
            w = out.setdefault(c.role, {"comparisons": 0, "seconds": {"wall": 0.0, "shards": 0.0}})
            w["comparisons"] += 1
            w["seconds"]["wall"] += c.seconds
            w["seconds"]["shards"] += sum(r.seconds for r in c.runs)
        for w in out.values():
            w["seconds"] = {k: round(v, 3) for k, v in w["seconds"].items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "workers": self.workers, "shard_size": self.shard_size,
                "shards": dict(self.shards), "work": self.work(), "worker_restarts": self.worker_restarts,
                "latency": LATENCY_NOTE}


class Executor(Protocol):
    """Runs evaluations and map-reduces over shards of the data. ``evaluation`` gets the original's session on
    this machine (outputs only, no arena) for an executor that runs the reference here; it must not keep it
    beyond the reference run."""

    def evaluation(self, spec: EvaluationSpec, session: ort.InferenceSession) -> Evaluation: ...

    def map_reduce(self, model: onnx.ModelProto, names: Sequence[str], data: EvalData, reducer: Reducer,
                   settings: OrtSettings) -> tuple[np.ndarray, ...]: ...

    def info(self) -> ExecutorInfo: ...

    def close(self) -> None: ...


def offset_progress(progress: Progress | None, done: int, total: int) -> Progress | None:
    """A shard's progress callback reporting in samples of the whole data."""
    if progress is None:
        return None
    return lambda d, _t: progress(done + d, total)


def session_of(model: onnx.ModelProto | Path, settings: OrtSettings) -> ort.InferenceSession:
    """An ORT session of a model convopt made itself (a sub-model), to compute outputs (never timed: no memory
    arena); ORT refusing it is a ModelLoadError."""
    try:
        return make_session(model, settings, arena=False)
    except ORT_ERRORS as e:
        raise ModelLoadError(f"ONNX Runtime cannot load the model: {e}") from None


class LocalEvaluation:
    """Every shard in this process, one after the other; the original's outputs kept here (its session is
    dropped once they are computed)."""

    needs_model = False  # the candidate's session runs here

    def __init__(self, spec: EvaluationSpec, plan: ShardPlan, log: list[CompareLog],
                 session: ort.InferenceSession) -> None:
        self.spec, self.plan, self._log = spec, plan, log
        self._shards = [shard_data(spec.data, a, b) for a, b in plan.ranges]
        self._refs: list[list[np.ndarray]] | None = None
        self._session: ort.InferenceSession | None = session

    def _run(self, session: ort.InferenceSession, what: str | None, progress: Progress | None,
             index: int) -> list[np.ndarray]:
        shard, (start, _) = self._shards[index], self.plan.ranges[index]
        return run_shard(session, shard, self.spec.settings, what, offset_progress(progress, start, self.plan.n))

    def compare(self, candidate: Candidate | None, progress: Progress | None = None) -> Comparison:
        t0 = time.perf_counter()
        refs = self._refs if self._refs is not None else []
        parts = []
        for i, (start, stop) in enumerate(self.plan.ranges):
            t_shard = time.perf_counter()
            if self._refs is None:  # the original's outputs, once: part of its shard's work
                assert self._session is not None
                refs.append(self._run(self._session, None, progress if candidate is None else None, i))
            ref = refs[i]
            cand = ref if candidate is None else self._run(candidate.session, candidate.what, progress, i)
            parts.append(compare_shard(ref, cand, self._shards[i], self.spec.names, labelled=self.spec.labelled,
                                       metric=self.spec.metric, what=None if candidate is None else candidate.what,
                                       run=timed_run(i, start, stop, t_shard)))
        self._refs, self._session = refs, None  # the reference is all the original's session was for
        cmp = merge(parts)
        self._log.append(CompareLog(self.spec.role, time.perf_counter() - t0, cmp.runs))
        return cmp

    def reference_outputs(self) -> list[np.ndarray]:
        if self._refs is None:
            self.compare(None)
        assert self._refs is not None
        return [np.concatenate([r[k] for r in self._refs], axis=0) for k in range(len(self._refs[0]))]


class LocalExecutor:
    """In-process execution (the default): the same shards as on a cluster, run one after the other."""

    def __init__(self, shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        self.shard_size = shard_size
        self._shards: dict[str, int] = {}
        self._log: list[CompareLog] = []

    def evaluation(self, spec: EvaluationSpec, session: ort.InferenceSession) -> LocalEvaluation:
        plan = plan_shards(spec.data.n, spec.batch, self.shard_size)
        self._shards[spec.role] = plan.count
        return LocalEvaluation(spec, plan, self._log, session)

    def map_reduce(self, model: onnx.ModelProto, names: Sequence[str], data: EvalData, reducer: Reducer,
                   settings: OrtSettings) -> tuple[np.ndarray, ...]:
        """Σ over the data of ``reducer`` applied, batch by batch, to the tensors ``names`` of ``model`` (graph
        outputs or intermediate tensors), summed per shard, then over the shards in sample order."""
        from convopt.graph.edit import pruned

        with model_file(*pruned(model, list(names))) as path:  # the model's own weights, written: no pruned copy
            session = session_of(path, settings)
        plan = plan_shards(data.n, session_batch(session, settings), self.shard_size)
        return add_in_order(reduce_shard(session, names, shard_data(data, a, b), reducer, settings)
                            for a, b in plan.ranges)

    def info(self) -> ExecutorInfo:
        return ExecutorInfo("local", None, 1, self.shard_size, dict(self._shards), tuple(self._log))

    def close(self) -> None:
        pass


def open_executor(options: ExecutorOptions, threads: int, say: Callable[[str], None] | None = None) -> Executor:
    """The executor ``options`` ask for, its workers running ORT on ``threads`` threads each (0: one). Ray is
    imported only when asked for: InputError when the ``ray`` extra is not installed or the cluster cannot be
    reached."""
    if options.kind == "local":
        return LocalExecutor(options.shard_size)
    from convopt.measure.ray_executor import RayExecutor

    return RayExecutor(options, threads, say)
