"""Spatial SVD, Tucker-2 and depthwise factorizations of a Conv kernel W (O, I, kh, kw); the algebra is in
``convopt.decompose``'s docstring."""
from __future__ import annotations

import numpy as np

from convopt.decompose.base import _check_rank, _f64, _out, _singular_values, thin_svd

# ----------------------------------------------------------------------------- spatial SVD


def _spatial_matrix(W: np.ndarray) -> np.ndarray:
    """M[(i,a),(o,b)] = W[o,i,a,b], (I·kh, O·kw), a new array in Fortran order (for ``thin_svd(disposable=True)``)."""
    O, I, kh, kw = W.shape
    return np.array(W.transpose(0, 3, 1, 2), order="C").reshape(O * kw, I * kh).T  # a copy: LAPACK may write in it


def spatial_svd(W: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Tai et al. 2016: W (O, I, kh, kw) → V (R, I, kh, 1), H (O, R, 1, kw).

    W_hat[o,i,a,b] = Σ_r H[o,r,0,b] · V[r,i,a,0]: a kh×1 conv (I→R) then a 1×kw conv (R→O).
    Truncated SVD of M[(i,a),(o,b)] (shape (I·kh, O·kw)), √S split between the factors.
    R = min(rank, I·kh, O·kw); exact at R = min(I·kh, O·kw).
    """
    M = _spatial_matrix(_f64(W, 4))  # the float64 copy of W is freed before the SVD runs
    O, I, kh, kw = W.shape
    R = min(_check_rank(rank), I * kh, O * kw)
    U, S, Vt = thin_svd(M, disposable=True)
    del M  # LAPACK's scratch now
    sq = np.sqrt(S[:R])
    V = (U[:, :R] * sq).T.reshape(R, I, kh, 1)
    H = (sq[:, None] * Vt[:R]).reshape(R, O, kw).transpose(1, 0, 2).reshape(O, R, 1, kw)
    return _out(V), _out(H)


def spatial_svd_spectrum(W: np.ndarray) -> np.ndarray:
    """Singular values (descending, float64) of M[(i,a),(o,b)] = W[o,i,a,b]; length min(I·kh, O·kw).

    W: (O, I, kh, kw).
    """
    return _singular_values(_spatial_matrix(_f64(W, 4)), disposable=True)


def compose_spatial(V: np.ndarray, H: np.ndarray) -> np.ndarray:
    """V (R, I, kh, 1), H (O, R, 1, kw) → W_hat (O, I, kh, kw) = Σ_r H[o,r,0,b] V[r,i,a,0]."""
    Vd = _f64(V, 4, "V")
    Hd = _f64(H, 4, "H")
    if Vd.shape[3] != 1 or Hd.shape[2] != 1 or Vd.shape[0] != Hd.shape[1]:
        raise ValueError(f"incompatible spatial factors V {Vd.shape}, H {Hd.shape}")
    return _out(np.einsum("orb,ria->oiab", Hd[:, :, 0, :], Vd[:, :, :, 0], optimize=True))


# ----------------------------------------------------------------------------- Tucker-2


def _left_sv(M: np.ndarray, r: int) -> np.ndarray:
    """Top-r left singular vectors of M (columns)."""
    U, _, _ = thin_svd(M)
    return U[:, :r]


def tucker2(
    W: np.ndarray, rank_in: int | None, rank_out: int | None, n_iter: int = 0
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Tucker-2 on the channel modes: W (O, I, kh, kw) → first, core, last.

    first (r_in, I, 1, 1) = U_inᵀ, or None when rank_in is None (no input-side 1×1; r_in := I);
    core  (r_out, r_in, kh, kw) = W ×_O U_outᵀ ×_I U_inᵀ;
    last  (O, r_out, 1, 1) = U_out, or None when rank_out is None (no output-side 1×1; r_out := O).
    U_out: top r_out left singular vectors of the mode-O unfolding (O, I·kh·kw); U_in: of the
    mode-I unfolding (I, O·kh·kw) (HOSVD); n_iter > 0 adds HOOI sweeps (only when both sides are
    reduced; with one side the HOSVD is already optimal). Ranks are clamped to O / I; exact when
    r_in = I and r_out = O.
    """
    Wd = _f64(W, 4)
    O, I, kh, kw = Wd.shape
    r_in = I if rank_in is None else min(_check_rank(rank_in, "rank_in"), I)
    r_out = O if rank_out is None else min(_check_rank(rank_out, "rank_out"), O)
    if int(n_iter) < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    U_out = _left_sv(Wd.reshape(O, I * kh * kw), r_out) if rank_out is not None else None
    U_in = _left_sv(Wd.transpose(1, 0, 2, 3).reshape(I, O * kh * kw), r_in) if rank_in is not None else None
    if U_out is not None and U_in is not None:
        for _ in range(int(n_iter)):
            # HOOI: each step maximises ||core|| over one factor with the other fixed (monotone).
            Y = np.einsum("oiab,or->riab", Wd, U_out)  # (r_out, I, kh, kw)
            U_in = _left_sv(Y.transpose(1, 0, 2, 3).reshape(I, r_out * kh * kw), r_in)
            Y = np.einsum("oiab,is->osab", Wd, U_in)  # (O, r_in, kh, kw)
            U_out = _left_sv(Y.reshape(O, r_in * kh * kw), r_out)
    core = Wd  # core = W ×_O U_outᵀ ×_I U_inᵀ, as BLAS products (np.einsum would not use BLAS here)
    if U_out is not None:
        core = np.tensordot(U_out.T, core, axes=(1, 0))  # (r_out, I, kh, kw)
    if U_in is not None:
        core = np.tensordot(core, U_in, axes=(1, 0)).transpose(0, 3, 1, 2)  # (r_out, r_in, kh, kw)
    first = None if U_in is None else _out(U_in.T.reshape(r_in, I, 1, 1))
    last = None if U_out is None else _out(U_out.reshape(O, r_out, 1, 1))
    return first, _out(core), last


def tucker2_spectra(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (descending, float64) of the mode-O unfolding (O, I·kh·kw) → s_out
    (length min(O, I·kh·kw)) and of the mode-I unfolding (I, O·kh·kw) → s_in. W: (O, I, kh, kw)."""
    Wd = _f64(W, 4)
    O, I, kh, kw = Wd.shape
    s_out = _singular_values(Wd.reshape(O, -1))
    s_in = _singular_values(Wd.transpose(1, 0, 2, 3).reshape(I, -1))
    return s_out, s_in


def compose_tucker2(first: np.ndarray | None, core: np.ndarray, last: np.ndarray | None) -> np.ndarray:
    """first (r_in, I, 1, 1) | None, core (r_out, r_in, kh, kw), last (O, r_out, 1, 1) | None
    → W_hat (O, I, kh, kw) = Σ_{r,s} last[o,r] · core[r,s] · first[s,i]."""
    Wh = _f64(core, 4, "core")
    if first is not None:
        F = _f64(first, 4, "first")
        if F.shape[2:] != (1, 1) or F.shape[0] != Wh.shape[1]:
            raise ValueError(f"incompatible first {F.shape} for core {Wh.shape}")
        Wh = np.tensordot(Wh, F[:, :, 0, 0], axes=(1, 0)).transpose(0, 3, 1, 2)  # Σ_s core[r,s]·first[s,i]
    if last is not None:
        L = _f64(last, 4, "last")
        if L.shape[2:] != (1, 1) or L.shape[1] != Wh.shape[0]:
            raise ValueError(f"incompatible last {L.shape} for core {Wh.shape}")
        Wh = np.tensordot(L[:, :, 0, 0], Wh, axes=(1, 0))  # Σ_r last[o,r]·(…)[r,i] (BLAS, not einsum)
    return _out(Wh)


# ----------------------------------------------------------------------------- depthwise


def depthwise_svd(W: np.ndarray, multiplier: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense W (O, I, kh, kw) → depthwise D (I, m, kh, kw) and pointwise P (O, I, m).

    Per input channel i: W[:, i].reshape(O, kh·kw) = U S Vt; D[i, j] = (√S_j Vt_j).reshape(kh, kw),
    P[:, i, j] = √S_j U[:, j]. m = min(multiplier, O, kh·kw); exact at m = min(O, kh·kw).
    ONNX: depthwise weight D.reshape(I·m, 1, kh, kw) (group=I), pointwise P.reshape(O, I·m, 1, 1).
    """
    Wd = _f64(W, 4)
    O, I, kh, kw = Wd.shape
    m = min(_check_rank(multiplier, "multiplier"), O, kh * kw)
    M = Wd.transpose(1, 0, 2, 3).reshape(I, O, kh * kw)
    U, S, Vt = thin_svd(M)  # U (I, O, k), S (I, k), Vt (I, k, kh·kw)
    sq = np.sqrt(S[:, :m])  # (I, m)
    D = (sq[:, :, None] * Vt[:, :m, :]).reshape(I, m, kh, kw)
    P = (U[:, :, :m] * sq[:, None, :]).transpose(1, 0, 2)  # (O, I, m)
    return _out(D), _out(P)


def depthwise_spectrum(W: np.ndarray) -> np.ndarray:
    """Singular values of each W[:, i].reshape(O, kh·kw): shape (I, min(O, kh·kw)), rows descending.

    W: (O, I, kh, kw). A multiplier shared by all channels at energy E is
    ``rank_for_energy(np.sqrt((S**2).sum(axis=0)), E)`` (columns pooled over channels).
    """
    Wd = _f64(W, 4)
    O, I, kh, kw = Wd.shape
    return _singular_values(Wd.transpose(1, 0, 2, 3).reshape(I, O, kh * kw))


def compose_depthwise(D: np.ndarray, P: np.ndarray) -> np.ndarray:
    """D (I, m, kh, kw), P (O, I, m) → W_hat (O, I, kh, kw) = Σ_j P[o,i,j] · D[i,j]."""
    Dd = _f64(D, 4, "D")
    Pd = _f64(P, 3, "P")
    if Pd.shape[1:] != Dd.shape[:2]:
        raise ValueError(f"incompatible depthwise factors D {Dd.shape}, P {Pd.shape}")
    return _out(np.einsum("oij,ijab->oiab", Pd, Dd))
