"""SVD machinery and rank helpers shared by the factorizations: a content-keyed SVD memo, a one-thread
BLAS block, input checks, the relative error, and rank choice from a spectrum."""
from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Iterator

import numpy as np

# ----------------------------------------------------------------------------- SVD reuse

_SVD_MEMO: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None


@contextlib.contextmanager
def svd_reuse() -> Iterator[None]:
    """Within this block, the SVD of a given matrix is computed once: every rank of a spatial SVD, every side
    and rank of a Tucker-2 (HOSVD), every depthwise multiplier, and the spectra used to pick ranks share the
    factorization of the same unfolding. Results are identical to computing each one afresh (the same
    LAPACK call on the same bytes). The memo is dropped when the block exits (it holds full U, S, Vᵀ)."""
    global _SVD_MEMO
    outer = _SVD_MEMO
    if outer is None:
        _SVD_MEMO = {}
    try:
        yield
    finally:
        if outer is None:
            _SVD_MEMO = None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block's BLAS/LAPACK calls on one thread. LAPACK's SVD gains little from threads, and on a
    shared machine a multi-threaded OpenBLAS SVD waits on its busiest core: a 1536×1536 SVD measured 15 s on
    two threads next to one busy process, 2 s on one (threadpoolctl; a no-op if no BLAS is found)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def thin_svd(M: np.ndarray, *, disposable: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD (U, S, Vᵀ) of M, memoized by content inside ``svd_reuse``.

    ``disposable``: M is a 2-D float64 matrix in Fortran order that the caller never reads again. LAPACK's
    gesdd (through scipy) then works inside M instead of on a copy, with its minimal workspace: for the
    1536×1536 unfolding of ResNet-50's last 3×3 convs, 90 MiB at the peak instead of numpy's 145."""
    key = None if _SVD_MEMO is None else _memo_key(M)
    hit = None if key is None else _SVD_MEMO.get(key)  # type: ignore[union-attr]
    if hit is not None:
        return hit
    out = _lean_svd(M) if disposable else np.linalg.svd(M, full_matrices=False)
    if key is not None:
        _SVD_MEMO[key] = out  # type: ignore[index]
    return out


def _lean_svd(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import scipy.linalg

    return scipy.linalg.svd(M, full_matrices=False, overwrite_a=M.flags.f_contiguous, check_finite=False,
                            lapack_driver="gesdd")


def _memo_key(M: np.ndarray) -> tuple:
    """Shape, dtype, memory order and a digest of the bytes (a Fortran-ordered M is hashed as its C-ordered
    transpose: no copy)."""
    order = "F" if M.flags.f_contiguous and not M.flags.c_contiguous else "C"
    buf = M.T if order == "F" else np.ascontiguousarray(M)
    return (M.shape, M.dtype.str, order, hashlib.blake2b(buf.view(np.uint8).reshape(-1), digest_size=16).digest())


def _singular_values(M: np.ndarray, *, disposable: bool = False) -> np.ndarray:
    """Singular values of M, descending (the memo's, inside ``svd_reuse``; ``disposable`` as for ``thin_svd``)."""
    return np.linalg.svd(M, compute_uv=False) if _SVD_MEMO is None else thin_svd(M, disposable=disposable)[1]

# ----------------------------------------------------------------------------- helpers


def _f64(W: np.ndarray, ndim: int, name: str = "W") -> np.ndarray:
    arr = np.asarray(W, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _out(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_rank(rank: int, name: str = "rank") -> int:
    r = int(rank)
    if r < 1:
        raise ValueError(f"{name} must be >= 1, got {rank}")
    return r


def relative_error(W: np.ndarray, W_hat: np.ndarray) -> float:
    """||W − W_hat||_F / ||W||_F, computed in float64 (0.0 when ||W|| = 0).

    W, W_hat: arrays of the same shape (any).
    """
    a = np.asarray(W, dtype=np.float64)
    b = np.asarray(W_hat, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: W {a.shape} vs W_hat {b.shape}")
    nrm = float(np.linalg.norm(a))
    if nrm == 0.0:
        return 0.0
    return float(np.linalg.norm(a - b)) / nrm


# ----------------------------------------------------------------------------- rank helpers


def rank_for_energy(s: np.ndarray, energy: float) -> int:
    """Smallest r with Σ s[:r]² / Σ s² >= energy, for a 1-D spectrum s (sorted descending here).

    energy in (0, 1]; 1.0 → len(s); an all-zero (or empty) s → 1.
    """
    sv = np.asarray(s, dtype=np.float64)
    if sv.ndim != 1:
        raise ValueError(f"spectrum must be 1-D, got shape {sv.shape}")
    if not (0.0 < energy <= 1.0) or math.isnan(energy):
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    n = sv.size
    if n == 0:
        return 1
    e = np.sort(sv**2)[::-1]
    total = float(e.sum())
    if total == 0.0:
        return 1
    if energy >= 1.0:
        return n
    cum = np.cumsum(e) / total
    r = int(np.searchsorted(cum, energy, side="left")) + 1
    return max(1, min(r, n))


def align_rank(r: int, align: int, max_rank: int) -> int:
    """Round r up to a multiple of align (>= 1), clamp to max_rank, and return at least 1."""
    if int(align) < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    a = int(align)
    up = -(-max(int(r), 1) // a) * a
    return max(1, min(up, int(max_rank)))
