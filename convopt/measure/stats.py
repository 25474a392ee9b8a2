"""Confidence bounds for the figures convopt decides on and reports, from per-sample outcomes.

* Labelled top-1 drop, paired: of n samples, n10 went right → wrong and n01 wrong → right; the drop is
  Δ = (n10 − n01)/n. Bounds are Tango's score bounds for a difference of paired proportions (Tango 1998):
  for a hypothesised Δ₀ the restricted maximum-likelihood flip rate q̃ gives
  Z(Δ₀) = (n10 − n01 − nΔ₀) / √(n(2q̃ + Δ₀(1 − Δ₀))), and the upper bound at confidence c is the Δ₀ where
  Z = −z_c. With no flip at all it is about z²/n (2.7/n at 95 %), the "rule of three" of the binomial.
  Only flipped samples carry information, so many flips make a wide bound even when they cancel.
* A rate of k events in n (disagreement with the original): exact Clopper–Pearson bounds.
* Relative L2 error √(Σeᵢ / Σrᵢ) (eᵢ: squared error of sample i, rᵢ: squared norm of its reference output):
  a ratio of means, bounded by the delta method with Student's t on n − 1 degrees of freedom.

All bounds are one-sided at ``confidence`` unless named an interval (two-sided, central).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from scipy import stats as _st


def z_of(confidence: float) -> float:
    """The standard normal quantile z_c (1.645 at 0.95)."""
    return NormalDist().inv_cdf(confidence)


def _tango_z(n10: int, n01: int, n: int, d0: float) -> float:
    """Tango's score statistic for H0: Δ = d0 (positive when the observed drop is above d0)."""
    a, b = 2.0 * n, -(n10 + n01) + (2.0 * n - n10 + n01) * d0
    c = -n01 * d0 * (1.0 - d0)
    q = (-b + math.sqrt(max(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
    var = n * (2.0 * q + d0 * (1.0 - d0))
    diff = n10 - n01 - n * d0
    if var <= 0.0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(var)


def _solve(f, lo: float, hi: float, target: float, iters: int = 80) -> float:
    """The x in [lo, hi] where the decreasing f(x) crosses ``target`` (bisection)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def paired_drop_upper(n10: int, n01: int, n: int, confidence: float) -> float:
    """Upper bound of the true drop Δ (a proportion, −1..1) from n10 right→wrong and n01 wrong→right flips."""
    if n <= 0:
        return math.inf
    est = (n10 - n01) / n
    if est >= 1.0:
        return 1.0
    return _solve(lambda d: _tango_z(n10, n01, n, d), est, 1.0 - 1e-12, -z_of(confidence))


def paired_drop_lower(n10: int, n01: int, n: int, confidence: float) -> float:
    """Lower bound of the true drop Δ (the mirror of ``paired_drop_upper``)."""
    return -paired_drop_upper(n01, n10, n, confidence)


def paired_drop_interval(n10: int, n01: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided interval of Δ at ``level``."""
    c = 1.0 - (1.0 - level) / 2.0
    return paired_drop_lower(n10, n01, n, c), paired_drop_upper(n10, n01, n, c)


def rate_upper(k: int, n: int, confidence: float) -> float:
    """Clopper–Pearson upper bound of a rate from k events in n trials."""
    if n <= 0:
        return 1.0
    return 1.0 if k >= n else float(_st.beta.ppf(confidence, k + 1, n - k))


def rate_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson two-sided interval of a rate."""
    a = (1.0 - level) / 2.0
    lo = 0.0 if k <= 0 else float(_st.beta.ppf(a, k, n - k + 1))
    return lo, rate_upper(k, n, 1.0 - a)


def _ratio(err_sq: np.ndarray, ref_sq: np.ndarray) -> tuple[float, float, int]:
    """(Σe/Σr, standard error of that ratio by the delta method, n)."""
    e, r = np.asarray(err_sq, np.float64), np.asarray(ref_sq, np.float64)
    n, rbar = e.size, float(r.mean()) if r.size else 0.0
    if n == 0 or rbar <= 0.0:
        return (0.0 if not e.size or not e.any() else math.inf), math.inf, n
    ratio = float(e.sum() / r.sum())
    if n < 2:
        return ratio, math.inf, n
    resid = e - ratio * r
    return ratio, math.sqrt(float(resid @ resid) / (n - 1) / n) / rbar, n


def rel_error_upper(err_sq: np.ndarray, ref_sq: np.ndarray, confidence: float) -> float:
    """Upper bound of the relative L2 error √(Σe/Σr) over the population the samples come from."""
    ratio, se, n = _ratio(err_sq, ref_sq)
    if se == 0.0:
        return math.sqrt(ratio)
    if not math.isfinite(se):
        return math.inf
    return math.sqrt(max(ratio + float(_st.t.ppf(confidence, n - 1)) * se, 0.0))


def rel_error_interval(err_sq: np.ndarray, ref_sq: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    ratio, se, n = _ratio(err_sq, ref_sq)
    if not math.isfinite(se):
        return 0.0, math.inf
    half = float(_st.t.ppf(1.0 - (1.0 - level) / 2.0, n - 1)) * se if se > 0 else 0.0
    return math.sqrt(max(ratio - half, 0.0)), math.sqrt(max(ratio + half, 0.0))


def samples_for_zero_flips(limit: float, confidence: float) -> int:
    """The fewest samples on which a model that flips nothing is certified within ``limit`` (a proportion):
    the smallest n with paired_drop_upper(0, 0, n) ≤ limit (about z²/limit)."""
    if limit <= 0:
        return math.inf  # type: ignore[return-value]
    n = max(1, int(z_of(confidence) ** 2 * (1 - limit) / limit))
    while paired_drop_upper(0, 0, n, confidence) > limit:
        n += 1
    while n > 1 and paired_drop_upper(0, 0, n - 1, confidence) <= limit:
        n -= 1
    return n


def mean_upper(d: np.ndarray, confidence: float) -> float:
    """Upper bound of the mean of paired differences ``d`` (Student's t on n − 1 degrees of freedom)."""
    x = np.asarray(d, np.float64)
    if x.size < 2:
        return math.inf if x.size == 0 or x.any() else 0.0
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    return float(x.mean()) + (float(_st.t.ppf(confidence, x.size - 1)) * se if se > 0 else 0.0)


def mean_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    x = np.asarray(d, np.float64)
    if x.size < 2:
        return -math.inf, math.inf
    half = float(_st.t.ppf(1.0 - (1.0 - level) / 2.0, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return float(x.mean()) - half, float(x.mean()) + half
