"""Data-aware split5x5 factors, pure numpy: W (O, I, 5, 5) ≈ compose(A (R, I, 3, 3), B (O, R, 3, 3)) (the
composition of ``decompose.compose_split5x5``), fitted to minimise the output error tr(ΔW S ΔWᵀ) under the
5×5 input-patch moment S (25·I)², im2col order (i, a, b).

There is no closed form. Two methods, switched on the size of the A-step normal equations (9·R·I unknowns):
* "activations" (9·R·I <= ``SPLIT_ALS_MAX_UNKNOWNS``): alternating least squares under S. With A fixed, Ŵ is
  linear in B: a (9R × 9R) system shared by the O outputs. With B fixed, linear in A: one (9RI × 9RI)
  system, Gram[(r,u,i),(s,u',j)] = Σ_{v,v'} (Σ_o B[o,r,v] B[o,s,v']) S[(i, u+v), (j, u'+v')].
  Started from the better (under S) of the two "whitened"-style starts below; every half-step is an exact
  least-squares solve, so the error never increases.
* "whitened" (larger layers): the input-channel whitening trick. With S_in = L Lᵀ the channel moment,
  ‖ΔW ×_I Lᵀ‖² is the error under S_in ⊗ I₂₅; so ``decompose.split5x5_als`` on W ×_I Lᵀ, then
  A ← A ×_I L⁻ᵀ (unwhiten the first factor), then the exact least-squares B under the full S.
"""
from __future__ import annotations

import numpy as np

from convopt import decompose as dc
from convopt.datafit.lowrank import ls_second_factor
from convopt.datafit.moments import DEFAULT_RIDGE, channel_moment, whiten

__all__ = ["SPLIT_ALS_MAX_UNKNOWNS", "split5x5_method", "split5x5_datafit"]

SPLIT_ALS_MAX_UNKNOWNS = 2048
"""Largest 9·R·I for which the A-step normal equations are formed (a 2048² float64 Gram is 32 MB and solves
in well under a second); above it, the whitening trick."""

# _W_OF[u, v]: the flattened 5×5 offset u + v of the flattened 3×3 offsets u (first factor) and v (second)
_W_OF = np.array([[(u // 3 + v // 3) * 5 + (u % 3 + v % 3) for v in range(9)] for u in range(9)])


def split5x5_method(I: int, rank: int, max_unknowns: int = SPLIT_ALS_MAX_UNKNOWNS) -> str:
    """"activations" when 9·rank·I <= max_unknowns (ALS under the full patch moment), else "whitened"."""
    return "activations" if 9 * int(rank) * int(I) <= int(max_unknowns) else "whitened"


def _basis(A: np.ndarray) -> np.ndarray:
    """E (9R, 25I) with E[(r,v),(i,w)] = Σ_{u: u+v=w} A[r,i,u], for A (R, I, 9): Ŵ = B (O, 9R) @ E."""
    R, I, _ = A.shape
    E = np.zeros((R, 9, I, 25))
    for u in range(9):
        for v in range(9):
            E[:, v, :, _W_OF[u, v]] += A[:, :, u]
    return E.reshape(9 * R, 25 * I)


def _b_step(Wf: np.ndarray, A: np.ndarray, S: np.ndarray, ridge: float) -> np.ndarray:
    """The least-squares B (O, R, 9) given A (R, I, 9)."""
    return ls_second_factor(Wf, _basis(A), S, ridge).reshape(Wf.shape[0], A.shape[0], 9)


def _a_step(Wf: np.ndarray, B: np.ndarray, S: np.ndarray, ridge: float) -> np.ndarray:
    """The least-squares A (R, I, 9) given B (O, R, 9), from the (9RI)² normal equations."""
    O, R, _ = B.shape
    I = Wf.shape[1] // 25
    S4 = S.reshape(I, 25, I, 25)
    BB = np.einsum("orv,osw->rvsw", B, B)  # (R, 9, R, 9)
    G = np.zeros((R, R, 9, I, 9, I))
    for v in range(9):
        Sv = S4[:, _W_OF[:, v]]  # (I, 9u, I, 25)
        for v2 in range(9):
            T = Sv[:, :, :, _W_OF[:, v2]].transpose(1, 0, 3, 2)  # (9u, I, 9u', I)
            G += BB[:, v, :, v2][:, :, None, None, None, None] * T[None, None]
    n = 9 * R * I
    G = G.transpose(0, 2, 3, 1, 4, 5).reshape(n, n)
    G = (G + G.T) / 2.0
    tr = float(np.trace(G)) / n
    G[np.arange(n), np.arange(n)] += ridge * tr if tr > 0 else 1.0
    WS = (Wf @ S).reshape(O, I, 25)[:, :, _W_OF]  # (O, I, 9u, 9v)
    rhs = np.einsum("orv,oiuv->rui", B, WS).reshape(n)
    try:
        x = np.linalg.solve(G, rhs)
    except np.linalg.LinAlgError:
        x = np.linalg.lstsq(G, rhs, rcond=None)[0]
    return x.reshape(R, 9, I).transpose(0, 2, 1)


def _sq_err(Wf: np.ndarray, A: np.ndarray, B: np.ndarray, S: np.ndarray) -> float:
    D = Wf - B.reshape(Wf.shape[0], -1) @ _basis(A)
    return float(np.sum((D @ S) * D))


def _whitened_start(Wd: np.ndarray, S: np.ndarray, R: int, n_iter: int, rng, ridge: float) -> tuple:
    """Kernel ALS on W ×_I Lᵀ, first factor unwhitened: (A (R, I, 9), B (O, R, 9)) float64."""
    O, I = Wd.shape[:2]
    L = whiten(channel_moment(S, I, 5, 5), ridge).L
    Ww = np.einsum("oiab,ij->ojab", Wd, L)
    Aw, Bw = dc.split5x5_als(Ww, R, n_iter=n_iter, rng=rng)
    Aw = Aw.astype(np.float64).reshape(R, I, 9)
    A = np.linalg.solve(L.T, Aw.transpose(1, 0, 2).reshape(I, -1)).reshape(I, R, 9).transpose(1, 0, 2)
    return A, Bw.astype(np.float64).reshape(O, R, 9)


def split5x5_datafit(
    W: np.ndarray, S: np.ndarray, rank: int, *, refine: bool = True, n_iter: int = 30, als_iter: int = 10,
    rng: np.random.Generator | int | None = 0, ridge: float = DEFAULT_RIDGE,
    max_unknowns: int = SPLIT_ALS_MAX_UNKNOWNS, tol: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Data-aware ``decompose.split5x5_als``: W (O, I, 5, 5), S (25·I)² → A (R, I, 3, 3) (pad 2),
    B (O, R, 3, 3) (pad 0); rank >= 9·min(I, O) gives the exact shift construction.

    refine=False: the whitening trick alone (kernel ALS of n_iter sweeps on W ×_I Lᵀ, unwhitened).
    refine=True: also the weight-only ALS; the least-squares B under S for both starts; the best of the four
    under S; then, when ``split5x5_method`` says "activations", up to als_iter ALS sweeps under S (stopping
    when a sweep gains less than tol, relative). Never worse under S than ``split5x5_als``. rng seeds the
    randomized SVD of the kernel ALS on large layers. Factors float32."""
    Wd = np.asarray(W, dtype=np.float64)
    if Wd.ndim != 4 or Wd.shape[2:] != (5, 5) or not np.all(np.isfinite(Wd)):
        raise ValueError(f"split5x5 needs a finite (O, I, 5, 5) kernel, got shape {Wd.shape}")
    O, I = Wd.shape[:2]
    Sd = np.asarray(S, dtype=np.float64)
    if Sd.shape != (25 * I, 25 * I):
        raise ValueError(f"S must be the ({25 * I}, {25 * I}) patch moment, got {Sd.shape}")
    R = int(rank)
    if R < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if R >= 9 * min(I, O):
        return dc.split5x5_shift(Wd)
    A, B = _whitened_start(Wd, Sd, R, n_iter, rng, ridge)
    if refine:
        Wf = Wd.reshape(O, 25 * I)
        A0, B0 = dc.split5x5_als(Wd, R, n_iter=n_iter, rng=rng)
        A0, B0 = A0.astype(np.float64).reshape(R, I, 9), B0.astype(np.float64).reshape(O, R, 9)
        cands = [(A, B), (A, _b_step(Wf, A, Sd, ridge)), (A0, B0), (A0, _b_step(Wf, A0, Sd, ridge))]
        errs = [_sq_err(Wf, a, b, Sd) for a, b in cands]
        A, B = cands[int(np.argmin(errs))]
        if split5x5_method(I, R, max_unknowns) == "activations":
            A, B = _als(Wf, A, B, Sd, als_iter, ridge, tol, min(errs))
    return _out(A, B, O)


def _als(Wf: np.ndarray, A: np.ndarray, B: np.ndarray, S: np.ndarray, iters: int, ridge: float, tol: float,
         err: float) -> tuple[np.ndarray, np.ndarray]:
    """ALS under S from (A, B) with squared error err; returns the best iterate."""
    best = (A, B, err)
    for _ in range(int(iters)):
        A2 = _a_step(Wf, best[1], S, ridge)
        B2 = _b_step(Wf, A2, S, ridge)
        e = _sq_err(Wf, A2, B2, S)
        gain = best[2] - e
        if e < best[2]:
            best = (A2, B2, e)
        if gain <= tol * best[2]:
            break
    return best[0], best[1]


def _out(A: np.ndarray, B: np.ndarray, O: int) -> tuple[np.ndarray, np.ndarray]:
    R, I = A.shape[:2]
    return (np.ascontiguousarray(A.reshape(R, I, 3, 3), dtype=np.float32),
            np.ascontiguousarray(B.reshape(O, R, 3, 3), dtype=np.float32))
