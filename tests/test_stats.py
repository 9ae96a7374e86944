"""Sweep statistics against scipy and closed forms on known inputs."""

import math

import numpy as np
import pytest
from scipy import stats as st

from rmtprune.stats import describe, interpolate_at, paired, variance_ratio, variance_ratio_ci, welch

A = [0.971, 0.975, 0.969, 0.980, 0.973]
B = [0.965, 0.978, 0.951, 0.970, 0.960]


def test_describe_matches_the_t_interval():
    d = describe(A)
    assert d["n"] == 5 and d["mean"] == pytest.approx(np.mean(A))
    assert d["var"] == pytest.approx(np.var(A, ddof=1)) and d["std"] == pytest.approx(np.std(A, ddof=1))
    lo, hi = st.t.interval(0.95, 4, loc=np.mean(A), scale=st.sem(A))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((lo, hi))
    one = describe([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci_low"])


def test_welch_matches_scipy():
    w = welch(A, B)
    assert w["diff"] == pytest.approx(np.mean(A) - np.mean(B))
    assert w["welch_p"] == pytest.approx(st.ttest_ind(A, B, equal_var=False).pvalue)
    ci = st.ttest_ind(A, B, equal_var=False).confidence_interval(0.95)
    assert (w["diff_ci_low"], w["diff_ci_high"]) == pytest.approx((ci.low, ci.high))


def test_paired_uses_shared_seeds_only():
    a = {0: 0.9, 1: 0.92, 2: 0.95, 3: 0.91}
    b = {0: 0.88, 1: 0.93, 2: 0.90, 7: 0.5}
    p = paired(a, b)
    assert p["n_pairs"] == 3
    assert p["paired_p"] == pytest.approx(st.ttest_rel([0.9, 0.92, 0.95], [0.88, 0.93, 0.90]).pvalue)
    assert p["paired_diff"] == pytest.approx(np.mean([0.02, -0.01, 0.05]))


def test_variance_ratio_f_test_and_levene():
    v = variance_ratio(A, B)
    ratio = np.var(A, ddof=1) / np.var(B, ddof=1)
    assert v["var_ratio"] == pytest.approx(ratio)
    expected = 2 * min(st.f.cdf(ratio, 4, 4), st.f.sf(ratio, 4, 4))
    assert v["f_p"] == pytest.approx(expected)
    assert v["levene_p"] == pytest.approx(st.levene(A, B, center="median").pvalue)


def test_interpolation():
    assert interpolate_at(15, [10, 20], [0.5, 0.7]) == pytest.approx(0.6)
    assert interpolate_at(15, [20, 10], [0.7, 0.5]) == pytest.approx(0.6)
    assert math.isnan(interpolate_at(5, [10, 20], [0.5, 0.7]))


def test_bootstrap_interval_of_the_variance_ratio_matches_the_f_interval_for_large_normal_samples():
    # for normal data the exact interval is r / F_{1-a/2}(n-1, m-1) .. r / F_{a/2}(n-1, m-1); the
    # percentile bootstrap approaches it as n, m grow
    rng = np.random.default_rng(11)
    a, b = rng.normal(0, 2.0, 1500), rng.normal(5, 1.0, 1000)
    r = np.var(a, ddof=1) / np.var(b, ddof=1)
    exact = (r / st.f.ppf(0.975, a.size - 1, b.size - 1), r / st.f.ppf(0.025, a.size - 1, b.size - 1))
    ci = variance_ratio_ci(a, b)
    assert (ci["var_ratio_ci_low"], ci["var_ratio_ci_high"]) == pytest.approx(exact, rel=0.02)


def test_bootstrap_interval_of_the_variance_ratio_covers_the_true_ratio_about_95_percent_of_the_time():
    rng = np.random.default_rng(12)
    reps, covered = 300, 0
    for i in range(reps):
        a, b = rng.normal(0, 3.0, 150), rng.normal(0, 1.5, 100)   # true ratio 4
        ci = variance_ratio_ci(a, b, resamples=2000, seed=i)
        covered += ci["var_ratio_ci_low"] <= 4.0 <= ci["var_ratio_ci_high"]
    # percentile intervals undercover a little at small sizes; 300 repetitions: binomial sd 0.013
    assert 0.90 <= covered / reps <= 0.98


def test_bootstrap_interval_is_fixed_by_its_seed_and_nan_without_spread():
    assert variance_ratio_ci(A, B) == variance_ratio_ci(A, B)
    ci = variance_ratio_ci(A, B)
    assert ci["var_ratio_ci_low"] < variance_ratio(A, B)["var_ratio"] < ci["var_ratio_ci_high"]
    assert all(math.isnan(v) for v in variance_ratio_ci([0.5], B).values())
    # a reference arm of three values: some resamples have no spread, so the upper end is unbounded
    assert variance_ratio_ci(A, [0.1, 0.2, 0.3])["var_ratio_ci_high"] == math.inf
