"""Tests of convopt.decompose: exact at full rank, error non-increasing in rank, the split5x5
composition checked against a reference numpy convolution (including the zero-padding border),
and the rank helpers' edge cases.

Tolerances: factors are float32, so "exact" means relative error <= 1e-6 (float32 round-off on
O(1) random weights is ~1e-7). Monotonicity uses an explicit slack: 1e-6 for the closed-form
(SVD-based) rewrites, 1e-6 for ALS too on random kernels (their errors at neighbouring ranks of the
grid differ by orders of magnitude more than that).
"""
from __future__ import annotations

import numpy as np
import pytest

from convopt import decompose as dc

EXACT = 1e-6  # relative error accepted as "exact" for float32 factors
MONO_SLACK = 1e-6  # allowed increase of the error between consecutive ranks


def rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    stride: tuple[int, int] = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """Reference ONNX Conv (cross-correlation) in float64: x (C, H, W), w (O, C/group, kh, kw),
    pads (top, left, bottom, right) → y (O, Ho, Wo)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    C, H, Wd = x.shape
    O, Ig, kh, kw = w.shape
    assert C == Ig * group and O % group == 0
    t, l, b, r = pads
    xp = np.pad(x, ((0, 0), (t, b), (l, r)))
    sh, sw = stride
    Ho = (H + t + b - kh) // sh + 1
    Wo = (Wd + l + r - kw) // sw + 1
    Og = O // group
    y = np.zeros((O, Ho, Wo))
    for g in range(group):
        xs = xp[g * Ig : (g + 1) * Ig]
        ws = w[g * Og : (g + 1) * Og]
        for a in range(kh):
            for c in range(kw):
                patch = xs[:, a : a + sh * (Ho - 1) + 1 : sh, c : c + sw * (Wo - 1) + 1 : sw]
                y[g * Og : (g + 1) * Og] += np.einsum("oi,ihw->ohw", ws[:, :, a, c], patch)
    return y


def assert_f32(*arrays: np.ndarray | None) -> None:
    for a in arrays:
        if a is None:
            continue
        assert a.dtype == np.float32
        assert a.flags["C_CONTIGUOUS"]


def assert_non_increasing(errors: list[float], slack: float = MONO_SLACK) -> None:
    for k in range(1, len(errors)):
        assert errors[k] <= errors[k - 1] + slack, f"error grew at step {k}: {errors}"


# ----------------------------------------------------------------------------- reference conv


def test_reference_conv_matches_definition() -> None:
    x = rand((3, 6, 7), 1)
    w = rand((4, 3, 3, 2), 2)
    y = conv2d(x, w, pads=(1, 0, 1, 1), stride=(2, 1))
    xp = np.pad(x, ((0, 0), (1, 1), (0, 1)))
    o, p, q = 2, 1, 3  # y[o](p, q) = Σ_{i,a,b} w[o,i,a,b] xp[i, 2p + a, q + b]
    expected = sum(w[o, i, a, b] * xp[i, 2 * p + a, q + b] for i in range(3) for a in range(3) for b in range(2))
    assert y[o, p, q] == pytest.approx(expected, rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- relative_error


def test_relative_error_values() -> None:
    W = np.array([[3.0, 4.0]])
    assert dc.relative_error(W, W) == 0.0
    assert dc.relative_error(W, np.zeros_like(W)) == pytest.approx(1.0, abs=1e-15)
    assert dc.relative_error(W, np.array([[3.0, 0.0]])) == pytest.approx(0.8, abs=1e-15)
    assert dc.relative_error(np.zeros((2, 2)), np.ones((2, 2))) == 0.0
    with pytest.raises(ValueError):
        dc.relative_error(np.zeros((2, 2)), np.zeros((2, 3)))


# ----------------------------------------------------------------------------- spatial SVD


@pytest.mark.parametrize("shape", [(5, 3, 3, 7), (4, 6, 3, 3), (8, 2, 5, 1), (3, 3, 7, 7)])
def test_spatial_svd_exact_at_full_rank(shape: tuple[int, int, int, int]) -> None:
    W = rand(shape, 3)
    O, I, kh, kw = shape
    full = min(I * kh, O * kw)
    V, H = dc.spatial_svd(W, full)
    assert V.shape == (full, I, kh, 1) and H.shape == (O, full, 1, kw)
    assert_f32(V, H)
    assert dc.relative_error(W, dc.compose_spatial(V, H)) <= EXACT
    V2, H2 = dc.spatial_svd(W, full + 50)  # clamped
    assert V2.shape[0] == full and H2.shape[1] == full


def test_spatial_svd_error_is_spectral_tail_and_monotone() -> None:
    W = rand((5, 3, 3, 7), 4)
    s = dc.spatial_svd_spectrum(W)
    assert s.shape == (9,)
    assert np.all(np.diff(s) <= 0)
    errors = []
    for r in range(1, len(s) + 1):
        err = dc.relative_error(W, dc.compose_spatial(*dc.spatial_svd(W, r)))
        tail = np.sqrt(np.sum(s[r:] ** 2) / np.sum(s**2))  # Eckart–Young
        assert err == pytest.approx(tail, abs=1e-6)
        errors.append(err)
    assert_non_increasing(errors)


def test_compose_spatial_matches_definition_and_convs() -> None:
    V = rand((4, 3, 3, 1), 5)
    H = rand((6, 4, 1, 3), 6)
    W_hat = dc.compose_spatial(V, H)
    o, i, a, b = 5, 2, 1, 0
    assert W_hat[o, i, a, b] == pytest.approx(sum(H[o, r, 0, b] * V[r, i, a, 0] for r in range(4)), rel=1e-6)
    # kh×1 conv with pads (1, 0) then 1×kw conv with pads (0, 1) equals the composed 3×3 conv, pad 1
    x = rand((3, 7, 8), 7)
    y2 = conv2d(conv2d(x, V, pads=(1, 0, 1, 0)), H, pads=(0, 1, 0, 1))
    y1 = conv2d(x, W_hat, pads=(1, 1, 1, 1))
    np.testing.assert_allclose(y2, y1, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- Tucker-2


@pytest.mark.parametrize("shape", [(6, 4, 3, 5), (3, 8, 3, 3), (16, 16, 1, 1), (10, 7, 5, 5)])
def test_tucker2_exact_at_full_rank(shape: tuple[int, int, int, int]) -> None:
    W = rand(shape, 8)
    O, I, kh, kw = shape
    for r_in, r_out in [(I, O), (None, O), (I, None), (None, None), (I + 5, O + 5)]:
        first, core, last = dc.tucker2(W, r_in, r_out, n_iter=2)
        assert_f32(first, core, last)
        assert (first is None) == (r_in is None) and (last is None) == (r_out is None)
        assert core.shape == (O, I, kh, kw)  # full ranks on both sides
        if first is not None:
            assert first.shape == (I, I, 1, 1)
        if last is not None:
            assert last.shape == (O, O, 1, 1)
        assert dc.relative_error(W, dc.compose_tucker2(first, core, last)) <= EXACT


def test_tucker2_shapes_one_sided() -> None:
    W = rand((12, 10, 3, 3), 9)
    first, core, last = dc.tucker2(W, 4, None)
    assert first is not None and first.shape == (4, 10, 1, 1)
    assert core.shape == (12, 4, 3, 3) and last is None
    first, core, last = dc.tucker2(W, None, 5)
    assert first is None and core.shape == (5, 10, 3, 3)
    assert last is not None and last.shape == (12, 5, 1, 1)
    first, core, last = dc.tucker2(W, 3, 5)
    assert first is not None and last is not None
    assert (first.shape, core.shape, last.shape) == ((3, 10, 1, 1), (5, 3, 3, 3), (12, 5, 1, 1))
    # the factor matrices are orthonormal (HOSVD)
    np.testing.assert_allclose(first[:, :, 0, 0] @ first[:, :, 0, 0].T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(last[:, :, 0, 0].T @ last[:, :, 0, 0], np.eye(5), atol=1e-6)


def test_tucker2_monotone_in_each_rank_and_hooi_not_worse() -> None:
    W = rand((12, 10, 3, 3), 10)
    O, I = 12, 10
    for r_out in [None, 3, 8]:
        errors = [dc.relative_error(W, dc.compose_tucker2(*dc.tucker2(W, r, r_out))) for r in range(1, I + 1)]
        assert_non_increasing(errors)
    for r_in in [None, 2, 7]:
        errors = [dc.relative_error(W, dc.compose_tucker2(*dc.tucker2(W, r_in, r))) for r in range(1, O + 1)]
        assert_non_increasing(errors)
    for r_in, r_out in [(2, 3), (4, 6), (7, 5)]:
        e_hosvd = dc.relative_error(W, dc.compose_tucker2(*dc.tucker2(W, r_in, r_out, n_iter=0)))
        e_hooi = dc.relative_error(W, dc.compose_tucker2(*dc.tucker2(W, r_in, r_out, n_iter=5)))
        assert e_hooi <= e_hosvd + 1e-6


def test_tucker2_spectra_and_one_sided_error() -> None:
    W = rand((12, 10, 3, 3), 11)
    s_out, s_in = dc.tucker2_spectra(W)
    assert s_out.shape == (12,) and s_in.shape == (10,)
    for r in [1, 4, 9]:
        # one-sided truncation is a plain truncated SVD of that unfolding (Eckart–Young)
        e_out = dc.relative_error(W, dc.compose_tucker2(*dc.tucker2(W, None, r)))
        assert e_out == pytest.approx(np.sqrt(np.sum(s_out[r:] ** 2) / np.sum(s_out**2)), abs=1e-6)
        e_in = dc.relative_error(W, dc.compose_tucker2(*dc.tucker2(W, r, None)))
        assert e_in == pytest.approx(np.sqrt(np.sum(s_in[r:] ** 2) / np.sum(s_in**2)), abs=1e-6)


def test_tucker2_bottleneck_convs_equal_composed_conv() -> None:
    W = rand((8, 6, 3, 3), 12)
    first, core, last = dc.tucker2(W, 4, 5)
    assert first is not None and last is not None
    x = rand((6, 7, 7), 13)
    y = conv2d(conv2d(conv2d(x, first), core, pads=(1, 1, 1, 1)), last)
    np.testing.assert_allclose(y, conv2d(x, dc.compose_tucker2(first, core, last), pads=(1, 1, 1, 1)), atol=1e-5)


# ----------------------------------------------------------------------------- depthwise


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (12, 3, 3, 5), (4, 5, 3, 3), (32, 2, 3, 3)])
def test_depthwise_exact_at_full_multiplier(shape: tuple[int, int, int, int]) -> None:
    W = rand(shape, 14)
    O, I, kh, kw = shape
    full = min(O, kh * kw)
    D, P = dc.depthwise_svd(W, full)
    assert D.shape == (I, full, kh, kw) and P.shape == (O, I, full)
    assert_f32(D, P)
    assert dc.relative_error(W, dc.compose_depthwise(D, P)) <= EXACT
    D2, P2 = dc.depthwise_svd(W, full + 7)  # clamped
    assert D2.shape[1] == full and P2.shape[2] == full


def test_depthwise_error_is_pooled_tail_and_monotone() -> None:
    W = rand((10, 4, 3, 3), 15)
    S = dc.depthwise_spectrum(W)
    assert S.shape == (4, 9)
    errors = []
    for m in range(1, 10):
        err = dc.relative_error(W, dc.compose_depthwise(*dc.depthwise_svd(W, m)))
        assert err == pytest.approx(np.sqrt(np.sum(S[:, m:] ** 2) / np.sum(S**2)), abs=1e-6)
        errors.append(err)
    assert_non_increasing(errors)


def test_depthwise_onnx_layout_convs_equal_composed_conv() -> None:
    W = rand((5, 3, 3, 3), 16)
    m = 2
    D, P = dc.depthwise_svd(W, m)
    x = rand((3, 6, 6), 17)
    z = conv2d(x, D.reshape(3 * m, 1, 3, 3), pads=(1, 1, 1, 1), group=3)  # channel i·m + j
    y = conv2d(z, P.reshape(5, 3 * m, 1, 1))
    np.testing.assert_allclose(y, conv2d(x, dc.compose_depthwise(D, P), pads=(1, 1, 1, 1)), atol=1e-5)


# ----------------------------------------------------------------------------- split5x5: composition


def test_compose_split5x5_matches_definition() -> None:
    A = rand((3, 2, 3, 3), 18)
    B = rand((4, 3, 3, 3), 19)
    W_hat = dc.compose_split5x5(A, B)
    assert W_hat.shape == (4, 2, 5, 5)
    ref = np.zeros((4, 2, 5, 5))
    for u1 in range(3):
        for u2 in range(3):
            for v1 in range(3):
                for v2 in range(3):
                    ref[:, :, u1 + v1, u2 + v2] += np.einsum("ri,or->oi", A[:, :, u1, u2], B[:, :, v1, v2])
    np.testing.assert_allclose(W_hat, ref, rtol=1e-6, atol=1e-6)


def test_split5x5_pad2_then_pad0_equals_5x5_pad2() -> None:
    A = rand((4, 3, 3, 3), 20)
    B = rand((5, 4, 3, 3), 21)
    W_hat = dc.compose_split5x5(A, B)
    x = rand((3, 7, 6), 22)
    stacked = conv2d(conv2d(x, A, pads=(2, 2, 2, 2)), B)
    direct = conv2d(x, W_hat, pads=(2, 2, 2, 2))
    assert stacked.shape == direct.shape == (5, 7, 6)
    np.testing.assert_allclose(stacked, direct, rtol=0, atol=1e-5)
    # a stride goes on the second 3×3
    stacked_s2 = conv2d(conv2d(x, A, pads=(2, 2, 2, 2)), B, stride=(2, 2))
    np.testing.assert_allclose(stacked_s2, conv2d(x, W_hat, pads=(2, 2, 2, 2), stride=(2, 2)), atol=1e-5)


def test_split5x5_pad1_plus_pad1_differs_only_on_border_ring() -> None:
    A = rand((4, 3, 3, 3), 23)
    B = rand((5, 4, 3, 3), 24)
    x = rand((3, 8, 9), 25)
    direct = conv2d(x, dc.compose_split5x5(A, B), pads=(2, 2, 2, 2))
    wrong = conv2d(conv2d(x, A, pads=(1, 1, 1, 1)), B, pads=(1, 1, 1, 1))
    assert wrong.shape == direct.shape
    diff = np.abs(wrong - direct).max(axis=0)  # (H, W), max over output channels
    ring = np.ones_like(diff, dtype=bool)
    ring[1:-1, 1:-1] = False
    assert diff[~ring].max() <= 1e-5  # interior identical
    assert diff[ring].min() > 1e-3  # every border pixel differs (random weights)


# ----------------------------------------------------------------------------- split5x5: shift / ALS


@pytest.mark.parametrize("O,I", [(7, 4), (4, 7), (5, 5), (1, 3)])
def test_split5x5_shift_exact(O: int, I: int) -> None:
    W = rand((O, I, 5, 5), 26)
    A, B = dc.split5x5_shift(W)
    R = 9 * min(I, O)
    assert A.shape == (R, I, 3, 3) and B.shape == (O, R, 3, 3)
    assert_f32(A, B)
    assert dc.relative_error(W, dc.compose_split5x5(A, B)) <= EXACT
    shifts = A if I <= O else B  # the pure-shift side: one-hot kernels
    flat = shifts.reshape(shifts.shape[0] * shifts.shape[1], 9)
    assert np.all((flat == 0) | (flat == 1))
    assert int(flat.sum()) == R
    x = rand((I, 6, 6), 27)
    np.testing.assert_allclose(
        conv2d(conv2d(x, A, pads=(2, 2, 2, 2)), B), conv2d(x, W, pads=(2, 2, 2, 2)), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("O,I", [(8, 5), (5, 8)])
def test_split5x5_als_full_rank_is_exact_shift(O: int, I: int) -> None:
    W = rand((O, I, 5, 5), 28)
    A, B = dc.split5x5_als(W, 9 * min(I, O) + 3)
    A0, B0 = dc.split5x5_shift(W)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(B, B0)
    assert dc.relative_error(W, dc.compose_split5x5(A, B)) <= EXACT


@pytest.mark.parametrize("O,I", [(10, 6), (6, 10)])
def test_split5x5_als_error_non_increasing_in_rank(O: int, I: int) -> None:
    W = rand((O, I, 5, 5), 29)
    ranks = [1, 2, 4, 8, 12, 16, 24, 9 * min(I, O)]
    errors = []
    for r in ranks:
        A, B = dc.split5x5_als(W, r, n_iter=30)
        assert A.shape == (r, I, 3, 3) and B.shape == (O, r, 3, 3)
        assert_f32(A, B)
        errors.append(dc.relative_error(W, dc.compose_split5x5(A, B)))
    assert_non_increasing(errors)
    assert errors[0] > 0.5  # rank 1 cannot fit a random kernel
    assert errors[-1] <= EXACT


def test_split5x5_als_iterations_do_not_increase_error() -> None:
    W = rand((12, 8, 5, 5), 30)
    errors = [dc.relative_error(W, dc.compose_split5x5(*dc.split5x5_als(W, 6, n_iter=n))) for n in (0, 1, 5, 30)]
    assert_non_increasing(errors, slack=1e-6)  # every sweep is an exact least-squares step
    assert errors[-1] < errors[0] - 0.05  # and ALS clearly improves on its SVD start


def test_split5x5_als_recovers_planted_low_rank() -> None:
    rng = np.random.default_rng(31)
    R0 = 3
    W = dc.compose_split5x5(rng.standard_normal((R0, 8, 3, 3)), rng.standard_normal((12, R0, 3, 3))).astype(np.float64)
    noise = 1e-3 * np.linalg.norm(W) / np.sqrt(W.size)
    W = W + noise * rng.standard_normal(W.shape)  # relative noise 1e-3
    e_below = dc.relative_error(W, dc.compose_split5x5(*dc.split5x5_als(W, R0 - 1)))
    e_at = dc.relative_error(W, dc.compose_split5x5(*dc.split5x5_als(W, R0)))
    assert e_below > 0.1
    assert e_at <= 2e-3  # down to the noise level
    r, A, B, err = dc.split5x5_rank_for_error(W, 0.01, [1, 2, 3, 4, 6, 8, 16])
    assert r == R0 and A.shape == (R0, 8, 3, 3) and B.shape == (12, R0, 3, 3)
    assert err == pytest.approx(dc.relative_error(W, dc.compose_split5x5(A, B)), abs=1e-12)
    assert err <= 0.01


def test_split5x5_rank_for_error_smallest_candidate() -> None:
    W = rand((8, 6, 5, 5), 32)
    cands = [2, 4, 6, 8, 12, 16]
    errs = {r: dc.relative_error(W, dc.compose_split5x5(*dc.split5x5_als(W, r))) for r in cands}
    target = (errs[6] + errs[8]) / 2  # 8 is the first candidate that reaches it
    r, A, B, err = dc.split5x5_rank_for_error(W, target, list(reversed(cands)))
    assert r == 8 and err == pytest.approx(errs[8], abs=1e-12)
    assert_f32(A, B)
    # unreachable target → the largest candidate and its error
    r, A, B, err = dc.split5x5_rank_for_error(W, 1e-9, [2, 4])
    assert r == 4 and A.shape[0] == 4 and err == pytest.approx(errs[4], abs=1e-12)
    # a candidate at or above 9·min(I, O) is the exact shift construction
    r, A, B, err = dc.split5x5_rank_for_error(W, 1e-6, [4, 100])
    assert r == 54 and err <= EXACT


def test_split5x5_deterministic_and_validated() -> None:
    W = rand((6, 4, 5, 5), 33)
    A1, B1 = dc.split5x5_als(W, 5, rng=7)
    A2, B2 = dc.split5x5_als(W, 5, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(A1, A2)
    np.testing.assert_array_equal(B1, B2)
    with pytest.raises(ValueError):
        dc.split5x5_als(rand((4, 4, 3, 3)), 4)
    with pytest.raises(ValueError):
        dc.split5x5_shift(rand((4, 4, 5, 3)))
    with pytest.raises(ValueError):
        dc.split5x5_als(W, 0)
    A, B = dc.split5x5_als(np.zeros((6, 4, 5, 5)), 3)
    assert not A.any() and not B.any() and A.shape == (3, 4, 3, 3)


# ----------------------------------------------------------------------------- decaying spectra


def low_rank_plus_noise(rng: np.random.Generator, terms: list[np.ndarray], noise: float) -> np.ndarray:
    W = np.sum(terms, axis=0)
    return W + noise * np.linalg.norm(W) / np.sqrt(W.size) * rng.standard_normal(W.shape)


def test_decaying_spectrum_spatial_gets_low_rank() -> None:
    rng = np.random.default_rng(34)
    O, I, k = 16, 12, 3
    terms = []
    for scale in (3.0, 2.0, 1.0):  # three separable kernels: W[o,i,a,b] = p[i,a] q[o,b]
        p, q = rng.standard_normal((I, k)), rng.standard_normal((O, k))
        terms.append(scale * np.einsum("ia,ob->oiab", p, q))
    W = low_rank_plus_noise(rng, terms, 1e-3)
    s = dc.spatial_svd_spectrum(W)
    r = dc.rank_for_energy(s, 0.999)
    assert r <= 3
    assert dc.relative_error(W, dc.compose_spatial(*dc.spatial_svd(W, r))) <= 0.035  # sqrt(1 - 0.999) ≈ 0.032


def test_decaying_spectrum_tucker_and_depthwise_get_low_rank() -> None:
    rng = np.random.default_rng(35)
    O, I = 24, 20
    U_out, U_in = rng.standard_normal((O, 3)), rng.standard_normal((I, 2))
    core = rng.standard_normal((3, 2, 3, 3))
    W = low_rank_plus_noise(rng, [np.einsum("or,rsab,is->oiab", U_out, core, U_in)], 1e-3)
    s_out, s_in = dc.tucker2_spectra(W)
    r_out, r_in = dc.rank_for_energy(s_out, 0.999), dc.rank_for_energy(s_in, 0.999)
    assert r_out <= 3 and r_in <= 2
    assert dc.relative_error(W, dc.compose_tucker2(*dc.tucker2(W, r_in, r_out, n_iter=2))) <= 0.01

    # depthwise: every W[:, i] is (O × 9) of rank 2
    Wd = low_rank_plus_noise(rng, [np.einsum("oij,ijab->oiab", rng.standard_normal((O, 4, 2)), rng.standard_normal((4, 2, 3, 3)))], 1e-3)
    S = dc.depthwise_spectrum(Wd)
    m = dc.rank_for_energy(np.sqrt((S**2).sum(axis=0)), 0.999)
    assert m == 2
    assert dc.relative_error(Wd, dc.compose_depthwise(*dc.depthwise_svd(Wd, m))) <= 0.01


# ----------------------------------------------------------------------------- rank helpers


def test_rank_for_energy() -> None:
    s = np.array([4.0, 2.0, 1.0, 0.5])  # energies 16, 4, 1, 0.25 of 21.25
    assert dc.rank_for_energy(s, 0.5) == 1
    assert dc.rank_for_energy(s, 16 / 21.25) == 1  # exactly reached
    assert dc.rank_for_energy(s, 0.9) == 2
    assert dc.rank_for_energy(s, 0.98) == 3  # 21 / 21.25 = 0.988
    assert dc.rank_for_energy(s, 0.99) == 4
    assert dc.rank_for_energy(s, 1.0) == 4
    assert dc.rank_for_energy(s[::-1].copy(), 0.5) == 1  # order does not matter
    assert dc.rank_for_energy(np.zeros(5), 0.9) == 1
    assert dc.rank_for_energy(np.array([]), 0.9) == 1
    assert dc.rank_for_energy(np.array([1.0, 0.0, 0.0]), 1.0) == 3  # 1.0 → full length
    assert dc.rank_for_energy(np.ones(10), 1.0 - 1e-13) == 10
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            dc.rank_for_energy(s, bad)
    with pytest.raises(ValueError):
        dc.rank_for_energy(np.ones((2, 2)), 0.5)


def test_compose_rejects_mismatched_factors() -> None:
    with pytest.raises(ValueError):
        dc.compose_spatial(rand((4, 3, 3, 1)), rand((6, 5, 1, 3)))
    with pytest.raises(ValueError):
        dc.compose_tucker2(rand((2, 5, 1, 1)), rand((3, 4, 3, 3)), None)
    with pytest.raises(ValueError):
        dc.compose_depthwise(rand((3, 2, 3, 3)), rand((5, 3, 4)))
    with pytest.raises(ValueError):
        dc.compose_split5x5(rand((4, 3, 3, 3)), rand((5, 3, 3, 3)))
    with pytest.raises(ValueError):
        dc.spatial_svd(rand((4, 3, 3, 3)), 0)


def test_align_rank() -> None:
    assert dc.align_rank(5, 8, 64) == 8
    assert dc.align_rank(8, 8, 64) == 8
    assert dc.align_rank(9, 8, 64) == 16
    assert dc.align_rank(70, 8, 64) == 64
    assert dc.align_rank(3, 1, 2) == 2
    assert dc.align_rank(1, 16, 4) == 4
    assert dc.align_rank(0, 8, 64) == 8
    assert dc.align_rank(5, 8, 0) == 1
    with pytest.raises(ValueError):
        dc.align_rank(5, 0, 64)


def test_svd_reuse_gives_the_same_factors_and_factorizes_each_unfolding_once(monkeypatch: pytest.MonkeyPatch) -> None:
    W = rand((24, 16, 3, 3), seed=5)
    fresh = [dc.spatial_svd(W, r) for r in (4, 8, 16)] + [dc.tucker2(W, 8, 12)] + [dc.depthwise_svd(W, 2)]
    calls = []
    real = np.linalg.svd

    def counting(M, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(M.shape)
        return real(M, *a, **k)

    import convopt.decompose.base as dcb

    lean = dcb._lean_svd

    def counting_lean(M):  # type: ignore[no-untyped-def]  # the spatial unfolding's SVD (scipy, in place)
        calls.append(M.shape)
        return lean(M)

    monkeypatch.setattr(np.linalg, "svd", counting)
    monkeypatch.setattr(dcb, "_lean_svd", counting_lean)
    with dc.svd_reuse():
        reused = [dc.spatial_svd(W, r) for r in (4, 8, 16)] + [dc.tucker2(W, 8, 12)] + [dc.depthwise_svd(W, 2)]
        s = dc.spatial_svd_spectrum(W)
        s_out, s_in = dc.tucker2_spectra(W)
        dc.depthwise_spectrum(W)
    # one SVD per distinct matrix: spatial (48, 72), mode-O (24, 144), mode-I (16, 216), depthwise (16, 24, 9)
    assert sorted(calls) == sorted([(48, 72), (24, 144), (16, 216), (16, 24, 9)])
    for a, b in zip(fresh, reused):
        for fa, fb in zip(a, b):
            assert (fa is None and fb is None) or np.array_equal(fa, fb)
    np.testing.assert_allclose(s, real(W.astype(np.float64).transpose(1, 2, 0, 3).reshape(48, 72), compute_uv=False),
                               rtol=1e-10)
    assert s_out.shape == (24,) and s_in.shape == (16,)
    calls.clear()
    dc.spatial_svd(W, 4)  # outside the block: no memo
    dc.spatial_svd(W, 4)
    assert len(calls) == 2
