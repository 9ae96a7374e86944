"""The Marchenko–Pastur law: density, closed-form CDF and its exact inverse.

Convention. For a matrix W of shape (out, in) let p = min(out, in), n = max(out, in) and
gamma = p / n in (0, 1]. The eigenvalues lambda_i = s_i**2 / n of the p x p Gram matrix of a
matrix with i.i.d. entries of mean 0 and variance sigma2 follow, as p, n -> inf, the MP law

    edges   lambda_pm = sigma2 * (1 +- sqrt(gamma))**2
    density f(x) = sqrt((lambda_+ - x)(x - lambda_-)) / (2 pi gamma sigma2 x)  on [lambda_-, lambda_+].

All functions are vectorised over numpy arrays and return float64 arrays (0-d for scalars).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _check(gamma: float, sigma2: float) -> None:
    if not (0.0 < gamma <= 1.0):
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    if not (sigma2 > 0.0 and np.isfinite(sigma2)):
        raise ValueError(f"sigma2 must be positive and finite, got {sigma2!r}")


def mp_edges(gamma: float, sigma2: float = 1.0) -> tuple[float, float]:
    """Support edges (lambda_-, lambda_+) = sigma2 * (1 -+ sqrt(gamma))**2."""
    _check(gamma, sigma2)
    r = np.sqrt(gamma)
    return sigma2 * (1.0 - r) ** 2, sigma2 * (1.0 + r) ** 2


def mp_pdf(x: ArrayLike, gamma: float, sigma2: float = 1.0) -> NDArray[np.float64]:
    """MP density f(x) (zero outside the support; the atom at 0 for gamma > 1 never arises here)."""
    lo, hi = mp_edges(gamma, sigma2)
    x = np.asarray(x, dtype=np.float64)
    inside = (x > lo) & (x < hi)
    xs = np.where(inside, x, 0.5 * (lo + hi))
    dens = np.sqrt((hi - xs) * (xs - lo)) / (2.0 * np.pi * gamma * sigma2 * xs)
    return np.where(inside, dens, 0.0)


def mp_cdf(x: ArrayLike, gamma: float, sigma2: float = 1.0) -> NDArray[np.float64]:
    """MP distribution function F(x), closed form.

    For lambda_- < x < lambda_+, with r = sqrt((lambda_+ - x) / (x - lambda_-)):

        F(x) = [ pi gamma + sqrt((lambda_+ - x)(x - lambda_-)) / sigma2
                 - (1 + gamma) atan((r^2 - 1) / (2 r))
                 + (1 - gamma) atan((lambda_- r^2 - lambda_+) / (2 sigma2 (1 - gamma) r)) ] / (2 pi gamma)

    (the last term vanishes at gamma = 1); F = 0 at or below lambda_-, F = 1 at or above lambda_+.
    """
    lo, hi = mp_edges(gamma, sigma2)
    x = np.asarray(x, dtype=np.float64)
    inside = (x > lo) & (x < hi)
    xs = np.where(inside, x, 0.5 * (lo + hi))
    r = np.sqrt((hi - xs) / (xs - lo))
    val = np.pi * gamma + np.sqrt((hi - xs) * (xs - lo)) / sigma2
    val = val - (1.0 + gamma) * np.arctan((r * r - 1.0) / (2.0 * r))
    if gamma < 1.0:
        val = val + (1.0 - gamma) * np.arctan((lo * r * r - hi) / (2.0 * sigma2 * (1.0 - gamma) * r))
    val = np.clip(val / (2.0 * np.pi * gamma), 0.0, 1.0)
    return np.where(inside, val, np.where(x >= hi, 1.0, 0.0))


def mp_quantile(u: ArrayLike, gamma: float, sigma2: float = 1.0) -> NDArray[np.float64]:
    """Inverse of :func:`mp_cdf`: the x with F(x) = u, for u in [0, 1].

    Vectorised bisection on the closed-form CDF (monotone on the support), run to the
    resolution of float64 (about 60 halvings), so mp_cdf(mp_quantile(u)) == u to ~1e-15.
    """
    lo_edge, hi_edge = mp_edges(gamma, sigma2)
    u = np.asarray(u, dtype=np.float64)
    if np.any((u < 0.0) | (u > 1.0)) or np.any(np.isnan(u)):
        raise ValueError("mp_quantile: u must lie in [0, 1]")
    lo = np.full(u.shape, lo_edge)
    hi = np.full(u.shape, hi_edge)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        below = mp_cdf(mid, gamma, sigma2) < u
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    out = 0.5 * (lo + hi)
    out = np.where(u <= 0.0, lo_edge, out)
    return np.where(u >= 1.0, hi_edge, out)


@lru_cache(maxsize=256)
def _window_quantiles(gamma: float, p: int, start: int, stop: int) -> NDArray[np.float64]:
    q = mp_quantile((np.arange(start, stop) + 0.5) / p, gamma)
    q.setflags(write=False)
    return q


def window_quantiles(gamma: float, p: int, start: int, stop: int) -> NDArray[np.float64]:
    """Cached unit-variance MP quantiles q_gamma((i + 1/2) / p) for i in [start, stop).

    They do not depend on the data, only on (gamma, p, window), so every refit of a layer of a
    given shape reuses them. The returned array is read-only.
    """
    return _window_quantiles(float(gamma), int(p), int(start), int(stop))
