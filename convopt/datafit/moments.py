"""Activation statistics for data-aware factors, pure numpy: streaming second moments, robust whitening,
the data-weighted error and the bias (mean-shift) correction.

Algebra: a linear map y = W x + b (W (O, F), x a feature row, e.g. an im2col patch in (c, a, b) order) replaced
by Ŵ, b̂ errs by E‖ΔW x + Δb‖² with ΔW = W − Ŵ. Keeping b̂ = b this is tr(ΔW S ΔWᵀ), S = E[x xᵀ] the
*uncentered* second moment; with the corrected bias b̂ = b + ΔW μ (μ = E[x]) it is tr(ΔW C ΔWᵀ),
C = S − μ μᵀ the covariance. So: fit under S and keep the bias, or fit under C and correct the bias (the
affine optimum). Every function takes the moment to fit under as a plain (F, F) array.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

__all__ = [
    "DEFAULT_RIDGE",
    "Moments",
    "MomentAccumulator",
    "Whitening",
    "whiten",
    "symmetrize",
    "weighted_error",
    "bias_correction",
    "vertical_moment",
    "channel_moment",
    "channel_patch_moments",
]

DEFAULT_RIDGE = 1e-5
"""Relative ridge λ = DEFAULT_RIDGE · tr(S)/F added to S before whitening and to every least-squares Gram
(the same relative ridge as ``convopt.auto.lstsq``). It makes rank-deficient S (dead channels, ReLU zeros,
constant padding) invertible, and in directions the data never excites it lets the weights decide."""


@dataclass(frozen=True)
class Moments:
    """First and second moments of feature rows x (F,), in float64, held as the covariance: one (F, F) array
    (at F = 1728, a 3×3 layer of 192 inputs, 24 MiB), not S and C both. Every data-aware fit is under C; the
    uncentered S = C + μ μᵀ is made on demand (``second``).

    count: rows seen; mean (F,) = E[x]; covariance (F, F) = E[(x − μ)(x − μ)ᵀ]."""

    count: int
    mean: np.ndarray
    covariance: np.ndarray

    @classmethod
    def from_second(cls, count: int, mean: np.ndarray, second: np.ndarray) -> "Moments":
        """From the uncentered S (F, F) = E[x xᵀ]: C = S − μ μᵀ, computed in place on ``second`` (which then
        holds C: pass a copy to keep S)."""
        return cls(count, mean, _center(second, mean))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def second(self) -> np.ndarray:
        """S (F, F) = E[x xᵀ] = C + μ μᵀ (a new array)."""
        return self.about(np.zeros_like(self.mean))

    def about(self, center: np.ndarray) -> np.ndarray:
        """E[(x − c)(x − c)ᵀ] (F, F) = C + (μ − c)(μ − c)ᵀ for a fixed c (F,): c = 0 gives S, c = μ gives C
        (a new array)."""
        c = np.asarray(center, dtype=np.float64)
        if c.shape != self.mean.shape:
            raise ValueError(f"center must have shape {self.mean.shape}, got {c.shape}")
        d = self.mean - c
        return symmetrize(self.covariance + np.outer(d, d))

    def of_linear(self, W: np.ndarray) -> "Moments":
        """The moments of W x (W (O, F)): mean W μ, covariance W C Wᵀ."""
        Wd = np.asarray(W, dtype=np.float64)
        cov = Wd @ self.covariance @ Wd.T
        return Moments(self.count, Wd @ self.mean, (cov + cov.T) / 2.0)


def _center(S: np.ndarray, mean: np.ndarray, block: int = 256) -> np.ndarray:
    """S (F, F) float64 ← symmetrize(S − μ μᵀ − μ μᵀ + μ μᵀ) in place, rows a block at a time: the numbers of
    that expression (the covariance as convopt has always computed it) without its (F, F) temporaries.
    Returns S."""
    mu = np.asarray(mean, dtype=np.float64)
    if S.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"second moment must have shape {(mu.shape[0],) * 2}, got {S.shape}")
    for i in range(0, S.shape[0], block):
        rows = S[i:i + block]
        outer = np.outer(mu[i:i + block], mu)
        rows -= outer
        rows -= outer
        rows += outer
    return symmetrize(S)


class MomentAccumulator:
    """Streaming Σ x xᵀ, Σ x and the row count in float64, fed batch by batch with rows X (n, F)."""

    def __init__(self, dim: int) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.count = 0
        self._sum = np.zeros(self.dim)
        self._outer = np.zeros((self.dim, self.dim))

    def add(self, X: np.ndarray) -> None:
        """Add rows X (n, F) (any float dtype; products are formed in float64)."""
        Xd = np.asarray(X, dtype=np.float64)
        if Xd.ndim != 2 or Xd.shape[1] != self.dim:
            raise ValueError(f"rows must have shape (n, {self.dim}), got {Xd.shape}")
        if not np.all(np.isfinite(Xd)):
            raise ValueError("rows contain NaN or Inf")
        self._outer += Xd.T @ Xd
        self._sum += Xd.sum(axis=0)
        self.count += Xd.shape[0]

    def moments(self) -> Moments:
        """The moments of every row added so far."""
        if self.count == 0:
            raise ValueError("no rows were added: feed calibration rows with add() first")
        mean = self._sum / self.count
        return Moments.from_second(self.count, mean, symmetrize(self._outer / self.count))


@dataclass(frozen=True)
class Whitening:
    """A square root of the regularized moment: L Lᵀ = S + λ I (up to the eigenvalue floor, see ``whiten``).

    L (…, F, F): lower-triangular for "cholesky", Q Λ^½ for "eigen"; ridge: the absolute λ (one per matrix)."""

    L: np.ndarray
    ridge: np.ndarray
    method: str


def symmetrize(A: np.ndarray, block: int = 256) -> np.ndarray:
    """A (F, F) float64 ← (A + Aᵀ)/2 in place, block by block (the same numbers as the expression, without
    its two (F, F) temporaries: at F = 1728, 24 MiB each). Returns A."""
    F = A.shape[0]
    for i in range(0, F, block):
        for j in range(i, F, block):
            avg = (A[i:i + block, j:j + block] + A[j:j + block, i:i + block].T) / 2.0
            A[i:i + block, j:j + block] = avg
            A[j:j + block, i:i + block] = avg.T
    return A


def ridge_lambda(S: np.ndarray, rel: float) -> np.ndarray:
    """λ = rel · tr(S)/F per matrix (…,); an all-zero (or non-positive trace) S gets λ = 1."""
    F = S.shape[-1]
    tr = np.trace(S, axis1=-2, axis2=-1) / F
    return np.where(tr > 0, rel * tr, 1.0)


def whiten(S: np.ndarray, ridge: float = DEFAULT_RIDGE) -> Whitening:
    """Robust square root of S (…, F, F) symmetric PSD (a stack is whitened matrix by matrix).

    Cholesky of S + λ I with λ = ridge · tr(S)/F; if that fails (S indefinite beyond λ from round-off or an
    inconsistent estimate) the eigen square root L = Q max(Λ, λ)^½ (every eigenvalue floored at λ). Never
    fails on rank-deficient S; an all-zero S whitens to the identity (no data: the weights decide).
    """
    Sd = np.asarray(S, dtype=np.float64)
    if Sd.ndim < 2 or Sd.shape[-1] != Sd.shape[-2]:
        raise ValueError(f"S must be square (…, F, F), got {Sd.shape}")
    if not np.all(np.isfinite(Sd)):
        raise ValueError("S contains NaN or Inf")
    if float(ridge) <= 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    if Sd.ndim == 2:
        return _whiten_one(Sd, float(ridge))
    Sd = (Sd + np.swapaxes(Sd, -1, -2)) / 2.0
    lam = ridge_lambda(Sd, float(ridge))
    zero = np.trace(Sd, axis1=-2, axis2=-1) <= 0
    Sd = np.where(zero[..., None, None], 0.0, Sd)
    eye = np.eye(Sd.shape[-1])
    try:
        return Whitening(np.linalg.cholesky(Sd + lam[..., None, None] * eye), lam, "cholesky")
    except np.linalg.LinAlgError:
        vals, Q = np.linalg.eigh(Sd)
        vals = np.maximum(vals, lam[..., None])
        return Whitening(Q * np.sqrt(vals)[..., None, :], lam, "eigen")


def _regularized(S: np.ndarray, lam: float) -> np.ndarray:
    """(S + Sᵀ)/2 + λ I as one new (F, F) array (an all-zero-trace S counts as zero)."""
    A = symmetrize(S.copy()) if np.trace(S) > 0 else np.zeros_like(S)
    A.flat[:: A.shape[0] + 1] += lam
    return A


def _whiten_one(S: np.ndarray, rel: float) -> Whitening:
    """``whiten`` of one (F, F) matrix with one (F, F) array of workspace: LAPACK's Cholesky (potrf) runs in
    place on S + λI (its transpose, Fortran-ordered: the upper factor U of Sᵀ = S is Lᵀ), where numpy's
    cholesky holds two more (F, F) arrays and the expression S + λI two temporaries."""
    lam = ridge_lambda(S, rel)
    A = _regularized(S, float(lam))
    U, info = lapack.dpotrf(A.T, lower=0, clean=1, overwrite_a=1)
    if info == 0:
        return Whitening(U.T, lam, "cholesky")
    del A, U
    vals, Q = np.linalg.eigh(_regularized(S, 0.0))
    vals = np.maximum(vals, lam)
    return Whitening(Q * np.sqrt(vals)[None, :], lam, "eigen")


def _flat(W: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(W, dtype=np.float64)
    if arr.ndim < 2:
        raise ValueError(f"{name} must have an output axis and features, got shape {arr.shape}")
    return arr.reshape(arr.shape[0], -1)


def weighted_error(W: np.ndarray, W_hat: np.ndarray, S: np.ndarray) -> float:
    """Relative data-weighted error sqrt(tr(ΔW S ΔWᵀ) / tr(W S Wᵀ)), ΔW = W − Ŵ, with W, Ŵ (O, …)
    flattened to (O, F) in C order and S (F, F); 0.0 when tr(W S Wᵀ) = 0."""
    a, b = _flat(W, "W"), _flat(W_hat, "W_hat")
    if a.shape != b.shape or np.shape(S) != (a.shape[1], a.shape[1]):
        raise ValueError(f"shapes W {a.shape}, W_hat {b.shape}, S {np.shape(S)} do not match")
    Sd = np.asarray(S, dtype=np.float64)
    D = a - b
    den = float(np.sum((a @ Sd) * a))
    num = float(np.sum((D @ Sd) * D))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


def bias_correction(W: np.ndarray, W_hat: np.ndarray, bias: np.ndarray | None, mean: np.ndarray) -> np.ndarray:
    """b̂ (O,) = b + (W − Ŵ) μ: the bias that keeps the mean output over the calibration data.

    W, W_hat (O, …) flattened to (O, F); bias (O,) or None (zero); mean μ (F,), the mean feature row
    (for a conv, the mean im2col patch, border zeros included). Fold b̂ into the last factor's bias."""
    a, b = _flat(W, "W"), _flat(W_hat, "W_hat")
    mu = np.asarray(mean, dtype=np.float64)
    if a.shape != b.shape or mu.shape != (a.shape[1],):
        raise ValueError(f"shapes W {a.shape}, W_hat {b.shape}, mean {mu.shape} do not match")
    b0 = np.zeros(a.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    if b0.shape != (a.shape[0],):
        raise ValueError(f"bias must have shape ({a.shape[0]},), got {b0.shape}")
    return b0 + (a - b) @ mu


def _check_patch(S: np.ndarray, I: int, kh: int, kw: int) -> np.ndarray:
    Sd = np.asarray(S, dtype=np.float64)
    F = I * kh * kw
    if Sd.shape != (F, F):
        raise ValueError(f"patch moment must be ({F}, {F}) for I={I}, kernel {kh}x{kw}, got {Sd.shape}")
    return Sd.reshape(I, kh, kw, I, kh, kw)


def vertical_moment(S: np.ndarray, I: int, kh: int, kw: int) -> np.ndarray:
    """Second moment of vertical patches (I·kh, I·kh), ordered (i, a), averaged over the kw horizontal
    offsets: S_v[(i,a),(i',a')] = (1/kw) Σ_b S[(i,a,b),(i',a',b)], from the patch moment S (I·kh·kw)²."""
    S6 = _check_patch(S, I, kh, kw)
    return np.einsum("iabjcb->iajc", S6).reshape(I * kh, I * kh) / kw


def channel_moment(S: np.ndarray, I: int, kh: int, kw: int) -> np.ndarray:
    """Per-pixel input-channel second moment (I, I), averaged over the kh·kw kernel offsets, from the patch
    moment S (I·kh·kw)²: S_in[i,i'] = (1/(kh·kw)) Σ_{a,b} S[(i,a,b),(i',a,b)]."""
    S6 = _check_patch(S, I, kh, kw)
    return np.einsum("iabjab->ij", S6) / (kh * kw)


def channel_patch_moments(S: np.ndarray, I: int, kh: int, kw: int) -> np.ndarray:
    """Each input channel's own k×k patch moment (I, kh·kw, kh·kw): the diagonal blocks of S (I·kh·kw)²."""
    S6 = _check_patch(S, I, kh, kw)
    return np.einsum("iabicd->iabcd", S6).reshape(I, kh * kw, kh * kw)
