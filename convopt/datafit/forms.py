"""Data-aware factors of a k×k conv for the factorize, bottleneck and depthwise passes, pure numpy. Each mirrors
its weight-only form in ``convopt.decompose`` (same factor shapes, same composition: ``compose_spatial``,
``compose_tucker2``, ``compose_depthwise``) but minimises the layer's output error on calibration data.

S (F, F), F = I·kh·kw, is the second moment of the layer's input patches in im2col order (i, a, b)
(``convopt.auto.lstsq.im2col_at``): the output error of Ŵ is tr(ΔW S ΔWᵀ) with ΔW = (W − Ŵ).reshape(O, F).
Pass the uncentered moment to keep the bias, or the covariance and then ``bias_correction``.

* factorize: M[(i,a),(o,b)] = W[o,i,a,b] → M̂ = M U Uᵀ, U the top-R right singular vectors of L_vᵀ M,
  S_v = L_v L_vᵀ the vertical-patch moment (``vertical_moment``); optimal when vertical patches at different
  horizontal offsets are uncorrelated.
* bottleneck: last = U (O, r_out), the PCA of the responses W x (exact optimum of the output side);
  first = whitened low rank of the mode-I unfolding under the channel moment (``channel_moment``).
* depthwise: per input channel i, whitened low rank of W[:, i] (O, kh·kw) under that channel's patch moment.

``refine=True`` adds the exact least-squares last factor (for the bottleneck: last and core together by
reduced-rank regression) given the first, under the full S, for the whitened first factor and for the
weight-only one, and returns the candidate (these, the unrefined whitened and the weight-only factors)
with the lowest tr(ΔW S ΔWᵀ): never worse than the weight-only factors under S (and, with S = I, lower
than them where they are not optimal: Tucker-2 with both sides reduced, where the refit is a HOOI step).
"""
from __future__ import annotations

import numpy as np

from convopt import decompose as dc
from convopt.datafit.lowrank import ls_second_factor, principal_outputs
from convopt.datafit.moments import DEFAULT_RIDGE, channel_moment, channel_patch_moments, vertical_moment, whiten

__all__ = ["spatial_datafit", "tucker2_datafit", "depthwise_datafit"]


def _w4(W: np.ndarray) -> np.ndarray:
    arr = np.asarray(W, dtype=np.float64)
    if arr.ndim != 4:
        raise ValueError(f"W must have 4 dimensions (O, I, kh, kw), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("W contains NaN or Inf")
    return arr


def _moment(S: np.ndarray, F: int) -> np.ndarray:
    Sd = np.asarray(S, dtype=np.float64)
    if Sd.shape != (F, F):
        raise ValueError(f"S must be the ({F}, {F}) patch moment, got {Sd.shape}")
    return Sd


def _sq_err(Wf: np.ndarray, W_hat: np.ndarray, S: np.ndarray) -> float:
    D = Wf - np.asarray(W_hat, dtype=np.float64).reshape(Wf.shape)
    return float(np.sum((D @ S) * D))


def _pick(Wf: np.ndarray, S: np.ndarray, cands: list[tuple[tuple, np.ndarray]]) -> tuple:
    """The factors of the candidate (factors, Ŵ) with the lowest tr(ΔW S ΔWᵀ) (first wins ties)."""
    errs = [_sq_err(Wf, Wh, S) for _, Wh in cands]
    return cands[int(np.argmin(errs))][0]


def _f32(*arrays: np.ndarray | None) -> tuple:
    return tuple(None if a is None else np.ascontiguousarray(a, dtype=np.float32) for a in arrays)


# ----------------------------------------------------------------------------- factorize


def _spatial_basis(V: np.ndarray, kw: int) -> np.ndarray:
    """E (R·kw, I·kh·kw): the patch → 1×kw-input map of a first factor V (R, I, kh, 1),
    E[(r,b'),(i,a,b)] = V[r,i,a] δ(b, b')."""
    R, I, kh, _ = V.shape
    return np.einsum("ria,bc->rbiac", V[..., 0], np.eye(kw)).reshape(R * kw, I * kh * kw)


def _spatial_ls(Wf: np.ndarray, V: np.ndarray, kw: int, S: np.ndarray, ridge: float) -> np.ndarray:
    """The least-squares second factor H (O, R, 1, kw) given V (R, I, kh, 1)."""
    H = ls_second_factor(Wf, _spatial_basis(V, kw), S, ridge)
    return H.reshape(Wf.shape[0], V.shape[0], 1, kw)


def spatial_datafit(
    W: np.ndarray, S: np.ndarray, rank: int, *, refine: bool = True, ridge: float = DEFAULT_RIDGE
) -> tuple[np.ndarray, np.ndarray]:
    """Data-aware ``decompose.spatial_svd``: W (O, I, kh, kw), S (I·kh·kw)² → V (R, I, kh, 1), H (O, R, 1, kw),
    R = min(rank, I·kh, O·kw), composed by ``decompose.compose_spatial``; exact at R = min(I·kh, O·kw).

    Whitened on the vertical-patch side (see the module docstring); ``refine`` adds the least-squares H
    under the full S and keeps the best candidate. Factors float32."""
    Wd = _w4(W)
    O, I, kh, kw = Wd.shape
    Sd = _moment(S, I * kh * kw)
    R = min(int(rank), I * kh, O * kw)
    if R < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    M = Wd.transpose(1, 2, 0, 3).reshape(I * kh, O * kw)
    U = principal_outputs(M.T, vertical_moment(Sd, I, kh, kw), R, ridge)  # (O·kw, R)
    V = (M @ U).T.reshape(R, I, kh, 1)
    H = U.reshape(O, kw, R).transpose(0, 2, 1).reshape(O, R, 1, kw)
    if not refine:
        return _f32(V, H)
    Wf = Wd.reshape(O, -1)
    V0, H0 = (a.astype(np.float64) for a in dc.spatial_svd(Wd, R))
    cands = []
    for v, h in ((V, H), (V0, H0)):
        cands.append(((v, h), np.einsum("orb,ria->oiab", h[:, :, 0], v[..., 0])))
        h_ls = _spatial_ls(Wf, v, kw, Sd, ridge)
        cands.append(((v, h_ls), np.einsum("orb,ria->oiab", h_ls[:, :, 0], v[..., 0])))
    return _f32(*_pick(Wf, Sd, cands))


# ----------------------------------------------------------------------------- bottleneck (Tucker-2)


def _input_side(core: np.ndarray, S_in: np.ndarray, r_in: int, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Whitened low rank of the mode-I unfolding G[(r,a,b), i] of core (R, I, kh, kw) under S_in (I, I)
    → first P (r_in, I), new core (R, r_in, kh, kw) with core ≈ Σ_s core'[:, s] P[s, :]."""
    R, I, kh, kw = core.shape
    G = core.transpose(0, 2, 3, 1).reshape(R * kh * kw, I)
    U = principal_outputs(G, S_in, r_in, ridge)  # (R·kh·kw, r_in)
    return U.T @ G, U.reshape(R, kh, kw, -1).transpose(0, 3, 1, 2)


def _tucker_rrr(
    Wf: np.ndarray, P: np.ndarray, k: tuple[int, int], r_out: int | None, S: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Given the first factor P (r_in, I): the optimal (core, last) under S by reduced-rank regression.
    G_ls = the least-squares map from the first factor's patches (E = P ⊗ I_{kh·kw}); last = the top r_out
    principal outputs of G_ls under E S Eᵀ, core = lastᵀ G_ls (r_out None: core = G_ls, no last)."""
    kh, kw = k
    r_in, I = P.shape
    E = np.einsum("si,ab->saib", P, np.eye(kh * kw)).reshape(r_in * kh * kw, I * kh * kw)
    G = ls_second_factor(Wf, E, S, ridge)  # (O, r_in·kh·kw)
    if r_out is None:
        return G.reshape(-1, r_in, kh, kw), None
    U = principal_outputs(G, E @ S @ E.T, r_out, ridge)  # (O, r_out)
    return (U.T @ G).reshape(-1, r_in, kh, kw), U


def _tucker_compose(first: np.ndarray | None, core: np.ndarray, last: np.ndarray | None) -> np.ndarray:
    Wh = core
    if first is not None:
        Wh = np.einsum("rsab,si->riab", Wh, first)
    if last is not None:
        Wh = np.tensordot(last, Wh, axes=(1, 0))
    return Wh


def tucker2_datafit(
    W: np.ndarray, S: np.ndarray, rank_in: int | None, rank_out: int | None, *,
    refine: bool = True, ridge: float = DEFAULT_RIDGE,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Data-aware ``decompose.tucker2``: W (O, I, kh, kw), S (I·kh·kw)² → first (r_in, I, 1, 1) | None,
    core (r_out, r_in, kh, kw), last (O, r_out, 1, 1) | None (None: that side is not reduced), composed by
    ``decompose.compose_tucker2``; ranks clamped to I / O; exact at r_in = I, r_out = O.

    refine=False: whitened HOSVD, Ŵ = W ×_O U Uᵀ ×_I Π: U the PCA of the responses W x under S (the exact
    optimum of the output side alone), Π the whitened low rank of W's mode-I unfolding under the channel
    moment; with S = I this is ``decompose.tucker2``. refine=True adds the sequentially truncated first
    factor (from the output-projected core's mode-I unfolding) and the HOSVD one, refits (core, last) given
    each first by reduced-rank regression under the full S, and keeps the best candidate. Factors float32."""
    Wd = _w4(W)
    O, I, kh, kw = Wd.shape
    Sd = _moment(S, I * kh * kw)
    r_in = None if rank_in is None else min(int(rank_in), I)
    r_out = None if rank_out is None else min(int(rank_out), O)
    if (r_in is not None and r_in < 1) or (r_out is not None and r_out < 1):
        raise ValueError(f"ranks must be >= 1, got rank_in={rank_in}, rank_out={rank_out}")
    Wf = Wd.reshape(O, -1)
    last = None if r_out is None else principal_outputs(Wf, Sd, r_out, ridge)
    if r_in is None:
        return _as_tucker(None, Wd if last is None else (last.T @ Wf).reshape(r_out, I, kh, kw), last)
    S_in = channel_moment(Sd, I, kh, kw)
    first, core = _input_side(Wd, S_in, r_in, ridge)  # W ≈ core ×_I first
    if last is not None:
        core = np.tensordot(last.T, core, axes=(1, 0))
    if not refine:
        return _as_tucker(first, core, last)
    f0, c0, l0 = dc.tucker2(Wd, r_in, r_out)
    P0 = np.asarray(f0, np.float64)[:, :, 0, 0]
    L0 = None if l0 is None else l0.astype(np.float64)[:, :, 0, 0]
    cands = [((first, core, last), _tucker_compose(first, core, last)),
             ((P0, c0.astype(np.float64), L0), _tucker_compose(P0, c0.astype(np.float64), L0))]
    P_st = first if last is None else _input_side((last.T @ Wf).reshape(r_out, I, kh, kw), S_in, r_in, ridge)[0]
    for P in (first, P_st, P0):
        c, lst = _tucker_rrr(Wf, P, (kh, kw), r_out, Sd, ridge)
        cands.append(((P, c, lst), _tucker_compose(P, c, lst)))
    return _as_tucker(*_pick(Wf, Sd, cands))


def _as_tucker(
    first: np.ndarray | None, core: np.ndarray, last: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    f = None if first is None else first.reshape(*first.shape, 1, 1)
    la = None if last is None else last.reshape(*last.shape, 1, 1)
    return _f32(f, core, la)


# ----------------------------------------------------------------------------- depthwise


def _depthwise_ls(Wf: np.ndarray, D: np.ndarray, S: np.ndarray, ridge: float) -> np.ndarray:
    """The least-squares pointwise factor P (O, I, m) given the depthwise D (I, m, kh, kw)."""
    I, m = D.shape[:2]
    E = np.einsum("ijk,il->ijlk", D.reshape(I, m, -1), np.eye(I)).reshape(I * m, -1)
    return ls_second_factor(Wf, E, S, ridge).reshape(-1, I, m)


def depthwise_datafit(
    W: np.ndarray, S: np.ndarray, multiplier: int, *, refine: bool = True, ridge: float = DEFAULT_RIDGE
) -> tuple[np.ndarray, np.ndarray]:
    """Data-aware ``decompose.depthwise_svd``: W (O, I, kh, kw), S (I·kh·kw)² → D (I, m, kh, kw),
    P (O, I, m), m = min(multiplier, O, kh·kw), composed by ``decompose.compose_depthwise``; exact at
    m = min(O, kh·kw).

    Per input channel i: D[i] = U_iᵀ W[:, i], P[:, i] = U_i, U_i the top-m left singular vectors of
    W[:, i] L_i, L_i L_iᵀ = channel i's k×k patch moment (+ ridge). ``refine`` adds the least-squares
    pointwise factor under the full S (which sees the cross-channel terms) and keeps the best candidate.
    Factors float32."""
    Wd = _w4(W)
    O, I, kh, kw = Wd.shape
    k = kh * kw
    Sd = _moment(S, I * k)
    m = min(int(multiplier), O, k)
    if m < 1:
        raise ValueError(f"multiplier must be >= 1, got {multiplier}")
    M = Wd.transpose(1, 0, 2, 3).reshape(I, O, k)
    L = whiten(channel_patch_moments(Sd, I, kh, kw), ridge).L  # (I, k, k)
    U = np.linalg.svd(M @ L, full_matrices=False)[0][:, :, :m]  # (I, O, m)
    D = np.einsum("iom,iok->imk", U, M).reshape(I, m, kh, kw)
    P = U.transpose(1, 0, 2)
    if not refine:
        return _f32(D, P)
    Wf = Wd.reshape(O, -1)
    D0, P0 = (a.astype(np.float64) for a in dc.depthwise_svd(Wd, m))
    cands = []
    for d, p in ((D, P), (D0, P0)):
        cands.append(((d, p), np.einsum("oij,ijab->oiab", p, d)))
        p_ls = _depthwise_ls(Wf, d, Sd, ridge)
        cands.append(((d, p_ls), np.einsum("oij,ijab->oiab", p_ls, d)))
    return _f32(*_pick(Wf, Sd, cands))
