"""Statistics for seed sweeps: summaries with t confidence intervals, and the normal-vs-pruned tests.

Pure functions on sequences of floats (one value per seed). Sample variance (ddof = 1) throughout.
"""

from __future__ import annotations

import math
from typing import Sequence

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


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Difference of means mean(a) - mean(b), its Welch–Satterthwaite t interval and two-sided p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"diff": NAN, "diff_ci_low": NAN, "diff_ci_high": NAN, "welch_p": NAN}
    if a.size == 0 or b.size == 0:
        return out
    out["diff"] = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return out
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return out
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(st.t.ppf(0.5 + confidence / 2, dof)) * se
    out.update(diff_ci_low=out["diff"] - half, diff_ci_high=out["diff"] + half,
               welch_p=float(st.ttest_ind(a, b, equal_var=False).pvalue))
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    """Paired t-test over the seeds both arms share: n_pairs, mean difference a - b, p-value."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return {"n_pairs": len(seeds), "paired_diff": NAN, "paired_p": NAN}
    x = np.array([a[s] for s in seeds])
    y = np.array([b[s] for s in seeds])
    d = x - y
    p = float(st.ttest_rel(x, y).pvalue) if np.any(d != d[0]) else NAN
    return {"n_pairs": len(seeds), "paired_diff": float(d.mean()), "paired_p": p}


def variance_ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """var(a) / var(b) with the two-sided F-test p-value, and Levene's (median-centred) p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"var_ratio": NAN, "f_p": NAN, "levene_p": NAN}
    if a.size < 2 or b.size < 2:
        return out
    va, vb = a.var(ddof=1), b.var(ddof=1)
    if vb == 0:
        return out
    ratio = va / vb
    cdf = st.f.cdf(ratio, a.size - 1, b.size - 1)
    out["var_ratio"] = float(ratio)
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
