"""BEMA fit of the Marchenko–Pastur law to a weight matrix, and its goodness of fit.

Eigenvalue convention: lambda_i = s_i**2 / n with n = max(out, in), so that for i.i.d. entries
of variance sigma_e**2 the fitted ``sigma2`` estimates sigma_e**2 itself (the reference code
divides by in_features instead, which rescales sigma2 by n / in but leaves the singular-value
threshold unchanged).

BEMA (Ke, Ma, Lin 2020), with ascending eigenvalues lambda_(0) <= ... <= lambda_(p-1) and
trimming alpha:

    window   I = { floor(alpha p), ..., floor((1 - alpha) p) - 1 }
    quantile q_i = q_gamma((i + 1/2) / p)            (unit-variance MP quantile)
    sigma2   = sum_I q_i lambda_(i) / sum_I q_i**2     (least squares through the origin)
    edge     lambda_+ = sigma2 [ (1 + sqrt(gamma))**2
                                 + t n**(-2/3) gamma**(-1/6) (1 + sqrt(gamma))**(4/3) ],
             t = F_TW1^{-1}(1 - beta)
    singular-value threshold  s_+ = sqrt(n lambda_+)

Fit error (a Kolmogorov distance restricted to the bulk window, m = |I|):
    max_{i in I} | F_MP(lambda_(i); gamma, sigma2) - (alpha + (1 - 2 alpha)(i - floor(alpha p)) / m) |

Censoring: after a rank-r truncation the p - r smallest singular values are (numerically) zero
and are no longer MP; pass ``n_censored = p - r`` and they are left out of the window, whose
remaining indices keep their positions in the full spectrum (the surviving values are the top
quantiles of the original bulk). When fewer than 5 values of the window survive, the window
becomes the survivors less their top alpha share: {c, ..., c + floor((1 - alpha)(p - c)) - 1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from .mp import mp_cdf, window_quantiles
from .tracy_widom import tw1_quantile

MIN_SINGULAR_VALUES = 10
MIN_WINDOW = 5


class NoBulkError(ValueError):
    """TEMPORARY shim until the fit branch lands."""


@dataclass(frozen=True)
class MPFit:
    """Result of :func:`fit_mp` (immutable).

    Attributes:
        shape: (out, in) of the matrix.
        gamma: p / n with p = min(shape), n = max(shape).
        sigma2: BEMA noise variance (per entry, eigenvalues s**2 / n).
        lambda_plus: upper bulk edge with the Tracy–Widom correction, eigenvalue units.
        threshold: singular-value edge s_+ = sqrt(n * lambda_plus).
        singular_values: (p,) float64, descending.
        n_spikes: number of singular values strictly above ``threshold``.
        fit_error: L-infinity distance between empirical and MP CDF on the window.
        alpha, beta: trimming and Tracy–Widom confidence level used.
        n_censored: smallest values left out as already pruned.
    """

    shape: tuple[int, int]
    gamma: float
    sigma2: float
    lambda_plus: float
    threshold: float
    singular_values: NDArray[np.float64] = field(repr=False)
    n_spikes: int
    fit_error: float
    alpha: float
    beta: float
    n_censored: int = 0

    @property
    def p(self) -> int:
        return min(self.shape)

    @property
    def n(self) -> int:
        return max(self.shape)

    @property
    def eigenvalues(self) -> NDArray[np.float64]:
        """Descending eigenvalues s**2 / n, the scale ``sigma2`` and ``lambda_plus`` live on."""
        return self.singular_values**2 / self.n

    def good(self, tolerance: float) -> bool:
        """Whether the MP law describes the bulk: fit_error < tolerance (1 always passes, 0 never)."""
        return bool(self.fit_error < tolerance) or tolerance >= 1.0

    def as_dict(self) -> dict[str, Any]:
        """Scalar fields, for tables."""
        out, inp = self.shape
        return {
            "out": out, "in": inp, "gamma": self.gamma, "sigma2": self.sigma2,
            "lambda_plus": self.lambda_plus, "threshold": self.threshold,
            "n_spikes": self.n_spikes, "fit_error": self.fit_error, "n_censored": self.n_censored,
        }


def as_matrix(weight: torch.Tensor | NDArray[Any]) -> torch.Tensor | NDArray[Any]:
    """View a Linear (out, in) or Conv2d (out, in/groups, kh, kw) weight as (out, in/groups*kh*kw)."""
    if weight.ndim < 2:
        raise ValueError(f"a weight matrix needs at least 2 dimensions, got shape {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], -1)


def singular_values(W: torch.Tensor | NDArray[Any]) -> NDArray[np.float64]:
    """Singular values of a 2-D matrix, descending, as float64, computed on W's own device.

    Rectangular matrices (n >= 2p) use the eigenvalues of the p x p Gram matrix in float64,
    which is faster there and exact to float64 rounding; near-square ones use
    ``torch.linalg.svdvals`` in W's dtype (float16/bfloat16 are raised to float32).
    """
    t = torch.from_numpy(np.ascontiguousarray(W)) if isinstance(W, np.ndarray) else W.detach()
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    p, n = min(t.shape), max(t.shape)
    if n >= 2 * p:
        a = t.double()
        gram = a @ a.T if a.shape[0] == p else a.T @ a
        ev = torch.linalg.eigvalsh(gram).clamp_min(0.0)
        s = torch.sqrt(ev).flip(0)
    else:
        s = torch.linalg.svdvals(t)
    return s.double().cpu().numpy()


def fit_mp(
    W: torch.Tensor | NDArray[Any] | None = None,
    *,
    alpha: float = 0.25,
    beta: float = 0.1,
    singular_values: NDArray[Any] | None = None,
    shape: tuple[int, int] | None = None,
    n_censored: int = 0,
    n_known_spikes: int = 0,
) -> MPFit:
    """Fit the MP law to W by BEMA and measure the fit (see the module docstring for formulas).

    Args:
        W: (out, in) matrix, a torch tensor on any device or a numpy array. Conv weights go
            through :func:`as_matrix` first. Omit it when passing ``singular_values``.
        alpha: trimming of the bulk window, in (0, 0.5).
        beta: Tracy–Widom confidence level of the edge, in (0, 1): about a fraction beta of
            pure-noise matrices shows one value above the threshold.
        singular_values: precomputed singular values (any order, length min(shape)).
        shape: (out, in), required with ``singular_values``.
        n_censored: number of smallest singular values known to be pruned away (see module doc).

    Raises:
        ValueError: non-2-D input, NaN/Inf, fewer than 10 singular values, alpha or beta out of
            range, an all-zero matrix, or too few values left in the window.
    """
    if not (0.0 < alpha < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if not (0.0 < beta < 1.0):
        raise ValueError(f"beta must be in (0, 1), got {beta!r}")
    if singular_values is None:
        if W is None:
            raise ValueError("fit_mp needs W or singular_values with shape")
        if W.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {tuple(W.shape)} (use as_matrix for conv weights)")
        finite = torch.isfinite(W).all() if isinstance(W, torch.Tensor) else np.isfinite(W).all()
        if not bool(finite):
            raise ValueError("the matrix has NaN or Inf entries")
        shape = (int(W.shape[0]), int(W.shape[1]))
        s = _singular_values_checked(W)
    else:
        if shape is None or len(shape) != 2:
            raise ValueError("fit_mp: shape=(out, in) is required with singular_values")
        shape = (int(shape[0]), int(shape[1]))
        s = np.sort(np.asarray(singular_values, dtype=np.float64).ravel())[::-1]
        if s.size != min(shape):
            raise ValueError(f"expected min{shape} = {min(shape)} singular values, got {s.size}")
        if not np.isfinite(s).all():
            raise ValueError("the singular values have NaN or Inf entries")
    p, n = min(shape), max(shape)
    if p < MIN_SINGULAR_VALUES:
        raise ValueError(f"need at least {MIN_SINGULAR_VALUES} singular values, shape {shape} has {p}")
    if not s[0] > 0.0:
        raise ValueError("the matrix is all zeros")
    gamma = p / n
    lam = (s[::-1] ** 2) / n  # ascending
    lo, hi = math.floor(alpha * p), math.floor((1.0 - alpha) * p)
    start = max(lo, int(n_censored))
    stop = hi
    if stop - start < MIN_WINDOW:  # censoring reached the top of the window: trim the survivors instead
        stop = start + math.floor((1.0 - alpha) * (p - start))
    if stop - start < MIN_WINDOW:
        raise ValueError(f"only {max(stop - start, 0)} values left in the bulk window after censoring {n_censored}")
    q = window_quantiles(gamma, p, start, stop)
    window = lam[start:stop]
    sigma2 = float(np.dot(q, window) / np.dot(q, q))
    if not sigma2 > 0.0:
        raise ValueError("the bulk window is all zeros (a spectrum of exact zeros cannot be fitted)")
    t = float(tw1_quantile(1.0 - beta))
    rg = math.sqrt(gamma)
    lambda_plus = sigma2 * ((1 + rg) ** 2 + t * n ** (-2.0 / 3.0) * gamma ** (-1.0 / 6.0) * (1 + rg) ** (4.0 / 3.0))
    threshold = math.sqrt(n * lambda_plus)
    empirical = alpha + (1.0 - 2.0 * alpha) * (np.arange(start, stop) - lo) / (hi - lo)
    fit_error = float(np.max(np.abs(mp_cdf(window, gamma, sigma2) - empirical)))
    s.setflags(write=False)
    return MPFit(
        shape=shape, gamma=gamma, sigma2=sigma2, lambda_plus=lambda_plus, threshold=threshold,
        singular_values=s, n_spikes=int(np.count_nonzero(s > threshold)), fit_error=fit_error,
        alpha=alpha, beta=beta, n_censored=int(n_censored),
    )


def _singular_values_checked(W: torch.Tensor | NDArray[Any]) -> NDArray[np.float64]:
    try:
        return singular_values(W).copy()
    except (RuntimeError, np.linalg.LinAlgError) as exc:  # LAPACK did not converge
        raise np.linalg.LinAlgError(f"singular values did not converge: {exc}") from exc
