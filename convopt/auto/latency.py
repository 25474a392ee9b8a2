"""Per-layer latency: a Conv and each candidate rewrite of it as single-layer ORT models, timed interleaved,
cached by (geometry, form, ranks, batch, provider, threads, optimization level) in a LayerLatencyCache
(convopt.auto.latency_cache).

Weights do not change ORT's run time, so a repeated shape (SqueezeNet's fire modules, VGG's stages) is
measured once; the cache can persist to a JSON file between runs.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from convopt.auto.latency_cache import LayerLatencyCache
from convopt.core.deploy import FP32, Deployment
from convopt.core.plan import Choice, Plan, apply_plan, conv_table
from convopt.graph import ConvSpec, make_conv, tensor
from convopt.measure.latency import time_sessions
from convopt.measure.ort import OrtSettings, make_session

OPSET = 13


def conv_key(conv: ConvSpec, batch: int) -> str:
    """Everything about a Conv that decides its run time (not its weight values)."""
    assert conv.in_shape is not None and conv.pads is not None
    return conv.op.lower() + ":" + ",".join(str(v) for v in (
        batch, *conv.in_shape[1:], *conv.w_shape, *conv.strides, *conv.pads, *conv.dilations, conv.group,
        int(conv.B is not None)))


def settings_key(settings: OrtSettings) -> str:
    import onnxruntime as ort

    spin = "spin" if settings.spinning else "nospin"  # (caches from before this field never match)
    return f"{settings.provider}|t{settings.threads}|{settings.graph_optimization_level}|{spin}|ort{ort.__version__}"


def single_conv_model(conv: ConvSpec, batch: int | str) -> onnx.ModelProto:
    """A model with one input x (batch, C, H, W) → this Conv (its real weights and attributes) → one output y;
    ``batch`` a number, or a name for a dynamic batch. A Gemm: x (batch·rows, I) → Gemm → y."""
    if conv.op == "Gemm":
        return _single_gemm_model(conv, batch)
    assert conv.in_shape is not None and conv.pads is not None
    _, c, h, w = conv.in_shape
    inits = [tensor("W", conv.W)]
    b = None
    if conv.B is not None:
        inits.append(tensor("B", conv.B))
        b = "B"
    node = make_conv(conv.name, "x", "W", b, "y", kernel=conv.kernel, strides=conv.strides, pads=conv.pads,
                     dilations=conv.dilations, group=conv.group)
    g = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, c, h, w])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


def _single_gemm_model(conv: ConvSpec, batch: int | str) -> onnx.ModelProto:
    assert conv.x_shape is not None
    rows, I = conv.x_shape
    inits = [tensor("W", conv.W[:, :, 0, 0])] + ([tensor("B", conv.B)] if conv.B is not None else [])
    node = helper.make_node("Gemm", ["x", "W"] + (["B"] if conv.B is not None else []), ["y"], name=conv.name,
                            transB=1)
    lead: int | str = rows * batch if isinstance(batch, int) else batch
    g = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [lead, I])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


def layer_input_shape(conv: ConvSpec, batch: int) -> tuple[int, ...]:
    """The shape of the single-layer model's input ``x`` at ``batch`` samples."""
    if conv.op == "Gemm":
        assert conv.x_shape is not None
        return (conv.x_shape[0] * batch, conv.x_shape[1])
    assert conv.in_shape is not None
    return (batch, *conv.in_shape[1:])


def candidate_model(conv: ConvSpec, choice: Choice, batch: int | str) -> onnx.ModelProto:
    """The single-layer model of ``conv`` with ``choice`` applied: what auto times, and the vehicle of a
    candidate's refit on the layer's own input (the factors are read back, never the nodes)."""
    single = single_conv_model(conv, batch)
    n = batch if isinstance(batch, int) else 1
    assert conv.in_shape is not None and conv.out_shape is not None
    shapes = {"x": layer_input_shape(conv, n),
              "y": (layer_input_shape(conv, n)[0], conv.w_shape[0]) if conv.op == "Gemm" else (n, *conv.out_shape[1:])}
    return apply_plan(single, Plan({conv.name: choice}), conv_table(single, shapes)).model


def time_layers(models: list[onnx.ModelProto], in_shape: tuple[int, ...], settings: OrtSettings,
                seed: int = 0) -> list[float]:
    """Median ms per model, all timed interleaved in one run on the same random input."""
    x = np.random.default_rng(seed).standard_normal(in_shape).astype(np.float32)
    sessions = [make_session(m, settings) for m in models]
    stats = time_sessions(sessions, {"x": x}, settings)
    return [s.median_ms for s in stats]


def measure_candidates(
    conv: ConvSpec,
    candidates: list[tuple[str, onnx.ModelProto]],
    batch: int,
    settings: OrtSettings,
    cache: LayerLatencyCache,
    deploy: Deployment = FP32,
) -> tuple[float, dict[str, float]]:
    """(dense ms, {candidate key: ms}) for ``conv`` and its single-layer candidates (key: form/ranks string),
    all in the precision ``deploy`` says. Uncached ones are timed interleaved with the dense layer in one run;
    everything is stored in ``cache``."""
    skey = settings_key(settings) + ("" if not deploy.quantized else f"|{deploy.name}")
    base = conv_key(conv, batch)
    dense_k = f"{base}|dense|{skey}"
    dense = cache.get(dense_k)
    res: dict[str, float] = {}
    todo: list[tuple[str, onnx.ModelProto]] = []
    for key, m in candidates:
        v = cache.get(f"{base}|{key}|{skey}")
        if v is None:
            todo.append((key, m))
        else:
            res[key] = v
    if todo or dense is None:
        assert conv.in_shape is not None
        shape = layer_input_shape(conv, batch)
        models = [deploy.layer(m, shape) for m in [single_conv_model(conv, batch)] + [m for _, m in todo]]
        ms = time_layers(models, shape, settings)
        dense = ms[0]  # timed in the same interleaved run as the new candidates
        cache.put(dense_k, ms[0])
        for (key, _), v in zip(todo, ms[1:]):
            res[key] = v
            cache.put(f"{base}|{key}|{skey}", v)
    return float(dense), res


def describe(d: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items()))
