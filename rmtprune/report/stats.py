"""Statistics for seed sweeps: summaries with t confidence intervals, the normal-vs-pruned tests, equivalence
(TOST) and Holm's multiplicity adjustment.

Pure functions on sequences of floats (one value per seed). Sample variance (ddof = 1) throughout.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats as st

NAN = float("nan")


def describe(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """n, mean, sample std and variance, min, max, and the t interval mean +- t_{n-1} s / sqrt(n)."""
    x = np.asarray([v for v in values if v == v], dtype=float)
    n = x.size
    if n == 0:
        return {"n": 0, "mean": NAN, "std": NAN, "var": NAN, "min": NAN, "max": NAN, "ci_low": NAN, "ci_high": NAN}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": NAN, "var": NAN, "min": mean, "max": mean, "ci_low": NAN, "ci_high": NAN}
    var = float(x.var(ddof=1))
    half = float(st.t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(var / n)
    return {"n": n, "mean": mean, "std": math.sqrt(var), "var": var, "min": float(x.min()),
            "max": float(x.max()), "ci_low": mean - half, "ci_high": mean + half}


def _welch_se_dof(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(se, dof) of mean(a) - mean(b): se = sqrt(s_a²/n_a + s_b²/n_b) and the Welch–Satterthwaite dof;
    (NaN, NaN) when an arm has fewer than 2 values or neither has spread."""
    if a.size < 2 or b.size < 2:
        return NAN, NAN
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return NAN, NAN
    return math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))


def _quiet(test: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``test(*args, **kwargs)`` with scipy's RuntimeWarnings (precision loss when the values are nearly
    identical) kept off the console: the p-value says what there is to say."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return test(*args, **kwargs)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Difference of means mean(a) - mean(b), its Welch–Satterthwaite t interval and two-sided p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"diff": NAN, "diff_ci_low": NAN, "diff_ci_high": NAN, "welch_p": NAN}
    if a.size == 0 or b.size == 0:
        return out
    out["diff"] = float(a.mean() - b.mean())
    se, dof = _welch_se_dof(a, b)
    if se != se:
        return out
    half = float(st.t.ppf(0.5 + confidence / 2, dof)) * se
    out.update(diff_ci_low=out["diff"] - half, diff_ci_high=out["diff"] + half,
               welch_p=float(_quiet(st.ttest_ind, a, b, equal_var=False).pvalue))
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    """Paired t-test over the seeds both arms share: n_pairs, mean difference a - b, p-value."""
    x, y = _shared(a, b)
    if x.size < 2:
        return {"n_pairs": x.size, "paired_diff": NAN, "paired_p": NAN}
    d = x - y
    p = float(_quiet(st.ttest_rel, x, y).pvalue) if np.any(d != d[0]) else NAN
    return {"n_pairs": x.size, "paired_diff": float(d.mean()), "paired_p": p}


def _shared(a: dict[int, float], b: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """The values of a and of b at the seeds both share, in seed order."""
    seeds = sorted(set(a) & set(b))
    return np.array([a[s] for s in seeds], float), np.array([b[s] for s in seeds], float)


# equivalence: the level of each one-sided test; the TOST at level ALPHA rejects "|Δ| >= δ" exactly when the
# (1 - 2 ALPHA) = 90% interval of Δ lies inside (-δ, δ)
ALPHA = 0.05


def _two_one_sided(diff: float, se: float, dof: float, delta: float | None) -> tuple[float, float, float]:
    """(TOST p, 90% interval low, high) of a difference with standard error se and t dof.

    H0: Δ <= -δ or Δ >= δ. p = max(P(T >= (d + δ)/se), P(T <= (d - δ)/se)), T ~ t_dof; the
    interval is d -+ t_{1-ALPHA, dof} se. NaN p without δ, everything NaN without se.
    """
    if se != se:
        return NAN, NAN, NAN
    half = float(st.t.ppf(1 - ALPHA, dof)) * se
    p = NAN if delta is None else float(max(st.t.sf((diff + delta) / se, dof), st.t.cdf((diff - delta) / se, dof)))
    return p, diff - half, diff + half


def tost(a: Sequence[float], b: Sequence[float], delta: float | None = None) -> dict[str, float]:
    """Welch two one-sided tests of equivalence of mean(a) and mean(b) within ±δ (TOST p-value, NaN without
    δ) and the 90% Welch interval of mean(a) - mean(b) (:func:`_two_one_sided`)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    se, dof = _welch_se_dof(a, b)
    diff = float(a.mean() - b.mean()) if se == se else NAN
    p, lo, hi = _two_one_sided(diff, se, dof, delta)
    return {"tost_p": p, "diff_ci90_low": lo, "diff_ci90_high": hi}


def tost_paired(a: dict[int, float], b: dict[int, float], delta: float | None = None) -> dict[str, float]:
    """Paired two one-sided tests over the shared seeds (differences d_i = a_i - b_i, se = s_d / sqrt(n),
    dof n - 1) and the 90% t interval of mean(d); NaN below 2 pairs or when all d_i are equal."""
    x, y = _shared(a, b)
    d = x - y
    defined = d.size >= 2 and bool(np.any(d != d[0]))
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if defined else NAN
    p, lo, hi = _two_one_sided(float(d.mean()) if defined else NAN, se, d.size - 1, delta)
    return {"paired_tost_p": p, "paired_diff_ci90_low": lo, "paired_diff_ci90_high": hi}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values of one family, in the input order.

    With the m defined p-values sorted, p_(1) <= ... <= p_(m): adj_(i) = min(1, max_{j<=i} (m - j + 1) p_(j)).
    NaN entries stay NaN and are not counted in m.
    """
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, NAN)
    defined = ~np.isnan(p)
    m = int(defined.sum())
    order = np.argsort(p[defined], kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[defined][order]))
    out[defined] = adjusted
    return out


# fewer values per arm: no F or Levene test (with 2 values the median-centred deviations of an arm are equal,
# so Levene's within-arm variance is 0 and its p-value meaningless)
MIN_VARIANCE_TEST = 3


def variance_ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """var(a) / var(b) with the two-sided F-test p-value, and Levene's (median-centred) p-value; the
    tests need :data:`MIN_VARIANCE_TEST` values per arm (NaN p-values below)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"var_ratio": NAN, "f_p": NAN, "levene_p": NAN}
    if a.size < 2 or b.size < 2:
        return out
    va, vb = a.var(ddof=1), b.var(ddof=1)
    if vb == 0:
        return out
    ratio = va / vb
    out["var_ratio"] = float(ratio)
    if min(a.size, b.size) < MIN_VARIANCE_TEST:
        return out
    cdf = st.f.cdf(ratio, a.size - 1, b.size - 1)
    out["f_p"] = float(min(1.0, 2 * min(cdf, 1 - cdf)))
    if va > 0 or vb > 0:
        out["levene_p"] = float(st.levene(a, b, center="median").pvalue)
    return out


def interpolate_at(x_target: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """Linear interpolation of y at x_target (NaN outside the range of xs)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    if xs.size == 0 or x_target < xs[0] or x_target > xs[-1]:
        return NAN
    return float(np.interp(x_target, xs, ys))


# percentile bootstrap of the variance ratio: resamples per arm, and the fixed seed that makes the
# interval the same on every run of `compare`
BOOTSTRAP_RESAMPLES = 10_000


BOOTSTRAP_SEED = 0


def variance_ratio_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """Percentile-bootstrap interval of var(a) / var(b) (sample variances, ddof = 1).

    Each of ``resamples`` draws resamples a (n_a values) and b (n_b values) independently with
    replacement and computes r* = s²(a*) / s²(b*); the interval is the empirical
    (1 - c)/2 and (1 + c)/2 quantiles of r* (order statistics, no interpolation). A draw in which
    b* has no spread gives r* = +inf (so a tiny arm can give an unbounded upper end, as it
    should); draws with both variances 0 (0/0) are left out. Fewer than 2 values in an arm: NaN.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"var_ratio_ci_low": NAN, "var_ratio_ci_high": NAN}
    if a.size < 2 or b.size < 2:
        return out
    rng = np.random.default_rng(seed)
    va = a[rng.integers(0, a.size, (resamples, a.size))].var(axis=1, ddof=1)
    vb = b[rng.integers(0, b.size, (resamples, b.size))].var(axis=1, ddof=1)
    defined = (va > 0) | (vb > 0)
    if not defined.any():
        return out
    with np.errstate(divide="ignore"):
        r = np.sort(va[defined] / vb[defined])
    k = r.size
    lo = int(math.floor((1 - confidence) / 2 * k))
    hi = min(int(math.ceil((1 + confidence) / 2 * k)) - 1, k - 1)
    out.update(var_ratio_ci_low=float(r[lo]), var_ratio_ci_high=float(r[hi]))
    return out
