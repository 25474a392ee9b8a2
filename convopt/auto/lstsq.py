"""Least-squares refit of a conv's last factor, pure numpy (no ONNX, no ORT).

Model: y[n, :, p] ≈ Wl · patch(z, n, p) + b, where z is the last factor's input, patch the k×k window
(im2col, ONNX cross-correlation order (c, a, b)) under output pixel p, and y the *original* layer's output.
Rows (pixels) are subsampled; the normal equations AᵀA, AᵀY (A = [patches, 1]) are accumulated over
batches so memory stays bounded, then solved with a light ridge: w = (AᵀA + λI)⁻¹ AᵀY.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import lapack


@dataclass(frozen=True)
class ConvGeom:
    """Geometry of a group-1 conv: kernel (kh, kw), strides, pads (top, left, bottom, right), dilations."""

    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        kh, kw = self.kernel
        oh = (h + self.pads[0] + self.pads[2] - ((kh - 1) * self.dilations[0] + 1)) // self.strides[0] + 1
        ow = (w + self.pads[1] + self.pads[3] - ((kw - 1) * self.dilations[1] + 1)) // self.strides[1] + 1
        return oh, ow


def sample_positions(n: int, oh: int, ow: int, per_sample: int, rng: np.random.Generator) -> np.ndarray:
    """(P, 3) int array of (sample, row, col) output positions: ``per_sample`` distinct pixels per sample
    (all of them when the map is smaller)."""
    k = min(per_sample, oh * ow)
    rows = []
    for i in range(n):
        flat = rng.choice(oh * ow, size=k, replace=False) if k < oh * ow else np.arange(oh * ow)
        rows.append(np.stack([np.full(k, i), flat // ow, flat % ow], axis=1))
    return np.concatenate(rows, axis=0).astype(np.int64) if rows else np.zeros((0, 3), np.int64)


def im2col_at(z: np.ndarray, geom: ConvGeom, pos: np.ndarray) -> np.ndarray:
    """Patches of z (N, C, H, W) under the output positions ``pos`` (P, 3) → (P, C·kh·kw), in z's dtype,
    column order (c, a, b) = the order of W.reshape(O, C·kh·kw)."""
    t, l, b, r = geom.pads
    zp = np.pad(z, ((0, 0), (0, 0), (t, b), (l, r))) if any(geom.pads) else z
    zt = zp.transpose(0, 2, 3, 1)  # (N, Hp, Wp, C)
    kh, kw = geom.kernel
    rows = pos[:, 1:2] * geom.strides[0] + np.arange(kh)[None, :] * geom.dilations[0]  # (P, kh)
    cols = pos[:, 2:3] * geom.strides[1] + np.arange(kw)[None, :] * geom.dilations[1]  # (P, kw)
    g = zt[pos[:, 0][:, None, None], rows[:, :, None], cols[:, None, :]]  # (P, kh, kw, C)
    return np.ascontiguousarray(g.transpose(0, 3, 1, 2).reshape(len(pos), -1))


def pixels_at(y: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """y (N, O, OH, OW) at positions (P, 3) → (P, O) float64."""
    return y[pos[:, 0], :, pos[:, 1], pos[:, 2]].astype(np.float64)


@dataclass
class NormalEquations:
    """Running AᵀA, AᵀY, YᵀY for A = [X, 1] (bias column last)."""

    features: int
    outputs: int
    AtA: np.ndarray = field(init=False)
    AtY: np.ndarray = field(init=False)
    YtY: float = 0.0
    rows: int = 0

    def __post_init__(self) -> None:
        self.AtA = np.zeros((self.features + 1, self.features + 1))
        self.AtY = np.zeros((self.features + 1, self.outputs))

    def add(self, X: np.ndarray, Y: np.ndarray) -> None:
        """X (P, F), Y (P, O)."""
        # products of one batch in float32 (half the time of float64 BLAS; a batch holds at most a few
        # thousand rows), accumulated across batches in float64
        A = np.concatenate([np.asarray(X, np.float32), np.ones((X.shape[0], 1), np.float32)], axis=1)
        Y32 = np.asarray(Y, np.float32)
        self.AtA += A.T @ A
        self.AtY += A.T @ Y32
        self.YtY += float(np.sum(np.square(Y32, dtype=np.float64)))
        self.rows += X.shape[0]

    def gram(self, ridge: float) -> np.ndarray:
        """AᵀA with the ridge λ = ridge · mean(diag AᵀA) added on the weights' diagonal (not the bias)."""
        G = self.AtA.copy()
        F = self.features
        lam = ridge * float(np.trace(G[:F, :F])) / max(F, 1)
        G[np.arange(F), np.arange(F)] += lam if lam > 0 else 1e-12
        return G

    def solver(self, ridge: float = 1e-5) -> Callable[[np.ndarray], np.ndarray]:
        """rhs (F + 1, k) → the ridge least-squares solution G⁻¹ rhs, G = ``gram(ridge)``: G's Cholesky factor is
        made once, in place on its one copy (LAPACK potrf on the transpose, which is G itself: memory of one
        (F + 1)² array beside AᵀA, where a general solve takes two more); np.linalg.lstsq when G is not
        positive definite."""
        G = self.gram(ridge)
        U, info = lapack.dpotrf(G.T, lower=0, clean=1, overwrite_a=1)  # G.T: Fortran order, factored in place
        if info != 0:
            del U, G
            G = self.gram(ridge)
            return lambda rhs: np.linalg.lstsq(G, rhs, rcond=None)[0]
        return lambda rhs: lapack.dpotrs(U, rhs, lower=0)[0]

    def solve(self, ridge: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
        """Least squares with the ridge of ``gram`` → (Wl (O, F), b (O,))."""
        return split_solution(self.solver(ridge)(self.AtY), self.features)

    def sq_error(self, Wl: np.ndarray, b: np.ndarray) -> float:
        """Σ ||Y − X Wlᵀ − b||² over the accumulated rows, from the normal equations."""
        w = np.concatenate([np.asarray(Wl, np.float64).T, np.asarray(b, np.float64)[None, :]], axis=0)
        return float(np.sum(w * (self.AtA @ w)) - 2.0 * np.sum(w * self.AtY) + self.YtY)

    def rel_error(self, Wl: np.ndarray, b: np.ndarray) -> float:
        """sqrt(sq_error / ||Y||²)."""
        return float(np.sqrt(max(self.sq_error(Wl, b), 0.0) / self.YtY)) if self.YtY > 0 else 0.0


def split_solution(w: np.ndarray, features: int) -> tuple[np.ndarray, np.ndarray]:
    """A solution w (F + 1, O) of the normal equations → (Wl (O, F), b (O,))."""
    return w[:features].T.copy(), w[features].copy()


def relu_error(X: np.ndarray, Y: np.ndarray, Wl: np.ndarray, b: np.ndarray) -> float:
    """||relu(Y) − relu(X Wlᵀ + b)|| / ||relu(Y)||: the layer's error after the ReLU that follows it."""
    pred = X @ np.asarray(Wl, X.dtype).T + np.asarray(b, X.dtype)
    ry = np.maximum(Y, 0)
    den = float(np.sum(np.square(ry, dtype=np.float64)))
    num = float(np.sum(np.square(ry - np.maximum(pred, 0), dtype=np.float64)))
    return float(np.sqrt(num / den)) if den > 0 else 0.0


def relu_refit(ne: NormalEquations, X: np.ndarray, Y: np.ndarray, ridge: float = 1e-5,
               iters: int = 4) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit Wl, b so that relu(X Wlᵀ + b) ≈ relu(Y) (the response after the following ReLU, as Zhang et al.
    2015 reconstruct it), from the linear least-squares start ``ne.solve``.

    Where the original output is negative the ReLU zeroes it, so any prediction ≤ 0 is exact there: each
    iteration re-targets those pixels to min(prediction, 0) and re-solves the least squares with the same
    AᵀA (only AᵀY changes). The target is a quadratic upper bound of the post-ReLU loss at dead pixels, tight
    at the current prediction. Returns the iterate with the lowest post-ReLU error (checked exactly on the
    rows): (Wl (O, F), b (O,), error). X (P, F) float32 rows, Y (P, O) their original pre-ReLU outputs."""
    F = ne.features
    solve = ne.solver(ridge)
    Wl, b = split_solution(solve(ne.AtY), F)
    best = (Wl, b, relu_error(X, Y, Wl, b))
    Y32 = np.asarray(Y, np.float32)
    dead = Y32 <= 0
    for _ in range(iters):
        pred = X @ Wl.T.astype(np.float32) + b.astype(np.float32)
        t = np.where(dead, np.minimum(pred, 0), Y32)
        AtY = np.concatenate([X.T @ t, t.sum(axis=0, dtype=np.float64)[None, :]], axis=0).astype(np.float64)
        Wl, b = split_solution(solve(AtY), F)
        err = relu_error(X, Y, Wl, b)
        if not np.isfinite(err) or err >= best[2] - 1e-6 * best[2]:
            if np.isfinite(err) and err < best[2]:
                best = (Wl, b, err)
            break
        best = (Wl, b, err)
    return best
