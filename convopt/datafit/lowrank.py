"""Whitened (truncation-aware) low rank of a linear map, pure numpy: Ŵ = U_r U_rᵀ W with U_r the top-r left
singular vectors of W L, S + λI = L Lᵀ (SVD-LLM), which minimises tr((W − Ŵ) S (W − Ŵ)ᵀ) over rank r.

Why the projection form: (W L)_r = U_r U_rᵀ W L, so Ŵ = (W L)_r L⁻¹ = U_r U_rᵀ W needs no inverse of L, and
its squared weighted error is exactly Σ_{k>r} σ_k(W L)². With S = I it is the truncated SVD of W; at
r = min(O, F) it is W (L is invertible thanks to the ridge). Also here: the 1×1 conv / Gemm low rank
I→r→O, the output-PCA variant of Zhang et al. 2015, and the least-squares second factor given a first.
"""
from __future__ import annotations

import numpy as np

from convopt.datafit.moments import DEFAULT_RIDGE, Moments, ridge_lambda, whiten
from convopt.decompose import thin_svd

__all__ = [
    "principal_outputs",
    "whitened_lowrank",
    "lowrank_svd",
    "compose_lowrank",
    "output_pca",
    "lowrank_pays",
    "max_paying_rank",
    "ls_second_factor",
]


def _mat(W: np.ndarray, name: str = "W") -> np.ndarray:
    arr = np.asarray(W, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _rank(rank: int, limit: int) -> int:
    r = int(rank)
    if r < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return min(r, limit)


def principal_outputs(W: np.ndarray, S: np.ndarray, rank: int, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """U (O, r): the top-r left singular vectors of W L (W (O, F), S (F, F) = L Lᵀ − λI, see ``whiten``),
    i.e. the leading eigenvectors of W (S + λI) Wᵀ (the PCA of the responses W x). r = min(rank, O, F).

    When F > O, computed as those eigenvectors, from W S Wᵀ (O, O): no (F, F) factor of S is made (for a 3×3
    layer of 192 inputs, F = 1728: 24 MiB each). The same subspace as the SVD of W L whenever S + λI is positive
    definite, as a covariance is (S is read as (S + Sᵀ)/2, an all-zero-trace S as zero, λ as ``whiten``'s); at
    full rank (r = O) every eigenvector, so Ŵ = U Uᵀ W = W. When F ≤ O, the SVD of W L itself."""
    Wd = _mat(W)
    if np.shape(S) != (Wd.shape[1], Wd.shape[1]):
        raise ValueError(f"S must be ({Wd.shape[1]}, {Wd.shape[1]}) for W {Wd.shape}, got {np.shape(S)}")
    if float(ridge) <= 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    r = _rank(rank, min(Wd.shape))
    if Wd.shape[1] <= Wd.shape[0]:  # F ≤ O: S's (F, F) factor is no larger than the responses' (O, O)
        WL = (whiten(S, ridge).L.T @ Wd.T).T  # W L, a new array in Fortran order: factored in place, with
        U = thin_svd(WL, disposable=True)[0]  # LAPACK's least workspace, once per (W, S) in decompose.svd_reuse
        return U[:, :r].copy()
    Sd = np.asarray(S, dtype=np.float64)
    if not np.all(np.isfinite(Sd)):
        raise ValueError("S contains NaN or Inf")
    lam = float(ridge_lambda(Sd, float(ridge)))
    M = lam * (Wd @ Wd.T)
    if np.trace(Sd) > 0:
        WSW = (Wd @ Sd) @ Wd.T
        M += (WSW + WSW.T) / 2.0
    Q = np.linalg.eigh(M)[1]  # eigenvalues ascending
    return Q[:, ::-1][:, :r].copy()


def whitened_lowrank(
    W: np.ndarray, S: np.ndarray, rank: int, ridge: float = DEFAULT_RIDGE
) -> tuple[np.ndarray, np.ndarray]:
    """y = W x (W (O, I), S (I, I) the second moment of x) → first A (r, I), second B (O, r), Ŵ = B A.

    Minimises tr((W − B A) S (W − B A)ᵀ) over rank r = min(rank, O, I) (A = Uᵀ W, B = U, U from
    ``principal_outputs``). Pass the covariance as S and follow with ``bias_correction`` for the affine
    optimum. A 1×1 conv has W = weight[:, :, 0, 0]; a Gemm y = x Wᵀ (transB=1) has W as stored; a MatMul
    y = x M has W = Mᵀ. Factors float64."""
    Wd = _mat(W)
    U = principal_outputs(Wd, S, rank, ridge)
    return U.T @ Wd, U.copy()


def lowrank_svd(W: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight-only low rank (the S = I case): W (O, I) → A (r, I) = √Σ_r V_rᵀ, B (O, r) = U_r √Σ_r."""
    Wd = _mat(W)
    r = _rank(rank, min(Wd.shape))
    U, s, Vt = np.linalg.svd(Wd, full_matrices=False)
    sq = np.sqrt(s[:r])
    return sq[:, None] * Vt[:r], U[:, :r] * sq


def compose_lowrank(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A (r, I), B (O, r) → Ŵ (O, I) = B A."""
    Ad, Bd = _mat(A, "A"), _mat(B, "B")
    if Ad.shape[0] != Bd.shape[1]:
        raise ValueError(f"incompatible low-rank factors A {Ad.shape}, B {Bd.shape}")
    return Bd @ Ad


def output_pca(
    W: np.ndarray, bias: np.ndarray | None, responses: Moments, rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zhang et al. 2015: ŷ = U Uᵀ (y − μ_y) + μ_y with U (O, r) the top-r eigenvectors of the covariance of
    the layer's responses y = W x + b (``responses``: their moments, dim O).

    → A (r, F) = Uᵀ W, B (O, r) = U, b̂ (O,) = U Uᵀ b + (I − U Uᵀ) μ_y, so that ŷ = B A x + b̂ exactly.
    W (O, F) (a k×k conv flattened: it reduces the output side only). When the responses are those of the
    same x, this equals ``whitened_lowrank(W, C_x)`` followed by ``bias_correction``."""
    Wd = _mat(W)
    O = Wd.shape[0]
    if responses.dim != O:
        raise ValueError(f"responses must have dim {O} (the outputs of W), got {responses.dim}")
    r = _rank(rank, min(Wd.shape))
    vals, vecs = np.linalg.eigh(responses.covariance)
    U = vecs[:, np.argsort(vals)[::-1][:r]]
    b = np.zeros(O) if bias is None else np.asarray(bias, dtype=np.float64)
    P = U @ U.T
    b_hat = P @ b + (np.eye(O) - P) @ responses.mean
    return U.T @ Wd, U.copy(), b_hat


def lowrank_pays(I: int, O: int, rank: int) -> bool:
    """True when I→r→O costs fewer MACs than I→O: r·(I + O) < I·O."""
    return int(rank) * (int(I) + int(O)) < int(I) * int(O)


def max_paying_rank(I: int, O: int) -> int:
    """The largest r with r·(I + O) < I·O (0 when no rank pays, e.g. I = 1)."""
    return (int(I) * int(O) - 1) // (int(I) + int(O))


def ls_second_factor(W: np.ndarray, E: np.ndarray, S: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """H (O, K) minimising tr((W − H E) S (W − H E)ᵀ) given the first factor's map E (K, F): the exact
    least-squares last factor, H = W S Eᵀ (E S Eᵀ + λI)⁻¹, λ = ridge · tr(E S Eᵀ)/K. W (O, F), S (F, F)."""
    Wd, Ed = _mat(W), _mat(E, "E")
    Sd = np.asarray(S, dtype=np.float64)
    if Ed.shape[1] != Wd.shape[1] or Sd.shape != (Wd.shape[1], Wd.shape[1]):
        raise ValueError(f"shapes W {Wd.shape}, E {Ed.shape}, S {Sd.shape} do not match")
    SE = Sd @ Ed.T  # (F, K)
    G = Ed @ SE
    G = (G + G.T) / 2.0
    K = G.shape[0]
    tr = float(np.trace(G)) / K
    G[np.arange(K), np.arange(K)] += ridge * tr if tr > 0 else 1.0
    rhs = (Wd @ SE).T  # (K, O)
    try:
        return np.linalg.solve(G, rhs).T
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(G, rhs, rcond=None)[0].T
