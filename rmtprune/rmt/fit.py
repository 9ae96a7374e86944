"""BEMA fit of the Marchenko–Pastur law to a weight matrix, and its goodness of fit.

Eigenvalue convention: lambda_i = s_i**2 / n with n = max(out, in), so that for i.i.d. entries
of variance sigma_e**2 the fitted ``sigma2`` estimates sigma_e**2 itself (the reference code
divides by in_features instead, which rescales sigma2 by n / in but leaves the singular-value
threshold unchanged).

Model. W = N + sum_j theta_j u_j v_j^T: noise N with i.i.d. entries of variance sigma2 plus k
spikes. For strong spikes the p - k other singular values are those of the noise compressed to
the orthogonal complement of the spikes' singular vectors, a (p - k) x (n - k) matrix of the same
i.i.d. entries. So the bulk is p_b = p - k values whose eigenvalues mu = s**2 / n_b, n_b = n - k,
follow MP with gamma_b = p_b / n_b and the same sigma2. (Fitting them as p values of MP(p / n)
counts the spikes as bulk: sigma2 grows with k, +35% at k = 100 of 500; keeping MP(p / n) with
p - k positions shrinks it by k / n instead.)

Censoring from both sides. Let c = ``n_censored`` be the smallest values known to be pruned away
(zeros left by a rank truncation: the bottom of the bulk, no longer MP) and k the top values left
out as spikes: the ``n_known_spikes`` values that were above the edge at an earlier fit, plus
those above the edge now (the refit rule below). With the bulk's ascending eigenvalues
mu_(0) <= ... <= mu_(p_b - 1), where mu_(0..c-1) are the censored zeros, and trimming alpha:

    window    I = { max(lo, c), ..., hi - 1 },  lo = floor(alpha p_b),  hi = floor((1 - alpha) p_b)
    quantile  q_i = q_{gamma_b}((i + 1/2) / p_b)          (unit-variance MP quantile)
    sigma2    = sum_I q_i mu_(i) / sum_I q_i**2             (least squares through the origin)

The censored zeros keep their positions (the surviving values are the top quantiles of the
bulk). When censoring from below reaches the top of the window (hi - max(lo, c) < 5 = MIN_WINDOW),
the window becomes the surviving bulk values above a = min(max(lo, c), p_b - 5) less their top
alpha share, with at least 5 values: { a, ..., a + max(5, floor((1 - alpha)(p_b - a))) - 1 },
which never reaches a spike nor a censored zero. Fewer than 5 bulk values between the zeros and
the known spikes (p_b - c < 5 with k = n_known_spikes, e.g. a layer cut to its spikes) raise
:class:`NoBulkError`: there is nothing left to fit and the rank should be kept.

Edge (Tracy–Widom corrected, on the bulk's own shape), and its singular value:

    mu_+  = sigma2 [ (1 + sqrt(gamma_b))**2 + t n_b**(-2/3) gamma_b**(-1/6) (1 + sqrt(gamma_b))**(4/3) ],
            t = F_TW1^{-1}(1 - beta)
    s_+   = sqrt(n_b mu_+),     reported as lambda_plus = s_+**2 / n (the lambda = s**2 / n scale)

Refit rule. Start with k = n_known_spikes; fit; set

    k' = min( max(n_known_spikes, #{s_i > s_+}),  n_known_spikes + floor(alpha (p - c - n_known_spikes)) )

and refit with k' while k' changes, at most MAX_REFITS times (a k' that would leave fewer than 5
bulk values, or a degenerate fit, ends the iteration with the last fit). The cap: no more new
spikes than the top alpha share of the surviving bulk, the share the window already trims; beyond
it the spikes-plus-MP model is not credible and on a non-MP spectrum (a product of Gaussians) the
refits would otherwise eat the bulk from the top. ``n_spikes`` counts the values above the final
edge, which may exceed k. On pure noise the first fit (k = 0) is the plain BEMA fit, so the
false-spike rate stays beta.

Outlier deflation (the first-order BBP term). A spike theta_j u v^T on the p_b x n_b noise the
other spikes leave has its outlier at (rectangular BBP)

    s_j**2 = (theta_j**2 + n_b sigma2)(theta_j**2 + p_b sigma2) / theta_j**2
           = theta_j**2 + (n_b + p_b) sigma2 + n_b p_b sigma2**2 / theta_j**2 .

The middle term is the noise energy of the row and column the spike takes from the bulk (what the
compressed (p - k) x (n - k) model already removes); the last is the noise energy the outlier draws
from the bulk beyond it. The bulk's energy p_b n_b sigma2 falls by the sum of these last terms, a
fraction

    delta = sigma2 * sum_j theta_j**-2 ,

and to first order the bulk is the compressed noise scaled by (1 - delta) (500 x 500 at 2x the
critical strength, k = 10/50/100: the bulk fit falls by 0.5/2.2/5.0%; delta = 0.5/2.5/5%). So the
window fit above gives the bulk's own scale ``bulk_sigma2`` (the sigma2 of the window, edge and fit
error formulas: the spikes are what stands out of the bulk as it is), and the noise variance is

    sigma2 = bulk_sigma2 / (1 - delta),   theta_j**2 = (a_j + sqrt(a_j**2 - 4 n_b p_b sigma2**2)) / 2,
    a_j = s_j**2 - (n_b + p_b) sigma2      (the BBP relation inverted, its larger root),

over the k values left out as spikes, solved with sigma2 by fixed-point iteration (DEFLATION_ITERATIONS
steps; theta_j**2 at least the critical sqrt(n_b p_b) sigma2; delta capped at MAX_DEFLATION, beyond
which a first-order term is not credible). A value left
out at or below the critical outlier position sigma (sqrt(n_b) + sqrt(p_b)) (a known spike that fell
back into the bulk) is no outlier and adds nothing; with no spikes sigma2 = bulk_sigma2.

Fit error (a Kolmogorov distance restricted to the window, same plotting positions as sigma2):

    e(k) = max_{i in I} | F_MP(mu_(i); gamma_b, sigma2) - (i + 1/2) / p_b |
    fit_error = max(e(n_known_spikes), e(k_final))

The first fit's error counts too because the refits are self-fulfilling on a bulk that is not MP:
leaving out ever more of a heavy tail as "spikes" leaves a remainder that looks MP in the window
(Student t(1.5) entries, 300 x 600: e = 0.11 at the first fit, 0.04 once the top quarter is left
out).
MP plus k spikes already fits the first window well (e = 0.02 with 100 planted spikes of 500).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from rmtprune.rmt.mp import mp_cdf, window_quantiles
from rmtprune.rmt.tracy_widom import tw1_quantile

MIN_SINGULAR_VALUES = 10
ALPHA_RANGE = (0.0, 0.5)  # alpha, the BEMA trimming: an open interval
BETA_RANGE = (0.0, 1.0)   # beta, the Tracy-Widom confidence level: an open interval
MIN_WINDOW = 5
MAX_REFITS = 10
MAX_DEFLATION = 0.25
DEFLATION_ITERATIONS = 5


class NoBulkError(ValueError):
    """Fewer than MIN_WINDOW bulk values lie between the censored zeros and the known spikes.

    Raised by :func:`fit_mp` for a layer already cut to (almost) only its spikes: no noise is
    left to fit, so no new edge can be drawn and the layer should keep its rank.
    """


@dataclass(frozen=True)
class MPFit:
    """Result of :func:`fit_mp` (immutable).

    Attributes:
        shape: (out, in) of the matrix.
        gamma: p / n with p = min(shape), n = max(shape).
        sigma2: noise variance per entry (eigenvalues s**2 / n): the bulk's BEMA scale corrected for
            the energy the outliers draw from it (``bulk_sigma2 / (1 - delta)``, module docstring).
        lambda_plus: upper bulk edge with the Tracy–Widom correction, on the scale s**2 / n
            (the bulk's own edge mu_+ times n_b / n, see the module docstring).
        threshold: singular-value edge s_+ = sqrt(n * lambda_plus).
        singular_values: (p,) float64, descending.
        n_spikes: number of singular values strictly above ``threshold``, over all p values
            (known spikes included).
        fit_error: L-infinity distance between empirical and MP CDF on the window, the larger
            of the first fit's (known spikes left out) and the final refit's.
        n_bulk: p_b = p - k, the values fitted as MP bulk (censored zeros included), k the top
            values left out as spikes (known ones and those found by the refits).
        alpha, beta: trimming and Tracy–Widom confidence level used.
        n_censored: smallest values left out as already pruned.
        n_known_spikes: top values left out as spikes of an earlier fit.
        bulk_sigma2: the BEMA scale of the bulk itself, which draws the edge and the fit error
            (equal to ``sigma2`` when no value is left out as a spike).
    """

    shape: tuple[int, int]
    gamma: float
    sigma2: float
    lambda_plus: float
    threshold: float
    singular_values: NDArray[np.float64] = field(repr=False)
    n_spikes: int
    fit_error: float
    n_bulk: int
    alpha: float
    beta: float
    n_censored: int = 0
    n_known_spikes: int = 0
    bulk_sigma2: float = math.nan

    @property
    def p(self) -> int:
        return min(self.shape)

    @property
    def n(self) -> int:
        return max(self.shape)

    @property
    def bulk_gamma(self) -> float:
        """gamma_b = p_b / n_b of the bulk's (p - k) x (n - k) noise matrix."""
        k = self.p - self.n_bulk
        return self.n_bulk / (self.n - k)

    def good(self, tolerance: float) -> bool:
        """Whether the MP law describes the bulk: fit_error < tolerance (1 always passes, 0 never)."""
        return bool(self.fit_error < tolerance) or tolerance >= 1.0


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
        n_censored: number of smallest singular values known to be pruned away (censored from
            below, see module doc).
        n_known_spikes: number of largest singular values that were above the edge at an earlier
            fit of this layer: never used as bulk (censored from above), whatever the new edge.

    Raises:
        NoBulkError: fewer than MIN_WINDOW values left between the censored zeros and the
            known spikes.
        ValueError: non-2-D input, NaN/Inf, fewer than 10 singular values, alpha or beta out of
            range, an all-zero matrix, negative censoring counts or more than p in all, or a
            window of exact zeros.
    """
    if not (ALPHA_RANGE[0] < alpha < ALPHA_RANGE[1]):
        raise ValueError(f"alpha must be in ({ALPHA_RANGE[0]:g}, {ALPHA_RANGE[1]:g}), got {alpha!r}")
    if not (BETA_RANGE[0] < beta < BETA_RANGE[1]):
        raise ValueError(f"beta must be in ({BETA_RANGE[0]:g}, {BETA_RANGE[1]:g}), got {beta!r}")
    if singular_values is None:
        if W is None:
            raise ValueError("fit_mp needs W or singular_values with shape")
        if not isinstance(W, (torch.Tensor, np.ndarray)):
            raise TypeError(f"fit_mp: W must be a torch tensor or a numpy array, got {type(W).__name__} "
                            "(np.asarray(W) for a list)")
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
    c, known = int(n_censored), int(n_known_spikes)
    if c < 0 or known < 0 or c + known > p:
        raise ValueError(f"n_censored={n_censored} and n_known_spikes={n_known_spikes} must be >= 0 "
                         f"and at most p = {p} together")
    if p - known - c < MIN_WINDOW:
        raise NoBulkError(f"only {p - known - c} bulk value(s) left between {c} censored zero(s) and "
                          f"{known} known spike(s); at least {MIN_WINDOW} are needed to fit the noise")
    t = float(tw1_quantile(1.0 - beta))
    lam_asc = s[::-1] ** 2
    k = known
    k_max = known + math.floor(alpha * (p - c - known))
    first = bulk = _fit_bulk(lam_asc, p, n, c, k, alpha, t)
    for _ in range(MAX_REFITS):
        k_new = min(max(known, int(np.count_nonzero(s > bulk.threshold))), k_max)
        if k_new == k or p - k_new - c < MIN_WINDOW:
            break
        try:
            refit = _fit_bulk(lam_asc, p, n, c, k_new, alpha, t)
        except ValueError:  # the spikes found leave a window of zeros: keep the last fit
            break
        k, bulk = k_new, refit
    s.setflags(write=False)
    return MPFit(
        shape=shape, gamma=p / n, sigma2=outlier_deflated_sigma2(s[:k], p - k, n - k, bulk.sigma2),
        lambda_plus=bulk.threshold**2 / n, threshold=bulk.threshold, singular_values=s,
        n_spikes=int(np.count_nonzero(s > bulk.threshold)), fit_error=max(first.fit_error, bulk.fit_error),
        n_bulk=p - k, alpha=alpha, beta=beta,
        n_censored=c, n_known_spikes=known, bulk_sigma2=bulk.sigma2,
    )


def outlier_deflated_sigma2(spikes: NDArray[np.float64], p_b: int, n_b: int, bulk_sigma2: float) -> float:
    """The noise variance sigma2 = bulk_sigma2 / (1 - delta), delta = sigma2 sum_j theta_j**-2 over the
    outliers ``spikes`` (singular values) of a p_b x n_b bulk, theta_j from the inverted BBP relation (module
    docstring, "Outlier deflation"). No outlier above sigma (sqrt(n_b) + sqrt(p_b)): ``bulk_sigma2``."""
    s2 = np.asarray(spikes, dtype=np.float64) ** 2
    sigma2 = bulk_sigma2
    for _ in range(DEFLATION_ITERATIONS):
        out = s2[s2 > sigma2 * (math.sqrt(n_b) + math.sqrt(p_b)) ** 2]
        a = out - (n_b + p_b) * sigma2
        theta2 = 0.5 * (a + np.sqrt(np.maximum(a * a - 4.0 * n_b * p_b * sigma2**2, 0.0)))
        theta2 = np.maximum(theta2, math.sqrt(n_b * p_b) * sigma2)  # an outlier is at least critical
        delta = min(sigma2 * float(np.sum(1.0 / theta2)), MAX_DEFLATION)
        sigma2 = bulk_sigma2 / (1.0 - delta)
    return sigma2


@dataclass(frozen=True)
class _Bulk:
    sigma2: float
    threshold: float
    fit_error: float


def bulk_window(p_b: int, n_censored: int, alpha: float) -> tuple[int, int]:
    """Window [start, stop) of ascending bulk indices fitted by BEMA (module docstring).

    Needs p_b - n_censored >= MIN_WINDOW; the window then holds at least MIN_WINDOW indices in
    [n_censored, p_b).
    """
    lo, hi = math.floor(alpha * p_b), math.floor((1.0 - alpha) * p_b)
    start, stop = max(lo, n_censored), hi
    if stop - start < MIN_WINDOW:  # censoring from below met the top trim: trim the survivors instead
        start = min(start, p_b - MIN_WINDOW)
        stop = start + max(MIN_WINDOW, math.floor((1.0 - alpha) * (p_b - start)))
    return start, stop


def _fit_bulk(lam_asc: NDArray[np.float64], p: int, n: int, c: int, k: int, alpha: float, t: float) -> _Bulk:
    """BEMA on the bulk left after the top k values: ``lam_asc`` holds ascending s**2."""
    p_b, n_b = p - k, n - k
    gamma_b = p_b / n_b
    start, stop = bulk_window(p_b, c, alpha)
    q = window_quantiles(gamma_b, p_b, start, stop)
    window = lam_asc[start:stop] / n_b
    sigma2 = float(np.dot(q, window) / np.dot(q, q))
    if not sigma2 > 0.0:
        raise ValueError("the bulk window is all zeros (a spectrum of exact zeros cannot be fitted)")
    rg = math.sqrt(gamma_b)
    mu_plus = sigma2 * ((1 + rg) ** 2 + t * n_b ** (-2.0 / 3.0) * gamma_b ** (-1.0 / 6.0) * (1 + rg) ** (4.0 / 3.0))
    positions = (np.arange(start, stop) + 0.5) / p_b
    fit_error = float(np.max(np.abs(mp_cdf(window, gamma_b, sigma2) - positions)))
    return _Bulk(sigma2=sigma2, threshold=math.sqrt(n_b * mu_plus), fit_error=fit_error)


def _singular_values_checked(W: torch.Tensor | NDArray[Any]) -> NDArray[np.float64]:
    try:
        return singular_values(W).copy()
    except (torch.linalg.LinAlgError, np.linalg.LinAlgError) as exc:  # LAPACK did not converge; not OOM / device
        raise np.linalg.LinAlgError(f"singular values did not converge: {exc}") from exc
