"""The Tracy–Widom distribution for beta = 1 (GOE), by Bornemann's Fredholm determinant.

    F_1(s) = det(I - K_1) on L^2(s, inf),   K_1(x, y) = Ai((x + y) / 2) / 2

(F. Bornemann, "On the numerical evaluation of distributions in random matrix theory",
Markov Process. Related Fields 16, 2010). The operator is discretised by Gauss–Legendre
quadrature on [s, s + L]: with nodes x_k and weights w_k,
det(delta_jk - sqrt(w_j) K_1(x_j, x_k) sqrt(w_k)) converges exponentially in the number of
nodes. With L = 40 and 100 nodes the error is below 1e-12 for s in [-8, 6].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import brentq
from scipy.special import airy

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(100)
_LENGTH = 40.0


def _tw1_cdf_scalar(s: float) -> float:
    if s > 12.0:
        return 1.0
    if s < -12.0:
        return 0.0
    x = s + 0.5 * _LENGTH * (_NODES + 1.0)
    sw = np.sqrt(0.5 * _LENGTH * _WEIGHTS)
    kernel = 0.5 * airy(0.5 * (x[:, None] + x[None, :]))[0]
    det = np.linalg.det(np.eye(x.size) - sw[:, None] * kernel * sw[None, :])
    return float(min(max(det, 0.0), 1.0))


def tw1_cdf(s: ArrayLike) -> NDArray[np.float64]:
    """CDF of the GOE Tracy–Widom law, F_1(s), vectorised (about 1 ms per value)."""
    s = np.asarray(s, dtype=np.float64)
    out = np.vectorize(_tw1_cdf_scalar, otypes=[np.float64])(s)
    return out


@lru_cache(maxsize=1024)
def _tw1_quantile_scalar(p: float) -> float:
    return float(brentq(lambda s: _tw1_cdf_scalar(s) - p, -10.0, 10.0, xtol=1e-13, rtol=1e-14))


def tw1_quantile(p: ArrayLike) -> NDArray[np.float64]:
    """Inverse of :func:`tw1_cdf` for p in (0, 1), by Brent root finding (cached per p)."""
    p = np.asarray(p, dtype=np.float64)
    if np.any((p <= 0.0) | (p >= 1.0)) or np.any(np.isnan(p)):
        raise ValueError("tw1_quantile: p must lie in (0, 1)")
    return np.vectorize(lambda v: _tw1_quantile_scalar(float(v)), otypes=[np.float64])(p)
