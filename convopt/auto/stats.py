"""What auto mode learns from the fit data: each layer's input-patch moments (streamed, pixels subsampled as
batches arrive; the data-aware factors are fitted under them) and each layer's sensitivity (how much the
model's outputs move per unit of relative error at the layer's output, measured once per layer with one of
its rewrites). A candidate's cost is then its own output error on the fit data times its layer's
sensitivity: one end-to-end run per layer, not per candidate."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from convopt.auto.lstsq import ConvGeom, im2col_at, sample_positions
from convopt.auto.refit import iter_batches, layer_rngs
from convopt.datafit import MomentAccumulator, Moments
from convopt.graph import ConvSpec
from convopt.graph.linear import nchw
from convopt.measure.data import EvalData
from convopt.measure.evaluator import Evaluator
from convopt.measure.ort import OrtSettings

MOMENT_BYTES = 32 << 20  # least moments accumulated in one pass (float64 F×F each; a caller may allow more)
MIN_ROWS, MAX_ROWS = 4000, 16000  # patch rows sampled per layer (see rows_for)


def geometry(conv: ConvSpec) -> ConvGeom:
    assert conv.pads is not None
    return ConvGeom(conv.kernel, conv.strides, conv.pads, conv.dilations)


def _groups(convs: Sequence[ConvSpec], max_bytes: int) -> Iterator[list[ConvSpec]]:
    """Layers in graph order, grouped so that one group's moments fit in ``max_bytes``."""
    group: list[ConvSpec] = []
    size = 0
    for c in convs:
        f = int(np.prod(c.w_shape[1:]))
        if group and size + 8 * f * f > max_bytes:
            yield group
            group, size = [], 0
        group.append(c)
        size += 8 * f * f
    if group:
        yield group


def rows_for(features: int) -> int:
    """Patch rows to sample for a layer with ``features`` inputs per output pixel: twice the features (a
    well-conditioned moment), between MIN_ROWS and MAX_ROWS (the cost is rows × features²)."""
    return int(min(max(2 * features, MIN_ROWS), MAX_ROWS))


def patch_moments(model: onnx.ModelProto, convs: Sequence[ConvSpec], data: EvalData, settings: OrtSettings,
                  seed: int = 0, max_bytes: int = MOMENT_BYTES, sample_bytes: int = 0
                  ) -> Iterator[dict[str, Moments]]:
    """Moments of each layer's input patches (im2col rows at sampled output pixels, ``rows_for`` the layer in
    all, spread over the samples), yielded a group of layers at a time (one pass over ``data`` per group; a
    group's moments take at most ``max_bytes``), so a caller can use and drop them before the next group.
    ``sample_bytes``: what a run of ``model`` holds per sample (``run_bytes``), which bounds the batches."""
    rngs = layer_rngs(seed, [c.name for c in convs])
    for group in _groups(convs, max_bytes):
        acc = {c.name: MomentAccumulator(int(np.prod(c.w_shape[1:]))) for c in group}
        per = {c.name: -(-rows_for(acc[c.name].dim) // max(data.n, 1)) for c in group}
        for _, xs in iter_batches(model, [c.x for c in group], data, settings, sample_bytes=sample_bytes):
            for c, x in zip(group, xs):
                x = nchw(x, c, 1 if data.ragged else None)
                oh, ow = geometry(c).out_hw(x.shape[2], x.shape[3])  # this batch's own size (ragged: per sample)
                pos = sample_positions(x.shape[0], oh, ow, per[c.name], rngs[c.name])
                acc[c.name].add(im2col_at(x, geometry(c), pos))
        yield {name: acc.pop(name).moments() for name in list(acc)}  # each accumulator freed as its moments exist


@dataclass(frozen=True)
class Sensitivity:
    """How a layer's output error reaches the model's outputs, from one run of a rewrite on the fit data:
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


def sensitivity(rewritten: onnx.ModelProto, local_error: float, evaluator: Evaluator) -> Sensitivity:
    """How a layer's output error reaches the model's outputs: ``rewritten`` is the model with one rewrite of
    the layer, whose own relative output error on the fit data is ``local_error``; run on ``evaluator``'s
    data, the outputs' relative L2 error and each sample's top-1 lead shift, per unit of local error. A real
    rewrite of the layer (not white noise) carries the spatial correlation its error has, which pooling
    layers do not average away."""
    from convopt.measure.metrics import class_scores, output_partials
    from convopt.measure.ort import make_session, run_model

    outs = run_model(make_session(rewritten, evaluator.settings, arena=False), evaluator.data, evaluator.settings)
    if evaluator.data.ragged:  # one array per sample (convopt.measure.samples): the same sums, sample by sample
        parts = output_partials(evaluator.reference, outs, n=evaluator.data.n)
        err, norm = (sum(float(np.sum(getattr(p, f))) for p in parts) for f in ("diff_sq", "ref_sq"))
    else:
        err = sum(float(np.sum((o.astype(np.float64) - r) ** 2)) for o, r in zip(outs, evaluator.reference))
        norm = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in evaluator.reference)
    unit = max(local_error, 1e-12)
    rel = float(np.sqrt(err / norm)) / unit if norm > 0 else 0.0
    scored = evaluator.scored_index
    ref = None if scored is None else class_scores(evaluator.reference[scored])
    if ref is None:
        return Sensitivity(rel, None)
    top, lead = top1_margins(ref.astype(np.float64))
    moved = np.abs(lead - _lead(class_scores(outs[scored]).astype(np.float64), top))  # type: ignore[union-attr,index]
    return Sensitivity(rel, moved / unit)


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
