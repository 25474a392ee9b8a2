"""Tests of convopt.datafit (pure numpy): streaming moments, robust whitening, whitened low rank and the
data-aware factors of every pass.

Each fit is checked for: exactness at full rank (float32 factors: relative error <= EXACT, also on a
rank-deficient S), reduction to the weight-only factors when S = I, error non-increasing in rank, never
above the weight-only factors' data-weighted error, and strictly below it on strongly correlated synthetic
activations (smooth, channel-mixed, ReLU'd, with a dead channel and an offset: the statistics of a real
conv input). Where a closed form is provably optimal (the whitened low rank, and each pass under the proxy
moment its closed form assumes), the error is checked against that optimum.
"""
from __future__ import annotations

import numpy as np
import pytest

from convopt import datafit as df
from convopt import decompose as dc
from convopt.auto.lstsq import ConvGeom, im2col_at, sample_positions
from tests.test_decompose import conv2d

EXACT = 1e-6  # float32 factors, O(1) weights
MONO_SLACK = 1e-6  # relative slack on "non-increasing" (float32 factors)
CLEAR = 0.9  # "strictly lower": data-aware error at most 90 % of the weight-only one


def activations(n: int, I: int, hw: int, seed: int = 0) -> np.ndarray:
    """(n, I, hw, hw) float64: blurred noise mixed across channels with a decaying spectrum, plus an offset,
    through a ReLU; channel 0 dead."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, I, hw + 4, hw + 4))
    k = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    for ax in (2, 3):
        z = sum(k[j] * np.take(z, np.arange(j, j + z.shape[ax] - 4), axis=ax) for j in range(5))
    U, _ = np.linalg.qr(rng.standard_normal((I, I)))
    x = np.maximum(np.einsum("ij,njhw->nihw", U * 0.6 ** np.arange(I), z) + 0.3, 0.0)
    x[:, 0] = 0.0
    return x


def patches(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """Every im2col patch (P, I·k·k) of x (n, I, H, W) for a k×k conv with the given pad, stride 1."""
    geom = ConvGeom((k, k), (1, 1), (pad,) * 4)
    oh, ow = geom.out_hw(x.shape[2], x.shape[3])
    pos = sample_positions(x.shape[0], oh, ow, oh * ow, np.random.default_rng(0))
    return im2col_at(x, geom, pos)


def moments(X: np.ndarray) -> df.Moments:
    acc = df.MomentAccumulator(X.shape[1])
    acc.add(X)
    return acc.moments()


@pytest.fixture(scope="module")
def data3() -> tuple[np.ndarray, np.ndarray]:
    """(activations (4, 8, 12, 12), their 3×3 pad-1 patch moment S (72, 72))."""
    x = activations(4, 8, 12)
    return x, moments(patches(x, 3, 1)).second


def weights(O: int, I: int, k: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((O, I, k, k))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return dc.relative_error(a, b)


# ----------------------------------------------------------------------------- moments


def test_accumulator_batches_equal_one_shot() -> None:
    X = np.random.default_rng(0).standard_normal((101, 7)).astype(np.float32) + 2.0
    acc = df.MomentAccumulator(7)
    for lo, hi in ((0, 3), (3, 50), (50, 101)):
        acc.add(X[lo:hi])
    m = acc.moments()
    Xd = X.astype(np.float64)
    assert m.count == 101
    np.testing.assert_allclose(m.mean, Xd.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(m.second, Xd.T @ Xd / 101, rtol=1e-13)
    np.testing.assert_allclose(m.covariance, np.cov(Xd.T, bias=True), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.about(np.zeros(7)), m.second, rtol=1e-14)
    W = np.arange(14.0).reshape(2, 7)
    lin = m.of_linear(W)
    np.testing.assert_allclose(lin.second, (Xd @ W.T).T @ (Xd @ W.T) / 101, rtol=1e-10)
    np.testing.assert_allclose(lin.mean, (Xd @ W.T).mean(axis=0), rtol=1e-12)


def test_accumulator_rejects_bad_rows() -> None:
    acc = df.MomentAccumulator(3)
    with pytest.raises(ValueError, match="no rows"):
        acc.moments()
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        acc.add(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.full((1, 3), np.nan))


def test_derived_moments_match_direct_patch_statistics(data3) -> None:
    x, S = data3
    X = patches(x, 3, 1).reshape(-1, 8, 3, 3)  # (P, i, a, b)
    P = X.shape[0]
    Sv = sum(np.einsum("pia,pjc->iajc", X[..., b], X[..., b]) for b in range(3)).reshape(24, 24) / (3 * P)
    np.testing.assert_allclose(df.vertical_moment(S, 8, 3, 3), Sv, rtol=1e-10, atol=1e-14)
    Sin = np.einsum("piab,pjab->ij", X, X) / (9 * P)
    np.testing.assert_allclose(df.channel_moment(S, 8, 3, 3), Sin, rtol=1e-10, atol=1e-14)
    Xc = X.reshape(P, 8, 9)
    np.testing.assert_allclose(df.channel_patch_moments(S, 8, 3, 3), np.einsum("pik,pil->ikl", Xc, Xc) / P,
                               rtol=1e-10, atol=1e-14)


def test_weighted_error_is_the_conv_output_error(data3) -> None:
    """tr(ΔW S ΔWᵀ) with S the im2col patch moment is the mean squared output error of the actual conv."""
    x, S = data3
    W = weights(6, 8, 3)
    W_hat = dc.compose_spatial(*dc.spatial_svd(W, 5)).astype(np.float64)
    num = sum(np.sum(conv2d(xi, W - W_hat, pads=(1, 1, 1, 1)) ** 2) for xi in x)
    den = sum(np.sum(conv2d(xi, W, pads=(1, 1, 1, 1)) ** 2) for xi in x)
    assert df.weighted_error(W, W_hat, S) == pytest.approx(np.sqrt(num / den), rel=1e-9)


# ----------------------------------------------------------------------------- whitening


def test_whiten_rank_deficient_cholesky_with_stated_ridge() -> None:
    X = activations(1, 6, 3).transpose(0, 2, 3, 1).reshape(-1, 6)[:4]  # 4 rows, dead channel: rank <= 4
    S = moments(X).second
    assert np.linalg.matrix_rank(S) < 6
    w = df.whiten(S, ridge=1e-5)
    lam = 1e-5 * np.trace(S) / 6
    assert w.method == "cholesky"
    assert float(w.ridge) == pytest.approx(lam, rel=1e-12)
    np.testing.assert_allclose(w.L @ w.L.T, S + lam * np.eye(6), rtol=1e-10, atol=1e-14)


def test_whiten_indefinite_falls_back_to_floored_eigen_root() -> None:
    Q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((3, 3)))
    S = Q @ np.diag([1.0, 0.5, -1e-3]) @ Q.T  # indefinite beyond the ridge: Cholesky must fail
    w = df.whiten(S, ridge=1e-6)
    assert w.method == "eigen"
    vals = np.linalg.eigvalsh(w.L @ w.L.T)
    lam = 1e-6 * np.trace(S) / 3
    np.testing.assert_allclose(np.sort(vals), [lam, 0.5, 1.0], rtol=1e-9)


def test_whiten_zero_is_identity_and_stacks_match() -> None:
    np.testing.assert_allclose(df.whiten(np.zeros((4, 4))).L, np.eye(4))
    A = np.random.default_rng(0).standard_normal((3, 5, 5))
    stack = A @ A.transpose(0, 2, 1)
    Ls = df.whiten(stack).L
    for s, L in zip(stack, Ls):
        np.testing.assert_allclose(L, df.whiten(s).L, rtol=1e-12)
    with pytest.raises(ValueError, match="ridge"):
        df.whiten(stack[0], ridge=0.0)


def test_whiten_runs_in_place_on_one_copy_and_matches_the_expression() -> None:
    """One (F, F) matrix is whitened by LAPACK's Cholesky in place on a single copy (S itself untouched): the
    factor of (S + Sᵀ)/2 + λI, as the expression gives it, with at most ~1 (F, F) array of numpy workspace
    (the expression and numpy's cholesky took four)."""
    import tracemalloc

    F = 600
    A = np.random.default_rng(7).standard_normal((F + 50, F))
    S = A.T @ A / F
    S[3, 5] += 1e-9  # not exactly symmetric: whitening symmetrizes first
    before = S.copy()
    tracemalloc.start()
    w = df.whiten(S)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(S, before)
    assert peak <= 1.5 * F * F * 8, f"whitening took {peak / (F * F * 8):.2f} (F, F) arrays of workspace"
    lam = 1e-5 * np.trace(S) / F
    L = np.linalg.cholesky((S + S.T) / 2.0 + lam * np.eye(F))
    assert w.method == "cholesky" and w.L.flags.c_contiguous
    np.testing.assert_array_equal(np.triu(w.L, 1), 0.0)
    np.testing.assert_allclose(w.L, L, rtol=1e-10, atol=1e-12 * np.abs(L).max())


def test_symmetrize_and_covariance_in_place_equal_their_expressions() -> None:
    """The in-place forms give the very numbers of (A + Aᵀ)/2 and S − μμᵀ − μμᵀ + μμᵀ, for sizes that are not a
    multiple of the block."""
    rng = np.random.default_rng(8)
    A = rng.standard_normal((131, 131))
    from convopt.datafit.moments import symmetrize

    np.testing.assert_array_equal(symmetrize(A.copy(), block=32), (A + A.T) / 2.0)
    X = rng.standard_normal((400, 131)) + 0.5
    S, mu = X.T @ X / 400, X.mean(axis=0)
    out = S - np.outer(mu, mu) - np.outer(mu, mu) + np.outer(mu, mu)
    kept = S.copy()
    m = df.Moments.from_second(400, mu, S)
    assert m.covariance is S  # centred in place: one (F, F) array
    np.testing.assert_array_equal(m.covariance, (out + out.T) / 2.0)
    np.testing.assert_allclose(m.second, kept, rtol=1e-12, atol=1e-12)  # S back on demand


# ----------------------------------------------------------------------------- low rank (1×1, Gemm)


@pytest.fixture(scope="module")
def dense() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W (12, 8), feature rows X (576, 8) with a dead channel and an offset, their S (8, 8)."""
    X = activations(4, 8, 12).transpose(0, 2, 3, 1).reshape(-1, 8)
    W = np.random.default_rng(5).standard_normal((12, 8))
    return W, X, moments(X).second


def test_whitened_lowrank_error_is_the_spectral_tail(dense) -> None:
    W, _, S = dense
    w = df.whiten(S)
    s = np.linalg.svd(W @ w.L, compute_uv=False)
    Sr = S + float(w.ridge) * np.eye(8)
    for r in range(1, 8):
        A, B = df.whitened_lowrank(W, S, r)
        assert A.shape == (r, 8) and B.shape == (12, r)
        tail = np.sqrt(np.sum(s[r:] ** 2) / np.sum(s**2))
        assert df.weighted_error(W, B @ A, Sr) == pytest.approx(tail, rel=1e-8, abs=1e-12)


def test_principal_outputs_span_the_whitened_svd_without_an_f_by_f_workspace() -> None:
    """The top-r eigenvectors of W (S + λI) Wᵀ span the top-r left singular subspace of W L (L from whiten),
    and finding them takes no (F, F) array (the whitening took one for L and one for its factorization)."""
    import tracemalloc

    rng = np.random.default_rng(11)
    O, F = 24, 400
    X = rng.standard_normal((2000, F)) @ np.diag(np.linspace(3.0, 0.01, F))  # a decaying spectrum
    S, W = X.T @ X / len(X), rng.standard_normal((O, F))
    for r in (1, 5, 12, 24):
        U = df.principal_outputs(W, S, r)
        V = np.linalg.svd(W @ df.whiten(S).L, full_matrices=False)[0][:, :r]
        assert U.shape == (O, r)
        np.testing.assert_allclose(U @ U.T, V @ V.T, atol=1e-8)
    U = df.principal_outputs(W, S, O)  # full rank: every eigenvector, the projection is exact
    assert np.linalg.norm(U @ (U.T @ W) - W) < 1e-12 * np.linalg.norm(W)
    tracemalloc.start()
    df.principal_outputs(W, S, 8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.5 * F * F * 8


def test_whitened_lowrank_exact_reduces_monotone_and_beats_svd(dense) -> None:
    W, _, S = dense
    A, B = df.whitened_lowrank(W, S, 8)  # full rank on a rank-deficient S (dead channel)
    assert rel(W, B @ A) < 1e-12
    prev = np.inf
    for r in range(1, 8):
        A, B = df.whitened_lowrank(W, S, r)
        A0, B0 = df.lowrank_svd(W, r)
        Ai, Bi = df.whitened_lowrank(W, np.eye(8), r)
        assert rel(B0 @ A0, Bi @ Ai) < 1e-12  # S = I: the truncated SVD
        e, e0 = df.weighted_error(W, B @ A, S), df.weighted_error(W, B0 @ A0, S)
        assert e <= prev * (1 + MONO_SLACK)
        assert e < CLEAR * e0
        prev = e


def test_output_pca_is_zhang_and_equals_whitened_covariance_plus_bias(dense) -> None:
    W, X, S = dense
    b = np.linspace(-1.0, 1.0, 12)
    Y = X @ W.T + b
    resp = moments(Y)
    m = moments(X)
    for r in (2, 5):
        A, B, bh = df.output_pca(W, b, resp, r)
        U = B
        zhang = (Y - resp.mean) @ U @ U.T + resp.mean
        np.testing.assert_allclose(X @ (B @ A).T + bh, zhang, rtol=1e-9, atol=1e-9)
        Ac, Bc = df.whitened_lowrank(W, m.covariance, r, ridge=1e-12)  # the PCA has no ridge
        np.testing.assert_allclose(Bc @ Ac, B @ A, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(df.bias_correction(W, Bc @ Ac, b, m.mean), bh, rtol=1e-6, atol=1e-8)
        # the affine optimum: lower output error than the uncentered fit that keeps the bias
        As, Bs = df.whitened_lowrank(W, S, r)
        err = np.linalg.norm(X @ (B @ A).T + bh - Y)
        assert err < np.linalg.norm(X @ (Bs @ As).T + b - Y)
    A, B, bh = df.output_pca(W, b, resp, 12)
    np.testing.assert_allclose(X @ (B @ A).T + bh, Y, rtol=1e-9, atol=1e-9)


def test_bias_correction_keeps_the_mean_output(dense) -> None:
    W, X, _ = dense
    b = np.arange(12.0)
    W_hat = df.compose_lowrank(*df.lowrank_svd(W, 3))
    bh = df.bias_correction(W, W_hat, b, X.mean(axis=0))
    np.testing.assert_allclose((X @ W_hat.T + bh).mean(axis=0), (X @ W.T + b).mean(axis=0), rtol=1e-10)
    C = moments(X).covariance
    err2 = np.mean(np.sum((X @ (W - W_hat).T - (bh - b)) ** 2, axis=1))
    assert err2 == pytest.approx(np.trace((W - W_hat) @ C @ (W - W_hat).T), rel=1e-9)


def test_rank_pays_boundary() -> None:
    for I in range(1, 20):
        for O in range(1, 20):
            r = df.max_paying_rank(I, O)
            assert r == max((k for k in range(0, min(I, O) + 1) if k * (I + O) < I * O), default=0)
            assert (r == 0) or df.lowrank_pays(I, O, r)
            assert not df.lowrank_pays(I, O, r + 1)


def test_ls_second_factor_is_the_least_squares_optimum(dense) -> None:
    W, _, S = dense
    E = np.random.default_rng(2).standard_normal((3, 8))
    H = df.ls_second_factor(W, E, S, ridge=1e-12)
    base = np.trace((W - H @ E) @ S @ (W - H @ E).T)
    for seed in range(5):
        D = 1e-3 * np.random.default_rng(seed).standard_normal(H.shape)
        assert np.trace((W - (H + D) @ E) @ S @ (W - (H + D) @ E).T) > base
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((8, 3)))
    np.testing.assert_allclose(df.ls_second_factor(W, Q.T, np.eye(8), ridge=1e-12), W @ Q, rtol=1e-9)


# ----------------------------------------------------------------------------- conv forms


def _spatial(W, S, r, refine):
    return dc.compose_spatial(*df.spatial_datafit(W, S, r, refine=refine))


def _spatial0(W, r):
    return dc.compose_spatial(*dc.spatial_svd(W, r))


def _tucker(W, S, r, refine):  # r_in = r, r_out = 1.5 r: full ranks (8, 12) at r = 8
    return dc.compose_tucker2(*df.tucker2_datafit(W, S, r, 3 * r // 2, refine=refine))


def _tucker0(W, r):
    return dc.compose_tucker2(*dc.tucker2(W, r, 3 * r // 2))


def _dw(W, S, r, refine):
    return dc.compose_depthwise(*df.depthwise_datafit(W, S, r, refine=refine))


def _dw0(W, r):
    return dc.compose_depthwise(*dc.depthwise_svd(W, r))


# (name, data-aware compose, weight-only compose, truncated ranks, full rank) for W (12, 8, 3, 3)
FORMS = [
    ("factorize", _spatial, _spatial0, [2, 4, 8, 16], 24),
    ("bottleneck", _tucker, _tucker0, [2, 4, 6], 8),
    ("depthwise", _dw, _dw0, [1, 2, 4], 9),
]


def test_factor_shapes_mirror_decompose(data3) -> None:
    _, S = data3
    W = weights(12, 8, 3)
    assert [a.shape for a in df.spatial_datafit(W, S, 5)] == [a.shape for a in dc.spatial_svd(W, 5)]
    for ri, ro in ((3, 5), (None, 5), (3, None)):
        got = [None if a is None else a.shape for a in df.tucker2_datafit(W, S, ri, ro)]
        assert got == [None if a is None else a.shape for a in dc.tucker2(W, ri, ro)]
    assert [a.shape for a in df.depthwise_datafit(W, S, 3)] == [a.shape for a in dc.depthwise_svd(W, 3)]
    assert all(a.dtype == np.float32 for a in df.spatial_datafit(W, S, 5, refine=False))


@pytest.mark.parametrize("name,fit,weight_only,ranks,full", FORMS, ids=[f[0] for f in FORMS])
@pytest.mark.parametrize("refine", [False, True])
def test_form_exact_at_full_rank_and_reduces_to_weight_only(data3, name, fit, weight_only, ranks, full,
                                                            refine) -> None:
    _, S = data3
    W = weights(12, 8, 3)
    few = moments(patches(activations(1, 8, 3), 3, 1)).second  # 9 rows for 72 features: rank-deficient
    assert rel(W, fit(W, few, full, refine)) < EXACT
    for r in ranks:
        got, ref = fit(W, np.eye(72), r, refine), weight_only(W, r)
        if refine and name == "bottleneck":  # HOSVD is not optimal even at S = I: the refit is a HOOI step
            assert rel(W, got) <= rel(W, ref) * (1 + MONO_SLACK)
        else:
            assert rel(ref, got) < 1e-5


@pytest.mark.parametrize("name,fit,weight_only,ranks,full", FORMS, ids=[f[0] for f in FORMS])
def test_form_monotone_and_strictly_better_than_weight_only(data3, name, fit, weight_only, ranks, full) -> None:
    _, S = data3
    W = weights(12, 8, 3)
    prev = np.inf
    for r in ranks:
        e = df.weighted_error(W, fit(W, S, r, True), S)
        e0 = df.weighted_error(W, weight_only(W, r), S)
        assert e <= prev * (1 + MONO_SLACK)
        assert e < CLEAR * e0
        assert df.weighted_error(W, fit(W, S, r, False), S) < CLEAR * e0
        prev = e


def _block_proxy(S: np.ndarray, I: int, keep) -> np.ndarray:
    """S with the entries the closed form ignores set to zero: keep(i, a, b, j, c, d) -> bool."""
    idx = np.array(np.unravel_index(np.arange(I * 9), (I, 3, 3))).T
    mask = np.array([[keep(*p, *q) for q in idx] for p in idx])
    return S * mask


@pytest.mark.parametrize("name,fit,weight_only,ranks,full,keep", [
    ("factorize", _spatial, _spatial0, [2, 4, 8, 16], 24, lambda i, a, b, j, c, d: b == d),
    ("depthwise", _dw, _dw0, [1, 2, 4], 9, lambda i, a, b, j, c, d: i == j),
], ids=["factorize", "depthwise"])
def test_closed_form_is_optimal_under_its_proxy_moment(data3, name, fit, weight_only, ranks, full, keep) -> None:
    """Without refine, factorize (horizontal offsets uncorrelated) and depthwise (channels uncorrelated)
    are exact optima under the moment they assume: never above the weight-only error, monotone in rank."""
    _, S = data3
    Sp = _block_proxy(S, 8, keep)
    W = weights(12, 8, 3)
    prev = np.inf
    for r in ranks:
        e = df.weighted_error(W, fit(W, Sp, r, False), Sp)
        assert e <= df.weighted_error(W, weight_only(W, r), Sp) * (1 + MONO_SLACK)
        assert e <= prev * (1 + MONO_SLACK)
        prev = e


def test_bottleneck_output_side_is_the_spectral_tail(data3) -> None:
    _, S = data3
    W = weights(12, 8, 3)
    w = df.whiten(S)
    s = np.linalg.svd(W.reshape(12, -1) @ w.L, compute_uv=False)
    Sr = S + float(w.ridge) * np.eye(72)
    for r in (2, 5, 9):
        W_hat = dc.compose_tucker2(*df.tucker2_datafit(W, S, None, r))
        assert df.weighted_error(W, W_hat, Sr) == pytest.approx(np.sqrt(np.sum(s[r:] ** 2) / np.sum(s**2)),
                                                                rel=1e-5)


def test_bottleneck_one_sided_input_beats_hosvd(data3) -> None:
    _, S = data3
    W = weights(12, 8, 3)
    for r in (2, 4, 6):
        e = df.weighted_error(W, dc.compose_tucker2(*df.tucker2_datafit(W, S, r, None)), S)
        assert e < CLEAR * df.weighted_error(W, dc.compose_tucker2(*dc.tucker2(W, r, None)), S)


# ----------------------------------------------------------------------------- split5x5


@pytest.fixture(scope="module")
def data5() -> tuple[np.ndarray, np.ndarray]:
    """W (10, 6, 5, 5) and the 5×5 pad-2 patch moment (150, 150) of correlated activations."""
    x = activations(3, 6, 10, seed=4)
    return weights(10, 6, 5, seed=2), moments(patches(x, 5, 2)).second


def test_split5x5_exact_and_reduces_to_weight_only(data5) -> None:
    W, S = data5
    A, B = df.split5x5_datafit(W, S, 54)
    assert A.shape == (54, 6, 3, 3) and B.shape == (10, 54, 3, 3)
    assert rel(W, dc.compose_split5x5(A, B)) < EXACT
    for r in (4, 12):
        A, B = df.split5x5_datafit(W, np.eye(150), r, refine=False)
        assert rel(dc.compose_split5x5(*dc.split5x5_als(W, r)), dc.compose_split5x5(A, B)) < 1e-4


def test_split5x5_method_switch() -> None:
    assert df.split5x5_method(16, 14) == "activations"  # 9·14·16 = 2016
    assert df.split5x5_method(16, 15) == "whitened"  # 2160
    assert df.split5x5_method(16, 15, max_unknowns=4096) == "activations"


def test_split5x5_activation_als_beats_whitening_and_weight_only(data5) -> None:
    W, S = data5
    for r in (2, 4, 8):  # at R = 16 the 2304 unknowns exceed the 1500 kernel entries: both are exact
        e0 = df.weighted_error(W, dc.compose_split5x5(*dc.split5x5_als(W, r)), S)
        ew = df.weighted_error(W, dc.compose_split5x5(*df.split5x5_datafit(W, S, r, max_unknowns=0)), S)
        ea = df.weighted_error(W, dc.compose_split5x5(*df.split5x5_datafit(W, S, r)), S)
        assert df.split5x5_method(6, r) == "activations"
        assert ew < CLEAR * e0
        assert ea < CLEAR * ew


def test_split5x5_monotone_in_rank(data5) -> None:
    W, S = data5
    for refine in (False, True):
        errs = [df.weighted_error(W, dc.compose_split5x5(*df.split5x5_datafit(W, S, r, refine=refine)), S)
                for r in (1, 2, 3, 4, 6, 8, 12)]
        assert all(b <= a * (1 + MONO_SLACK) for a, b in zip(errs, errs[1:]))


def test_bottleneck_output_side_with_bias_is_zhang(data3) -> None:
    """Output side fitted under the covariance, then the bias correction: ŷ = U Uᵀ (y − μ_y) + μ_y exactly."""
    x, _ = data3
    X = patches(x, 3, 1)
    m = moments(X)
    W, b = weights(12, 8, 3), np.linspace(-1.0, 2.0, 12)
    Y = X @ W.reshape(12, -1).T + b
    _, core, last = df.tucker2_datafit(W, m.covariance, None, 5)
    W_hat = dc.compose_tucker2(None, core, last).astype(np.float64)
    b_hat = df.bias_correction(W, W_hat, b, m.mean)
    U = last[:, :, 0, 0].astype(np.float64)
    zhang = (Y - Y.mean(axis=0)) @ U @ U.T + Y.mean(axis=0)
    np.testing.assert_allclose(X @ W_hat.reshape(12, -1).T + b_hat, zhang, rtol=1e-5, atol=1e-5 * np.abs(Y).max())


def test_principal_outputs_factors_w_l_in_place_once_per_weight_and_moment(monkeypatch) -> None:
    """F ≤ O: the SVD of W L goes through decompose.thin_svd, on a Fortran-ordered W L (LAPACK works inside
    it: no copy); inside svd_reuse every rank shares one SVD, with the same subspaces as a fresh call."""
    import convopt.decompose.base as dcb

    rng = np.random.default_rng(3)
    W = rng.standard_normal((40, 24))  # O = 40 ≥ F = 24
    X = rng.standard_normal((500, 24)) @ rng.standard_normal((24, 24))
    S = X.T @ X / 500
    fresh = {r: df.principal_outputs(W, S, r) for r in (4, 8, 24)}
    seen: list[bool] = []
    lean = dcb._lean_svd
    monkeypatch.setattr(dcb, "_lean_svd", lambda M: (seen.append(M.flags.f_contiguous), lean(M))[1])
    with dc.svd_reuse():
        reused = {r: df.principal_outputs(W, S, r) for r in (4, 8, 24)}
    assert seen == [True]  # one SVD for the three ranks, on a Fortran-ordered W L
    for r, U in fresh.items():
        np.testing.assert_allclose(reused[r] @ reused[r].T, U @ U.T, atol=1e-10)
    full = fresh[24]
    np.testing.assert_allclose(full @ full.T @ W, W, atol=1e-10)  # full rank: exact
