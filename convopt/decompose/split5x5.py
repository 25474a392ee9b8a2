"""split5x5: a 5×5 kernel as a 3×3 conv (pad 2) followed by a 3×3 conv (pad 0); exact by a shift assignment at
full rank, ALS below it. The algebra is in ``convopt.decompose``'s docstring."""
from __future__ import annotations

import math

import numpy as np

from convopt.decompose.base import _check_rank, _f64, _out, relative_error

# ----------------------------------------------------------------------------- split5x5


def _composition_tensor() -> np.ndarray:
    """T[u, v, w] = 1 iff u + v = w (2-D offsets, u, v ∈ {0,1,2}² flattened to 9, w ∈ {0..4}² to 25)."""
    T = np.zeros((3, 3, 3, 3, 5, 5))
    for a in range(3):
        for b in range(3):
            for c in range(3):
                for d in range(3):
                    T[a, b, c, d, a + c, b + d] = 1.0
    return T.reshape(9, 9, 25)


_T = _composition_tensor()
# u+v for flattened 3×3 offsets, as a flattened 5×5 offset
_W_OF = np.array([[(u // 3 + v // 3) * 5 + (u % 3 + v % 3) for v in range(9)] for u in range(9)])
# number of (u, v) pairs that reach each 5×5 offset w (per axis 1,2,3,2,1)
_COUNT = _T.sum(axis=(0, 1))


def _diff_class(u: int, u2: int) -> int:
    """Index in 0..24 of the 2-D difference u − u2 ∈ {−2..2}² of two flattened 3×3 offsets."""
    return (u // 3 - u2 // 3 + 2) * 5 + (u % 3 - u2 % 3 + 2)


# Gram blocks: pairs (u, u') sharing the same 2-D difference d = u − u' (25 classes)
_DIFF_PAIRS: list[list[tuple[int, int]]] = [
    [(u, u2) for u in range(9) for u2 in range(9) if _diff_class(u, u2) == d] for d in range(25)
]
# for unknown blocks (v, v'), the class of d = v' − v
_DIFF_OF = np.array([[_diff_class(v2, v) for v2 in range(9)] for v in range(9)])


def _check5x5(W: np.ndarray) -> np.ndarray:
    Wd = _f64(W, 4)
    if Wd.shape[2:] != (5, 5):
        raise ValueError(f"split5x5 needs a 5x5 kernel, got {Wd.shape[2]}x{Wd.shape[3]}")
    return Wd


def _compose_flat(A: np.ndarray, Bt: np.ndarray) -> np.ndarray:
    """A (R, I, 9), Bt (R, O, 9) float64 → W_hat (O, I, 25): Σ_r Σ_{u+v=w} A[r,i,u] Bt[r,o,v]."""
    R, I, _ = A.shape
    O = Bt.shape[1]
    K = (Bt.transpose(2, 1, 0).reshape(9 * O, R) @ A.transpose(0, 2, 1).reshape(R, 9 * I)).reshape(9, O, 9, I)
    out = np.zeros((25, O, I))
    for v in range(9):
        for u in range(9):
            out[_W_OF[u, v]] += K[v, :, u, :]
    return out.transpose(1, 2, 0)


def compose_split5x5(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A (R, I, 3, 3) (first conv, pad 2), B (O, R, 3, 3) (second conv, pad 0)
    → W_hat (O, I, 5, 5), W_hat[o,i,w] = Σ_r Σ_{u+v=w} A[r,i,u] · B[o,r,v]."""
    Ad = _f64(A, 4, "A")
    Bd = _f64(B, 4, "B")
    if Ad.shape[2:] != (3, 3) or Bd.shape[2:] != (3, 3) or Ad.shape[0] != Bd.shape[1]:
        raise ValueError(f"incompatible split5x5 factors A {Ad.shape}, B {Bd.shape}")
    R, I = Ad.shape[:2]
    O = Bd.shape[0]
    Wh = _compose_flat(Ad.reshape(R, I, 9), Bd.reshape(O, R, 9).transpose(1, 0, 2))
    return _out(Wh.reshape(O, I, 5, 5))


def _shift_assignment() -> np.ndarray:
    """S[u, v, w] = 1 for exactly one (u, v) per w: u = min(w, 2) per axis, v = w − u."""
    S = np.zeros((3, 3, 3, 3, 5, 5))
    for w1 in range(5):
        for w2 in range(5):
            a, b = min(w1, 2), min(w2, 2)
            S[a, b, w1 - a, w2 - b, w1, w2] = 1.0
    return S.reshape(9, 9, 25)


_SHIFT = _shift_assignment()


def split5x5_shift(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact shift construction: W (O, I, 5, 5) → A (R, I, 3, 3), B (O, R, 3, 3), R = 9·min(I, O).

    I <= O: channel r = (i, s) of the middle layer is x[i] shifted by s ∈ {0,1,2}² (A one-hot),
    B[o, (i,s), v] = W[o, i, s+v] on the assignment that reaches each 5×5 offset once (s = min(w, 2)
    per axis, v = w − s), zero elsewhere. O < I: the mirror (B one-hot shifts, A carries W).
    """
    Wd = _check5x5(W)
    O, I = Wd.shape[:2]
    Wf = Wd.reshape(O, I, 25)
    # L[o, i, s, v] = W[o, i, s+v] kept only on the assignment (s, v) ↦ w
    L = np.einsum("oiw,svw->oisv", Wf, _SHIFT)
    eye9 = np.eye(9)
    if I <= O:
        A = np.einsum("ij,su->isju", np.eye(I), eye9).reshape(9 * I, I, 3, 3)  # A[(i,s), j, u] = δij δsu
        B = L.reshape(O, 9 * I, 3, 3)  # B[o, (i,s), v]
    else:
        # mirror: B[o', (o,v'), v] = δoo' δv'v (B shifts), A[(o,v'), i, u] = W[o,i,u+v'] on the
        # assignment with the roles of u and v swapped (v' = min(w,2), u = w − v').
        Lm = np.einsum("oiw,vuw->oivu", Wf, _SHIFT)  # Lm[o,i,v',u]
        A = Lm.transpose(0, 2, 1, 3).reshape(9 * O, I, 3, 3)
        B = np.einsum("op,vw->opvw", np.eye(O), eye9).reshape(O, 9 * O, 3, 3)
    return _out(A), _out(B)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _top_svd(K: np.ndarray, R: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-R truncated SVD of K: exact LAPACK SVD for small problems, else a randomized range
    finder (Halko et al. 2011) with oversampling 16 and 3 power iterations."""
    m, n = K.shape
    p = R + 16
    if min(m, n) <= 768 or 2 * p >= min(m, n):
        U, S, Vt = np.linalg.svd(K, full_matrices=False)
        return U[:, :R], S[:R], Vt[:R]
    Q, _ = np.linalg.qr(K @ gen.standard_normal((n, p)))
    for _ in range(3):
        Q, _ = np.linalg.qr(K.T @ Q)
        Q, _ = np.linalg.qr(K @ Q)
    Ub, S, Vt = np.linalg.svd(Q.T @ K, full_matrices=False)
    return (Q @ Ub)[:, :R], S[:R], Vt[:R]


def _als_half_step(F: np.ndarray, L: np.ndarray, lam_rel: float) -> np.ndarray:
    """One exact least-squares half-step of the split5x5 ALS.

    Fixed factor F (R, X, 9) (index r, fixed-side channel x, its offset a); unknown G (R, Y, 9)
    with offset b, model W[.., w] = Σ_r Σ_{a+b=w} F[r,x,a] G[r,y,b]. L ((x, a), (b, y)) holds
    W at offset a+b (the lifted kernel). Normal equations, unknowns ordered (b, r):
      Gram[(b,r),(b',s)] = Σ_{a,a': a+b = a'+b'} (Σ_x F[r,x,a] F[s,x,a'])  — a 2-level block-Toeplitz
      matrix whose block (b, b') only depends on d = b' − b (25 distinct R×R blocks);
      rhs[(b,r), y] = Σ_{x,a} F[r,x,a] L[(x,a),(b,y)].
    Returns G (R, Y, 9), the least-squares optimum given F (up to the ridge).
    """
    R, X, _ = F.shape
    Fu = F.transpose(2, 0, 1).reshape(9 * R, X)
    GF = (Fu @ Fu.T).reshape(9, R, 9, R)
    S = np.zeros((25, R, R))
    for d, pairs in enumerate(_DIFF_PAIRS):
        for a, a2 in pairs:
            S[d] += GF[a, :, a2, :]
    G = S[_DIFF_OF].transpose(0, 2, 1, 3).reshape(9 * R, 9 * R)  # block (b, b') = S[d(b, b')]
    rhs = (F.reshape(R, X * 9) @ L).reshape(R, 9, -1).transpose(1, 0, 2).reshape(9 * R, -1)
    Y = rhs.shape[1]
    diag = np.trace(G) / G.shape[0]
    lam = lam_rel * diag if diag > 0 else 1e-300
    # Tikhonov: the system is singular when 9R > 25·X (more unknowns than kernel entries) or
    # when the fixed factor is degenerate; a 1e-10 relative ridge keeps LU stable at no visible bias.
    G.flat[:: G.shape[0] + 1] += lam
    try:
        x = np.linalg.solve(G, rhs)
    except np.linalg.LinAlgError:
        x = np.linalg.lstsq(G, rhs, rcond=None)[0]
    return x.reshape(9, R, Y).transpose(1, 2, 0)


def _balance(A: np.ndarray, Bt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescale each component r so that ||A[r]|| = ||Bt[r]|| (composition unchanged)."""
    na = np.linalg.norm(A.reshape(A.shape[0], -1), axis=1)
    nb = np.linalg.norm(Bt.reshape(Bt.shape[0], -1), axis=1)
    ok = (na > 0) & (nb > 0)
    s = np.ones_like(na)
    s[ok] = np.sqrt(nb[ok] / na[ok])
    return A * s[:, None, None], Bt / s[:, None, None]


def _als_fit(
    Wf: np.ndarray, R: int, n_iter: int, gen: np.random.Generator, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """ALS on Wf (O, I, 25) (unit norm) at rank R → A (R, I, 9), Bt (R, O, 9) in float64."""
    O, I, _ = Wf.shape
    Wl = Wf[:, :, _W_OF]  # lifted kernel Wl[o,i,u,v] = W[o,i,u+v], (O, I, 9, 9)
    # Initialisation: truncated SVD of the minimum-norm lift K[(o,v),(i,u)] = W[o,i,u+v] / #(u+v).
    # Any lift whose (u+v)-sums give W is an exact rank-9·min(I,O) factorization; the even
    # (minimum-norm) one spreads each offset over all its (u, v) pairs, and on random and smooth
    # kernels it started ALS lower and ended lower after 30 sweeps than the shift lifts or seeded
    # random starts (measured at (O,I) = (32,16), R = 8..32). Its leading subspaces are nested in
    # R, which keeps the error ordered across ranks; the rng only drives the randomized SVD on
    # large layers.
    K = (Wl / _COUNT[_W_OF][None, None]).transpose(0, 3, 1, 2).reshape(O * 9, I * 9)
    U, S, Vt = _top_svd(K, R, gen)
    sq = np.sqrt(S)
    Bt = (U * sq).reshape(O, 9, R).transpose(2, 0, 1).copy()
    A = (sq[:, None] * Vt).reshape(R, I, 9).copy()
    L_B = Wl.transpose(1, 2, 3, 0).reshape(I * 9, 9 * O)  # ((i,u), (v,o))
    L_A = Wl.transpose(0, 3, 2, 1).reshape(O * 9, 9 * I)  # ((o,v), (u,i))

    def err(A_: np.ndarray, Bt_: np.ndarray) -> float:
        return float(np.linalg.norm(Wf - _compose_flat(A_, Bt_)))  # ||Wf|| = 1

    best = err(A, Bt)
    prev_A: np.ndarray | None = None
    prev_Bt: np.ndarray | None = None
    for k in range(1, n_iter + 1):
        last = best
        B_new = _als_half_step(A, L_B, 1e-10)
        A_new = _als_half_step(B_new, L_A, 1e-10)
        A_new, B_new = _balance(A_new, B_new)
        e = err(A_new, B_new)
        if prev_A is not None and prev_Bt is not None:
            # Line search by extrapolation (Bro 1998; Rajih et al. 2008): ALS creeps along narrow
            # valleys; stepping k^(1/3) further along the last update, kept only if it lowers the
            # error, cut the error after 30 sweeps by 10-20 % at one extra composition per sweep.
            s = k ** (1.0 / 3.0)
            A_x = A_new + s * (A_new - prev_A)
            B_x = B_new + s * (B_new - prev_Bt)
            e_x = err(A_x, B_x)
            if e_x < e:
                A_new, B_new, e = A_x, B_x, e_x
        if e <= best:  # an exact LS half-step never increases the error; guard round-off anyway
            A, Bt, best = A_new, B_new, e
        prev_A, prev_Bt = A_new, B_new
        if best < 1e-7 or last - best <= tol * last:
            break
    return A, Bt


def split5x5_als(
    W: np.ndarray,
    rank: int,
    n_iter: int = 30,
    rng: np.random.Generator | int | None = 0,
    tol: float = 1e-7,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank-R split of W (O, I, 5, 5) into A (R, I, 3, 3) (pad 2) and B (O, R, 3, 3) (pad 0).

    Alternating least squares on ||W − compose(A, B)||_F: with A fixed the model is linear in B
    (one (9R×9R) normal system, O right-hand sides), with B fixed linear in A (I right-hand sides).
    Initialised from the truncated SVD of the even lift (see ``_als_fit``); stops after n_iter
    sweeps or when a sweep lowers the relative error by less than tol (relative). rank >= 9·min(I, O)
    returns the exact ``split5x5_shift`` construction (R = 9·min(I, O)). rng seeds the randomized
    SVD used on large layers.
    """
    Wd = _check5x5(W)
    R = _check_rank(rank)
    if int(n_iter) < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    O, I = Wd.shape[:2]
    if R >= 9 * min(I, O):
        return split5x5_shift(Wd)
    if not np.any(Wd):
        return _out(np.zeros((R, I, 3, 3))), _out(np.zeros((O, R, 3, 3)))
    # rescale to unit norm for conditioning, undo on the factors
    scale = float(np.linalg.norm(Wd))
    A, Bt = _als_fit(Wd.reshape(O, I, 25) / scale, R, int(n_iter), _rng(rng), float(tol))
    A, Bt = A * math.sqrt(scale), Bt * math.sqrt(scale)
    return _out(A.reshape(R, I, 3, 3)), _out(Bt.transpose(1, 0, 2).reshape(O, R, 3, 3))


def split5x5_rank_for_error(
    W: np.ndarray,
    max_rel_error: float,
    candidates: list[int],
    n_iter: int = 30,
    rng: np.random.Generator | int | None = 0,
) -> tuple[int, np.ndarray, np.ndarray, float]:
    """Smallest candidate rank whose ALS fit of W (O, I, 5, 5) has relative error <= max_rel_error,
    else the largest candidate. Returns (R, A (R, I, 3, 3), B (O, R, 3, 3), relative error of the
    returned float32 factors). R is the rank actually used (a candidate >= 9·min(I, O) gives the
    exact shift construction with R = 9·min(I, O)).

    The error is treated as non-increasing in rank (the ALS starts from nested SVD subspaces), so
    the candidates are searched by doubling then bisection: O(log n) fits, small ranks first.
    """
    Wd = _check5x5(W)
    cands = sorted({_check_rank(c, "candidate rank") for c in candidates})
    if not cands:
        raise ValueError("candidates is empty")
    if max_rel_error < 0:
        raise ValueError(f"max_rel_error must be >= 0, got {max_rel_error}")
    fits: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    def fit(k: int) -> tuple[np.ndarray, np.ndarray, float]:
        if k not in fits:
            A, B = split5x5_als(Wd, cands[k], n_iter=n_iter, rng=rng)
            fits[k] = (A, B, relative_error(Wd, compose_split5x5(A, B)))
        return fits[k]

    def ok(k: int) -> bool:
        return fit(k)[2] <= max_rel_error

    # doubling: find the first index hi with ok(hi), lo = last index known to fail
    lo, hi, step = -1, 0, 1
    while not ok(hi):
        lo = hi
        if hi == len(cands) - 1:
            A, B, err = fit(hi)
            return int(A.shape[0]), A, B, err
        hi = min(hi + step, len(cands) - 1)
        step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    A, B, err = fit(hi)
    return int(A.shape[0]), A, B, err
