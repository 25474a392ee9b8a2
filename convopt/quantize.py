"""INT8 after factorization: ONNX Runtime's static quantization (QDQ, per-channel weights) calibrated on EvalData.

x_int8 = saturate(round(x / scale) + zero_point); Conv weights get one (scale, zero point) per output channel,
because depthwise and low-rank factors have channels of very different ranges.

ORT's guidance (``onnxruntime.quantization.quantize_static`` docstring, "Choosing parameters for CPU
inference"): QDQ format; on x86-64 uint8 activations with int8 weights (U8S8), and ``reduce_range`` (7-bit
weights) on CPUs without VNNI, where the AVX2 kernels can saturate the 16-bit intermediate sums; on ARM int8 for
both. Per-channel Q/DQ needs opset 13 (the ``axis`` attribute), so older models are upgraded with
``onnx.version_converter`` first. ORT's pre-processing (``quant_pre_process``: ORT's basic graph optimizations
and ONNX shape inference) runs before calibration, without symbolic shape inference (meant for transformers, and
it needs sympy).
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime
from onnx import helper, numpy_helper, version_converter
from onnx.onnx_cpp2py_export.version_converter import ConvertError as _ConvertError

from convopt.errors import DataError, InputError, RewriteError, UnsupportedModelError
from convopt.graph.offload import inlined
from convopt.io import default_opset, fits_in_one_protobuf, run_checker
from convopt.measure.data import EvalData, graph_inputs, input_dtype
from convopt.measure.ort import ORT_ERRORS, OrtSettings
from convopt.measure.samples import rows as sample_rows

PER_CHANNEL_OPSET = 13  # QuantizeLinear/DequantizeLinear gained ``axis`` (per-channel scales) in opset 13
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
CALIB_BATCH = 16  # samples per calibration run when the model's batch is dynamic
# CalibMaxIntermediateOutputs is not set: in onnxruntime 1.32 MinMax calibration drops the runs it collected each
# time that count is reached instead of merging their ranges (onnxruntime issue 18893). MinMax keeps only the
# ReduceMin/ReduceMax outputs of each run, so memory stays small without it.
PROBE_MIN_SPEEDUP = 1.1  # INT8 must beat FP32 by this on the probe to count as a fast path
_QUANTIZER_ERRORS = ORT_ERRORS + (
    AssertionError, KeyError, IndexError, TypeError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError
)

QType = Literal["uint8", "int8"]
CalibMethod = Literal["minmax", "entropy", "percentile"]


@dataclass(frozen=True)
class Int8Settings:
    """How to quantize. ``reduce_range`` None: ORT's advice for this CPU (True on x86 without VNNI)."""

    activation_type: QType = "uint8"
    weight_type: QType = "int8"
    per_channel: bool = True
    reduce_range: bool | None = None
    calibrate_method: CalibMethod = "minmax"
    preprocess: bool = True

    def __post_init__(self) -> None:
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise InputError(
                "ORT cannot quantize int8 activations with uint8 weights; use uint8 activations or int8 weights"
            )

    def resolved(self) -> Int8Settings:
        """These settings with ``reduce_range`` decided for this CPU."""
        if self.reduce_range is not None:
            return self
        return Int8Settings(self.activation_type, self.weight_type, self.per_channel,
                            not cpu_int8_path().vnni, self.calibrate_method, self.preprocess)


@dataclass(frozen=True)
class QuantizedModel:
    """The QDQ model and how it was made. ``changes``: one line per change beyond inserting Q/DQ pairs."""

    model: onnx.ModelProto
    settings: Int8Settings
    changes: tuple[str, ...]
    opset_before: int
    opset_after: int
    calib_samples: int
    qdq_nodes: int
    per_channel_weights: int
    seconds: float


@dataclass(frozen=True)
class CpuInt8Path:
    """What the CPU offers ORT's INT8 kernels (MLAS picks its kernels by the same instruction sets)."""

    machine: str
    isa: str  # e.g. "AVX-512 VNNI", "AVX2 (no VNNI)", "ARM dot product"
    vnni: bool  # 8-bit dot products accumulate without 16-bit saturation


def cpu_int8_path(flags: frozenset[str] | None = None, machine: str | None = None) -> CpuInt8Path:
    """Classify the CPU's INT8 instructions from its feature flags (default: /proc/cpuinfo on Linux)."""
    machine = (machine or platform.machine()).lower()
    flags = _cpu_flags() if flags is None else flags
    if machine in ("x86_64", "amd64", "i386", "i686"):
        for flag, isa in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI")):
            if flag in flags:
                return CpuInt8Path(machine, isa, True)
        isa = "AVX2 (no VNNI)" if "avx2" in flags else ("SSE4.1 (no VNNI)" if "sse4_1" in flags else "unknown x86")
        return CpuInt8Path(machine, isa, False)
    if machine in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return CpuInt8Path(machine, "ARM i8mm", True)
        if "asimddp" in flags:
            return CpuInt8Path(machine, "ARM dot product", True)
        return CpuInt8Path(machine, "ARM NEON (no dot product)", False)
    return CpuInt8Path(machine, f"unknown ({machine})", False)


def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


# ---------------------------------------------------------------------------------------------------------
# Quantization


class _Reader:
    """ORT CalibrationDataReader over EvalData: consecutive batches of ``batch`` samples; a fixed-batch model's
    short last batch is padded by repeating its last sample (min/max and histograms barely move)."""

    def __init__(self, data: EvalData, dtypes: dict[str, np.dtype], batch: int, fixed: bool) -> None:
        self.data, self.dtypes, self.batch, self.fixed, self.start = data, dtypes, batch, fixed, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= self.data.n:
            return None
        feeds = {}
        for name, dtype in self.dtypes.items():
            arr = sample_rows(self.data.inputs[name], self.start, self.start + self.batch).astype(dtype, copy=False)
            if self.fixed and arr.shape[0] < self.batch:
                arr = np.concatenate([arr, np.repeat(arr[-1:], self.batch - arr.shape[0], axis=0)])
            feeds[name] = np.ascontiguousarray(arr)
        self.start += self.batch
        return feeds

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)


def _fixed_dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in vi.type.tensor_type.shape.dim]


def _calib_reader(model: onnx.ModelProto, calib: EvalData) -> _Reader:
    """A reader feeding ``calib`` to ``model``, after checking that every input has an array that fits."""
    vis = graph_inputs(model)
    missing = [vi.name for vi in vis if vi.name not in calib.inputs]
    if missing:
        raise DataError(
            f"the calibration data ({calib.source}) has no array for model input(s) {missing}; it has "
            f"{sorted(calib.inputs)}"
        )
    if calib.n < 1:
        raise DataError(f"the calibration data ({calib.source}) has no samples; give at least one")
    if calib.ragged:  # samples of different shapes (checked against the model when loaded): one per batch
        return _Reader(calib, {vi.name: input_dtype(vi) for vi in vis}, 1, False)
    leads = set()
    for vi in vis:
        dims, arr = _fixed_dims(vi), calib.inputs[vi.name]
        if vi.type.tensor_type.HasField("shape") and (
            arr.ndim != len(dims) or any(d is not None and d != a for d, a in zip(dims[1:], arr.shape[1:]))
        ):
            raise DataError(
                f"calibration array for input '{vi.name}' has samples of shape {tuple(arr.shape[1:])}, but the "
                f"model declares {['?' if d is None else d for d in dims]}; give samples of the model's shape"
            )
        if dims and dims[0] is not None:
            leads.add(dims[0])
    if len(leads) > 1:
        raise DataError(f"the model's inputs have different fixed batch sizes {sorted(leads)}; cannot calibrate")
    return _Reader(calib, {vi.name: input_dtype(vi) for vi in vis}, leads.pop() if leads else CALIB_BATCH, bool(leads))


def _upgrade_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """``model`` converted to opset ``target`` by onnx.version_converter; UnsupportedModelError if it cannot be."""
    gone = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)})
    if gone:
        raise UnsupportedModelError(
            f"the model uses {', '.join(gone)}, which ONNX no longer defines, so it cannot be upgraded from opset "
            f"{default_opset(model)} to {target} for per-channel INT8; re-export it at opset {target} or later"
        )
    try:
        return version_converter.convert_version(model, target)
    except (RuntimeError, ValueError, onnx.checker.ValidationError, _ConvertError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedModelError(
            f"cannot upgrade the model from opset {default_opset(model)} to {target} for per-channel INT8 "
            f"({first}); re-export it at opset {target} or later"
        ) from None


def _flatten_gemm_biases(model: onnx.ModelProto) -> list[str]:
    """Reshape Gemm biases stored as (1, N) to (N,), the same broadcast, in place. ORT's per-channel bias check
    indexes the bias by output channel and fails on (1, N) ("truth value of an array ... is ambiguous").
    Returns what changed."""
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            users[name] = users.get(name, 0) + 1
    changed = []
    for n in model.graph.node:
        if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] in inits and users[n.input[2]] == 1:
            t = inits[n.input[2]]
            if len(t.dims) == 2 and t.dims[0] == 1:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(-1), t.name))
                changed.append(t.name)
    for vi in [*model.graph.input, *model.graph.value_info]:  # IR 3 lists weights as inputs, with shapes
        if vi.name in changed:
            size = int(np.prod([d.dim_value for d in vi.type.tensor_type.shape.dim]))
            vi.CopyFrom(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, [size]))
    return [f"Gemm bias {', '.join(changed)} stored as (N,) instead of (1, N) (for ORT's per-channel quantizer)"] \
        if changed else []


@contextmanager
def _private_dir() -> Iterator[Path]:
    """A temp folder only this process can read, removed however the block ends."""
    with tempfile.TemporaryDirectory(prefix="convopt-int8-") as d:
        os.chmod(d, 0o700)
        yield Path(d)


@contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """ORT's quantizer logs advice through the root logger ("Please consider to run pre-processing ..."); we
    follow it, so silence warnings for the duration."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _run_ort_quantizer(src: Path, work: Path, reader: _Reader, s: Int8Settings, changes: list[str]) -> onnx.ModelProto:
    """ORT's pre-processing (optional) and static quantization of the model at ``src``; appends to ``changes``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if s.preprocess:
        pre = work / "preprocessed.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        src = pre
    if s.per_channel:  # after pre-processing, which fuses MatMul + Add into Gemm
        fp32 = onnx.load(str(src))
        flattened = _flatten_gemm_biases(fp32)
        if flattened:
            changes.extend(flattened)
            src = work / "gemm_bias.onnx"
            onnx.save(fp32, str(src))
    qtypes = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    out = work / "int8.onnx"
    quantize_static(
        str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=s.per_channel,
        reduce_range=bool(s.reduce_range), activation_type=qtypes[s.activation_type],
        weight_type=qtypes[s.weight_type], calibrate_method=methods[s.calibrate_method],
    )
    return onnx.load(str(out))  # external data (if any) is read into memory before the folder goes


def _tidy(model: onnx.ModelProto) -> list[str]:
    """Raise the IR version to what the opsets need and drop opset imports no node uses (ORT's optimizer
    writes all of its domains). Returns what changed."""
    changes = []
    used = {n.domain for n in model.graph.node} | {""}
    keep = [op for op in model.opset_import if op.domain in used or op.domain == "ai.onnx"]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
    need = helper.find_min_ir_version_for(list(model.opset_import))
    if model.ir_version < need:
        changes.append(f"IR version {model.ir_version} -> {need} (opset {default_opset(model)} needs it); "
                       "weights are no longer listed as graph inputs")
        model.ir_version = need
    return changes


def _count_qdq(model: onnx.ModelProto) -> tuple[int, int]:
    """(Q/DQ nodes, DequantizeLinear nodes of a Conv weight with a per-channel scale)."""
    inits = {t.name: t for t in model.graph.initializer}
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    scales = [inits[n.input[1]].dims for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights and n.input[1] in inits]
    return sum(n.op_type in QDQ_OPS for n in model.graph.node), sum(len(d) == 1 and d[0] > 1 for d in scales)


def quantize_int8(model: onnx.ModelProto, calib: EvalData, settings: Int8Settings | None = None) -> QuantizedModel:
    """Quantize ``model`` (never mutated) to INT8 QDQ with ORT's static quantization, calibrated on every
    sample of ``calib`` (inputs[name]: (n, *per_sample_shape)). Models below opset 13 are upgraded first when
    weights are per-channel. Temporary files live in a private folder that is always removed."""
    t0 = time.perf_counter()
    model = inlined(model)  # ORT's quantizer reads the weights from the model's own file
    if not fits_in_one_protobuf(model):
        raise UnsupportedModelError("INT8 quantization of models of 2 GB or more is not supported; keep FP32")
    s = (settings or Int8Settings()).resolved()
    reader = _calib_reader(model, calib)
    before = default_opset(model)
    changes: list[str] = []
    work_model = model
    if s.per_channel and before < PER_CHANNEL_OPSET:
        work_model = _upgrade_opset(model, PER_CHANNEL_OPSET)
        changes.append(f"opset {before} -> {PER_CHANNEL_OPSET} (per-channel Q/DQ needs it; onnx.version_converter)")
    if s.preprocess:
        changes.append("ORT pre-processing: basic graph optimizations and shape inference (quant_pre_process)")
    with _private_dir() as work, _quiet_ort_logging():
        src = work / "fp32.onnx"
        onnx.save(work_model, str(src))
        try:
            q = _run_ort_quantizer(src, work, reader, s, changes)
        except _QUANTIZER_ERRORS as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedModelError(
                f"ONNX Runtime's quantizer failed on this model ({type(exc).__name__}: {first}); "
                "keep the FP32 model (drop --quantize)"
            ) from None
    changes.extend(_tidy(q))
    try:
        run_checker(q)
    except onnx.checker.ValidationError as exc:
        raise RewriteError(f"the INT8 model fails the ONNX checker (a convopt bug, please report): {exc}") from None
    qdq, per_channel = _count_qdq(q)
    return QuantizedModel(q, s, tuple(changes), before, default_opset(q), calib.n, qdq, per_channel,
                          round(time.perf_counter() - t0, 3))


# ---------------------------------------------------------------------------------------------------------
# Is INT8 faster here?


def _probe_model(seed: int = 0) -> onnx.ModelProto:
    """Three 3×3 Conv+Relu layers, 64 channels on 28×28: the shape of the work INT8 speeds up."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(64, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    shape = [1, 64, 28, 28]
    graph = helper.make_graph(nodes, "int8_probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", PER_CHANNEL_OPSET)], ir_version=7)


def probe_int8_speedup(settings: OrtSettings | None = None) -> float:
    """FP32 median / INT8 median of a small conv stack, timed interleaved (>1: INT8 faster)."""
    from convopt.measure.latency import measure_latency, speedup

    fp32 = _probe_model()
    rng = np.random.default_rng(1)
    calib = EvalData({"x": rng.random((8, 64, 28, 28), dtype=np.float32)}, None, "int8 probe (random)")
    q = quantize_int8(fp32, calib, Int8Settings(preprocess=False)).model
    feeds = {"x": calib.inputs["x"][:1]}
    base, cand = measure_latency([fp32, q], feeds, settings or OrtSettings(threads=1, repeats=30))
    return speedup(base, cand)


def int8_verdict(speedup: float, cpu: CpuInt8Path) -> str | None:
    """None when a probe ``speedup`` (FP32 / INT8 medians) counts as a fast INT8 path, else the reason."""
    if speedup >= PROBE_MIN_SPEEDUP:
        return None
    return (f"INT8 is not faster here: a probe conv stack ran {speedup:.2f}x against FP32 on this CPU "
            f"({cpu.isa}, onnxruntime {onnxruntime.__version__}); keeping FP32")


@functools.lru_cache(maxsize=4)
def int8_supported(settings: OrtSettings | None = None) -> str | None:
    """None when this CPU and ORT build run INT8 convolutions faster than FP32, else a one-line reason to keep
    FP32. ORT exposes no CPU-feature query, so this measures: a probe conv stack, INT8 against FP32, timed
    interleaved (about 0.2 s); the instruction set found in /proc/cpuinfo is named in the reason. Cached per
    process and settings."""
    s = settings or OrtSettings(threads=1, repeats=30)
    if s.provider != "CPUExecutionProvider":
        return f"INT8 is only checked on ORT's CPU execution provider, not {s.provider}; keeping FP32"
    return int8_verdict(probe_int8_speedup(s), cpu_int8_path())
