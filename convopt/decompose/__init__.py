"""Pure-numpy factorizations of Conv kernels (no ONNX): W ≈ compose(factors), exact at full rank.

Algebra, with W of ONNX layout (O, I, kh, kw) and ONNX Conv being a cross-correlation
``y[o](p) = Σ_{i,u} W[o,i,u] · x[i](p·stride + u·dilation − pad_begin)``:

* spatial SVD (Tai et al. 2016):  W[o,i,a,b] = Σ_r H[o,r,0,b] · V[r,i,a,0]
  — SVD of M[(i,a),(o,b)] = W[o,i,a,b], a kh×1 conv (I→R) followed by a 1×kw conv (R→O);
* Tucker-2 bottleneck:            W = core ×_I U_in ×_O U_out
  — 1×1 conv (I→r_in, weight U_inᵀ), kh×kw core (r_in→r_out), 1×1 conv (r_out→O, weight U_out);
* depthwise (MobileNet):          W[o,i] = Σ_j P[o,i,j] · D[i,j]
  — per-input-channel SVD of W[:, i] as an (O × kh·kw) matrix; a depthwise kh×kw conv with
  multiplier m (channel i·m + j carries D[i, j]) followed by a pointwise 1×1 conv (I·m → O);
* split5x5 (VGG / Inception-v3):  W[o,i,w] = Σ_r Σ_{u+v=w} A[r,i,u] · B[o,r,v]   (u, v ∈ {0,1,2}², w ∈ {0..4}²)
  — a 3×3 conv A (I→R) with the original 5×5 pads (2) followed by a 3×3 conv B (R→O) with pad 0.
  Derivation: z[r](q) = Σ_{i,u} A[r,i,u] x[i](q + u − 2),  y[o](p) = Σ_{r,v} B[o,r,v] z[r](p + v)
  = Σ_{i,u,v} (Σ_r B[o,r,v] A[r,i,u]) x[i](p + (u+v) − 2), i.e. a 5×5 conv with pad 2 whose
  offset w = u + v collects every (u, v) pair: a full 2-D convolution in index space, no flip.
  Because z is computed on the zero-padded input with pad 2 and B uses no padding, this is exact
  at the borders too (3×3 pad 1 + 3×3 pad 1 is not: the one-pixel border ring differs). A stride
  goes on B; a dilation d goes on both 3×3 convs, with pad 2d on A.

Every factor is computed in float64 and returned as a C-contiguous float32 array. Ranks larger
than the exact (full) rank are clamped, so callers should read the rank off the factor shapes.
"""
from __future__ import annotations

from convopt.decompose.base import align_rank, one_blas_thread, rank_for_energy, relative_error, svd_reuse, thin_svd
from convopt.decompose.kernels import (compose_depthwise, compose_spatial, compose_tucker2, depthwise_spectrum,
                                       depthwise_svd, spatial_svd, spatial_svd_spectrum, tucker2, tucker2_spectra)
from convopt.decompose.split5x5 import compose_split5x5, split5x5_als, split5x5_rank_for_error, split5x5_shift

__all__ = [
    "relative_error",
    "thin_svd",
    "spatial_svd",
    "spatial_svd_spectrum",
    "compose_spatial",
    "tucker2",
    "tucker2_spectra",
    "compose_tucker2",
    "depthwise_svd",
    "depthwise_spectrum",
    "compose_depthwise",
    "compose_split5x5",
    "split5x5_shift",
    "split5x5_als",
    "split5x5_rank_for_error",
    "rank_for_energy",
    "align_rank",
    "svd_reuse",
    "one_blas_thread",
]
