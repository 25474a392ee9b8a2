"""Data-aware factors, pure numpy (no ONNX, no ONNX Runtime): every factor of every rewrite fitted to the
layer's output on calibration activations rather than to the kernel alone.

Statistics (``moments``): stream the layer's input rows (im2col patches, or feature vectors for 1×1 / Gemm)
into a ``MomentAccumulator``; its ``Moments`` hold the covariance C (fit under it, then ``bias_correction``: the
affine optimum) and give the uncentered second moment S = E[x xᵀ] on demand (fit under it and keep the bias).
Factors: ``whitened_lowrank`` / ``output_pca`` (1×1 conv, Gemm, MatMul), ``spatial_datafit`` (factorize),
``tucker2_datafit`` (bottleneck), ``depthwise_datafit`` (depthwise), ``split5x5_datafit`` (split5x5), each
returning the factor shapes of its weight-only twin in ``convopt.decompose``.
"""
from convopt.datafit.forms import depthwise_datafit, spatial_datafit, tucker2_datafit
from convopt.datafit.lowrank import (
    compose_lowrank,
    lowrank_pays,
    lowrank_svd,
    ls_second_factor,
    max_paying_rank,
    output_pca,
    principal_outputs,
    whitened_lowrank,
)
from convopt.datafit.moments import (
    DEFAULT_RIDGE,
    MomentAccumulator,
    Moments,
    Whitening,
    bias_correction,
    channel_moment,
    channel_patch_moments,
    vertical_moment,
    weighted_error,
    whiten,
)
from convopt.datafit.split import SPLIT_ALS_MAX_UNKNOWNS, split5x5_datafit, split5x5_method

__all__ = [
    "DEFAULT_RIDGE",
    "SPLIT_ALS_MAX_UNKNOWNS",
    "MomentAccumulator",
    "Moments",
    "Whitening",
    "bias_correction",
    "channel_moment",
    "channel_patch_moments",
    "compose_lowrank",
    "depthwise_datafit",
    "lowrank_pays",
    "lowrank_svd",
    "ls_second_factor",
    "max_paying_rank",
    "output_pca",
    "principal_outputs",
    "spatial_datafit",
    "split5x5_datafit",
    "split5x5_method",
    "tucker2_datafit",
    "vertical_moment",
    "weighted_error",
    "whiten",
    "whitened_lowrank",
]
