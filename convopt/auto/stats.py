"""What auto mode learns from the fit data before it builds a candidate: each layer's input-patch moments
(streamed, pixels subsampled as batches arrive; the data-aware factors are fitted under them) and each
layer's sensitivity (how much relative error at the model's outputs one unit of relative error at the layer's
output causes, measured once by injecting noise there). A candidate's cost is then its own output error
on the fit data times its layer's sensitivity: no end-to-end run per candidate."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from convopt.auto.lstsq import ConvGeom, im2col_at, sample_positions
from convopt.auto.refit import Targets, iter_batches
from convopt.datafit import MomentAccumulator, Moments
from convopt.graph import ConvSpec, copy_model
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.ort import OrtSettings

MOMENT_BYTES = 512 << 20  # moments accumulated in one pass over the data (float64 F×F each); more: more passes
NOISE = 0.1  # relative size of the noise injected at a layer's output to measure its sensitivity


def geometry(conv: ConvSpec) -> ConvGeom:
    assert conv.pads is not None
    return ConvGeom(conv.kernel, conv.strides, conv.pads, conv.dilations)


def _groups(convs: Sequence[ConvSpec], max_bytes: int) -> Iterator[list[ConvSpec]]:
    """Layers in graph order, grouped so that one group's moments fit in ``max_bytes``."""
    group: list[ConvSpec] = []
    size = 0
    for c in convs:
        f = int(np.prod(c.W.shape[1:]))
        if group and size + 8 * f * f > max_bytes:
            yield group
            group, size = [], 0
        group.append(c)
        size += 8 * f * f
    if group:
        yield group


def patch_moments(model: onnx.ModelProto, convs: Sequence[ConvSpec], data: EvalData, settings: OrtSettings,
                  rows_per_sample: int, seed: int = 0, max_bytes: int = MOMENT_BYTES) -> Iterator[dict[str, Moments]]:
    """Moments of each layer's input patches (im2col rows at ``rows_per_sample`` sampled output pixels per
    sample), yielded a group of layers at a time (one pass over ``data`` per group; a group's moments take at
    most ``max_bytes``), so a caller can use and drop them before the next group."""
    rng = np.random.default_rng(seed)
    for group in _groups(convs, max_bytes):
        acc = {c.name: MomentAccumulator(int(np.prod(c.W.shape[1:]))) for c in group}
        for _, xs in iter_batches(model, [c.x for c in group], data, settings):
            for c, x in zip(group, xs):
                assert c.out_shape is not None
                pos = sample_positions(x.shape[0], c.out_shape[2], c.out_shape[3], rows_per_sample, rng)
                acc[c.name].add(im2col_at(x, geometry(c), pos))
        yield {name: a.moments() for name, a in acc.items()}


def _with_noise(model: onnx.ModelProto, conv: ConvSpec, noise: np.ndarray) -> onnx.ModelProto:
    """``model`` with ``noise`` (C, H, W) added to ``conv``'s output, for every sample (an Add right after
    the layer, so the graph stays in topological order)."""
    m = copy_model(model)
    pre, name = conv.y + "/convopt_pre_noise", conv.y + "/convopt_noise"
    nodes = list(m.graph.node)
    at = next(i for i, n in enumerate(nodes) if conv.y in n.output)
    nodes[at].output[list(nodes[at].output).index(conv.y)] = pre
    nodes.insert(at + 1, onnx.helper.make_node("Add", [pre, name], [conv.y], name=name))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.append(numpy_helper.from_array(noise.astype(np.float32)[None], name))
    if m.ir_version < 4:
        m.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, *noise.shape]))
    return m


def sensitivities(model: onnx.ModelProto, convs: Sequence[ConvSpec], targets: Targets, evaluator: Evaluator,
                  seed: int = 0) -> dict[str, float]:
    """Per layer: relative L2 error of the model's outputs on ``evaluator``'s data / relative size of a fixed
    Gaussian noise (``NOISE`` of each output channel's RMS, from the layer's sampled outputs in ``targets``)
    added to the layer's output. One end-to-end run per layer."""
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for c in convs:
        assert c.out_shape is not None
        rms = np.sqrt(np.mean(np.square(targets.y[c.name].astype(np.float64)), axis=0))  # (O,)
        noise = rng.standard_normal(c.out_shape[1:]) * rms[:, None, None] * NOISE
        y_norm = float(np.sqrt(np.mean(np.square(targets.y[c.name].astype(np.float64)).sum(axis=1))))
        rel = float(np.linalg.norm(noise) / np.sqrt(noise[0].size) / max(y_norm, 1e-30))
        err = evaluator.measure(_with_noise(model, c, noise), f"sensitivity of {c.name}", timed=False)
        out[c.name] = float(err.accuracy.rel_l2_error or 0.0) / max(rel, 1e-12)
    return out
