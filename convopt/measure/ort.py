"""ONNX Runtime sessions with explicit, recorded settings, and batched evaluation of EvalData.

A session's batch is the model's fixed leading dim (e.g. 1) when it has one, else ``settings.batch_size``;
ragged data (samples of different shapes) run one sample at a time.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from convopt.errors import DataError, InputError
from convopt.limits import trim_freed_memory
from convopt.measure.data import EvalData
from convopt.measure.mapped import evict
from convopt.measure.model_file import model_file
from convopt.measure.samples import ragged, rows as sample_rows

OPT_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(_ort_state, n, None) for n in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail"))
    if isinstance(c, type)
) + (RuntimeError, ValueError)
"""Exceptions ONNX Runtime raises when it refuses a model or its feeds (its own classes plus the Python
errors its wrapper raises). Catch these only around make_session / session.run."""

Progress = Callable[[int, int], None]
"""Called after each batch with (samples done, samples total)."""


@dataclass(frozen=True)
class OrtSettings:
    """Everything that decides what ORT measures. ``threads`` = 0 lets ORT pick intra-op threads (one per
    physical core); inter-op threads are always 1 and execution is sequential.

    ``spinning`` (off by default): whether idle intra-op threads busy-wait for work. Latency is timed with
    sessions interleaved, and each session owns its thread pool: with spinning on, the pools of the sessions
    that just ran keep spinning on the cores the next session needs. Measured on inception-3a at 2 threads,
    five identical sessions timed interleaved differed by up to 3.1× with spinning on, by 2 % with it off;
    on this 2-vCPU machine even a lone SqueezeNet session ran 8.2 ms with spinning, 4.4 ms without. The cost
    of turning it off: every op wakes its threads, so tiny models with many ops pay more (mnist-cntk at 2
    threads: 0.075 ms instead of 0.035). With one thread there is no pool and it makes no difference."""

    provider: str = "CPUExecutionProvider"
    threads: int = 0
    graph_optimization_level: str = "all"
    warmup: int = 3
    repeats: int = 20
    batch_size: int = 32
    latency_batch: int = 1  # samples per timed run when the model's batch is dynamic
    spinning: bool = False  # ORT intra-op thread spinning (see the class docstring)

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in OPT_LEVELS:
            raise InputError(
                f"unknown graph optimization level {self.graph_optimization_level!r}; use one of "
                f"{', '.join(OPT_LEVELS)}"
            )
        for name, low in (("threads", 0), ("warmup", 0), ("repeats", 1), ("batch_size", 1), ("latency_batch", 1)):
            if getattr(self, name) < low:
                raise InputError(f"ORT setting {name} must be at least {low}, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """The settings plus what they mean in this run (ORT version, thread meaning), for the report."""
        d: dict[str, Any] = asdict(self)
        d["threads_meaning"] = (
            "ORT default: one intra-op thread per physical core" if self.threads == 0
            else f"{self.threads} intra-op thread(s)"
        )
        d["inter_op_threads"] = 1
        d["execution_mode"] = "sequential"
        d["onnxruntime_version"] = ort.__version__
        return d


def make_session(model: onnx.ModelProto | bytes | Path, settings: OrtSettings, *, arena: bool = True
                 ) -> ort.InferenceSession:
    """An InferenceSession with every setting explicit. Unknown provider → InputError listing the available
    ones. ORT's own load errors propagate (the caller knows whether the model was the user's or ours).

    ``arena`` False: no CPU memory arena (ORT frees each run's tensors instead of keeping the arena grown to the
    largest run), for sessions that only compute outputs; sessions whose latency is timed keep ORT's default,
    the arena, as deployed. Either way the outputs are the same."""
    available = ort.get_available_providers()
    if settings.provider not in available:
        raise InputError(
            f"execution provider {settings.provider!r} is not available in this onnxruntime build; "
            f"use one of: {', '.join(available)}"
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = OPT_LEVELS[settings.graph_optimization_level]
    so.log_severity_level = 4  # fatal only: convopt reports ORT's errors itself, in one line
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
    so.enable_cpu_mem_arena = arena
    if arena and settings.provider == "CPUExecutionProvider" and shared_cpu_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    trim_freed_memory()  # what the caller freed (a model, a run's outputs) goes back before ORT's peak
    if isinstance(model, onnx.ModelProto):
        with model_file(model) as path:
            session = ort.InferenceSession(str(path), sess_options=so, providers=[settings.provider])
    else:
        source = str(model) if isinstance(model, Path) else model
        session = ort.InferenceSession(source, sess_options=so, providers=[settings.provider])
    _drop_model_bytes(session)
    trim_freed_memory()  # what ORT freed making it (about the model's size again) stays resident otherwise
    return session


ARENA_FIRST_REGION = 1 << 20
ARENA_REGION = 128 << 20
"""The shared arena's regions: ORT's default 1 MiB first one, which ORT never gives back, then one region of
128 MiB (ORT's size for the first region after a shrinkage, which :func:`shared_cpu_arena` sets off at once),
doubling only beyond it. Its pages become resident as runs touch them, and best-fit allocation within one
region reuses the same pages: timing ddddocr-det's 416×416 windows, several sessions interleaved, grew it by
45 MiB of resident memory, against 107 MiB in the default doubling regions and more in regions of the size
each run asks (a toy of five interleaved sessions: 72, 118 and 164 MiB). Unlike a 128 MiB *first* region, it
is given back by :func:`release_shared_arena`. Latency does not change: timed runs follow warm-up runs, which
leave the arena grown."""


@functools.cache  # once per process
def shared_cpu_arena() -> bool:
    """One CPU memory arena for every session convopt times, registered once per process (ORT's environment
    allocator, used by sessions with ``session.use_env_allocators``). Sessions timed side by side — a layer's
    candidates in their windows, the original model — then take their activations from one arena sized by the
    largest run, instead of each keeping its own grown to its largest run (ddddocr-det at 416×416: a window's
    arena is tens of MiB, and a layer's candidates are timed together). It is the same arena allocator a
    deployed session uses. False when ORT refuses it (then each session keeps its own, as before)."""
    try:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({
            "arena_extend_strategy": 0, "initial_chunk_size_bytes": ARENA_FIRST_REGION,
            "initial_growth_chunk_size_bytes": ARENA_REGION}))  # kNextPowerOfTwo; the growth after a shrinkage
        session, x, _ = _arena_probe()
        session.run(None, {"x": x})  # the first region exists ...
        _shrink_arena()  # ... and the next one will take ARENA_REGION
    except (*ORT_ERRORS, AttributeError, TypeError, KeyError):
        return False
    return True


def release_shared_arena() -> bool:
    """Give the shared arena's free regions back to the system (ORT's ``memory.enable_memory_arena_shrinkage``,
    on one run of a one-node session that uses the arena): between timings nothing runs on it, and its regions
    (a whole run's activations) would otherwise stay resident through the refits and the checks' other work.
    A region holding any tensor still alive (an output of a timed session, which is a view of the arena) is
    kept. False when there is no shared arena."""
    if not shared_cpu_arena():
        return False
    _shrink_arena()
    return True


def _shrink_arena() -> None:
    """One run of the probe with the shrinkage option, its output bound to memory of its own (nothing of the
    arena in use while it shrinks)."""
    session, x, y = _arena_probe()
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(y))
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    session.run_with_iobinding(binding, options)


@functools.cache
def _arena_probe() -> tuple[ort.InferenceSession, np.ndarray, np.ndarray]:
    """A session of one Identity node on the shared arena, its input and an output buffer of its own."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "arena_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1  # no thread pool of its own
    so.add_session_config_entry("session.use_env_allocators", "1")
    session = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    return session, np.zeros(1, np.float32), np.zeros(1, np.float32)


def _drop_model_bytes(session: ort.InferenceSession) -> None:
    """ORT's Python InferenceSession keeps the serialized model for its whole life, only to rebuild itself
    when a run fails in the execution provider and it falls back to another (onnxruntime_inference_collection:
    "TODO: This is bad as we're holding the memory indefinitely"): a second copy of every weight per session.
    Drop it, and the fallback with it: a failing provider is an error convopt reports, never a silent switch to
    another provider than the one the report names."""
    session.disable_fallback()  # (a session read from convopt's temporary file could not be rebuilt anyway)
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None


def _fixed_batch(inp: ort.NodeArg) -> int | None:
    """The input's leading dim when ORT reports it as a fixed number, else None (symbolic or unknown)."""
    lead = inp.shape[0] if inp.shape else None
    return lead if isinstance(lead, int) and lead > 0 else None


def session_batch(session: ort.InferenceSession, settings: OrtSettings) -> int:
    """Samples per run: the fixed leading dim of the inputs when there is one, else settings.batch_size."""
    fixed = {b for b in map(_fixed_batch, session.get_inputs()) if b is not None}
    if len(fixed) > 1:
        raise DataError(
            f"the model's inputs have different fixed batch sizes {sorted(fixed)}; convopt cannot batch them"
        )
    return fixed.pop() if fixed else settings.batch_size


def latency_batch(session: ort.InferenceSession, settings: OrtSettings) -> int:
    """Samples per timed run: the model's fixed batch when it has one, else settings.latency_batch."""
    fixed = {b for b in map(_fixed_batch, session.get_inputs()) if b is not None}
    return fixed.pop() if len(fixed) == 1 else settings.latency_batch


def data_batch(session: ort.InferenceSession, data: EvalData, settings: OrtSettings) -> int:
    """Samples per run over ``data``: one for ragged data (samples differ in shape: each runs alone, as the
    model takes it), else :func:`session_batch`."""
    return 1 if data.ragged else session_batch(session, settings)


def batch_feeds(session: ort.InferenceSession, data: EvalData, start: int, batch: int) -> dict[str, np.ndarray]:
    """Feeds for samples [start, start + batch); a short last batch of a fixed-batch model is padded by
    repeating its last sample (callers drop the padded outputs). Ragged samples are concatenated, so they
    must share a shape (``batch`` 1: always)."""
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        if inp.name not in data.inputs:
            raise DataError(
                f"the evaluation data ({data.source}) has no array for model input '{inp.name}'; "
                f"it has {sorted(data.inputs)}"
            )
        arr = sample_rows(data.inputs[inp.name], start, start + batch)
        if _fixed_batch(inp) is not None and arr.shape[0] < batch:
            arr = np.concatenate([arr, np.repeat(arr[-1:], batch - arr.shape[0], axis=0)])
        feeds[inp.name] = np.ascontiguousarray(arr)
    return feeds


def latency_feeds(session: ort.InferenceSession, data: EvalData, settings: OrtSettings) -> dict[str, np.ndarray]:
    """What latency is timed on: the first :func:`latency_batch` samples, or for ragged data its timing
    sample (one sample of a representative shape, the same in every data role: EvalData.timing)."""
    if data.ragged and data.timing is not None:
        return {k: np.ascontiguousarray(v) for k, v in data.timing.feeds.items()}
    return batch_feeds(session, data, 0, latency_batch(session, settings))


def run_model(
    session: ort.InferenceSession, data: EvalData, settings: OrtSettings, progress: Progress | None = None
) -> list[np.ndarray]:
    """Run every sample through ``session`` (one batch at a time) and return each output concatenated on
    axis 0, so output k has ``data.n`` rows. Ragged data run one sample at a time and each output is a ragged
    array of the n per-sample outputs, each as the model returned it for that sample alone. Mapped data have
    their pages dropped after each batch (:func:`convopt.measure.mapped.evict`): a run holds one batch of
    them, not all."""
    if data.ragged:
        return _run_ragged(session, data, progress)
    batch = session_batch(session, settings)
    chunks: list[list[np.ndarray]] = []
    n = data.n
    for start in range(0, n, batch):
        take = min(batch, n - start)
        outs = [np.atleast_1d(o) for o in session.run(None, batch_feeds(session, data, start, batch))]
        evict(data)  # mapped data (convopt.measure.mapped) leave memory once each batch is read
        chunks.append([o[:take] if o.shape[0] == batch else o for o in outs])
        if progress is not None:
            progress(start + take, n)
    return [np.concatenate([c[k] for c in chunks], axis=0) for k in range(len(chunks[0]))]


def _run_ragged(session: ort.InferenceSession, data: EvalData, progress: Progress | None) -> list[np.ndarray]:
    per: list[list[np.ndarray]] = []
    for i in range(data.n):
        per.append([np.atleast_1d(o) for o in session.run(None, batch_feeds(session, data, i, 1))])
        if progress is not None:
            progress(i + 1, data.n)
    return [ragged([p[k] for p in per]) for k in range(len(per[0]))]
