"""What auto mode learns from the fit data before it builds a candidate: each layer's input-patch moments
(streamed, pixels subsampled as batches arrive; the data-aware factors are fitted under them) and each
layer's sensitivity (how much relative error at the model's outputs one unit of relative error at the layer's
output causes, measured once by injecting noise there). A candidate's cost is then its own output error
on the fit data times its layer's sensitivity: no end-to-end run per candidate."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Sensitivity:
    """How a layer's output error reaches the model's outputs, from one noise-injection run on the fit data:
    ``rel``: relative L2 error of the outputs per unit of relative error at the layer; ``margin``: for a model
    with class scores, per fit sample, how much the original top-1 class's lead over the runner-up moves per
    unit of relative error at the layer (absolute value), else None."""

    rel: float
    margin: np.ndarray | None


def top1_margins(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 class per sample, its lead over the best other class) of class scores (n, C)."""
    top = np.argmax(scores, axis=1)
    rest = scores.copy()
    rest[np.arange(len(top)), top] = -np.inf
    return top, scores[np.arange(len(top)), top] - rest.max(axis=1)


def _lead(scores: np.ndarray, top: np.ndarray) -> np.ndarray:
    """How far class ``top`` leads every other class, per sample (negative: it lost the top-1)."""
    rest = scores.copy()
    rest[np.arange(len(top)), top] = -np.inf
    return scores[np.arange(len(top)), top] - rest.max(axis=1)


def sensitivities(model: onnx.ModelProto, convs: Sequence[ConvSpec], targets: Targets, evaluator: Evaluator,
                  seed: int = 0) -> dict[str, Sensitivity]:
    """Per layer: a fixed Gaussian noise of ``NOISE`` × each output channel's RMS (from the layer's sampled
    outputs in ``targets``) added to the layer's output, the model run on ``evaluator``'s data. One run per
    layer; the noise's realized relative size normalizes both figures."""
    from convopt.measure.metrics import class_scores
    from convopt.measure.ort import make_session, run_model

    rng = np.random.default_rng(seed)
    scored = evaluator.scored_index
    ref = None if scored is None else class_scores(evaluator.reference[scored])
    top, margin0 = (None, None) if ref is None else top1_margins(ref.astype(np.float64))
    out: dict[str, Sensitivity] = {}
    for c in convs:
        assert c.out_shape is not None
        y = targets.y[c.name].astype(np.float64)
        noise = rng.standard_normal(c.out_shape[1:]) * np.sqrt(np.mean(np.square(y), axis=0))[:, None, None] * NOISE
        rel = float(np.linalg.norm(noise) / np.sqrt(noise[0].size)) / max(float(np.sqrt(np.mean(np.square(y).sum(1)))), 1e-30)
        noisy = _with_noise(model, c, noise)
        outs = run_model(make_session(noisy, evaluator.settings), evaluator.data, evaluator.settings)
        err = sum(float(np.sum((o.astype(np.float64) - r) ** 2)) for o, r in zip(outs, evaluator.reference))
        norm = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in evaluator.reference)
        margin = None
        if ref is not None and top is not None and margin0 is not None:
            moved = np.abs(margin0 - _lead(class_scores(outs[scored]).astype(np.float64), top))  # type: ignore[union-attr,index]
            margin = moved / max(rel, 1e-12)
        out[c.name] = Sensitivity(float(np.sqrt(err / norm)) / max(rel, 1e-12) if norm > 0 else 0.0, margin)
    return out


@dataclass(frozen=True)
class CostModel:
    """The predicted end-to-end cost of a set of rewrites (layer → its own output error on the fit data),
    from the layers' sensitivities. Errors of independent layers add in quadrature. With class scores and a
    top-1 budget: the expected % of fit samples whose top-1 flips, each sample's lead perturbed by a Gaussian
    of the layers' combined margin shifts; otherwise the relative L2 error of the outputs."""

    sens: dict[str, Sensitivity]
    margins: np.ndarray | None = None  # the original's top-1 lead per fit sample (top-1 pricing)

    def __call__(self, errors: dict[str, float]) -> float:
        if self.margins is not None:
            var = np.zeros_like(self.margins)
            for layer, e in errors.items():
                m = self.sens[layer].margin
                if m is not None:
                    var += np.square(m * e)
            sd = np.sqrt(var)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(sd > 0, -self.margins / np.where(sd > 0, sd, 1.0), -np.inf)
            return 100.0 * float(np.mean(_normal_cdf(z)))
        return float(np.sqrt(sum((self.sens[layer].rel * e) ** 2 for layer, e in errors.items())))


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(z)
