"""Sweep statistics against scipy and closed forms on known inputs."""

import math

import numpy as np
import pytest
from scipy import stats as st

from rmtprune.report.stats import (
    describe,
    holm,
    interpolate_at,
    paired,
    tost,
    tost_paired,
    variance_ratio,
    variance_ratio_ci,
    welch,
)

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


@pytest.mark.slow
def test_bootstrap_interval_of_the_variance_ratio_matches_the_f_interval_for_large_normal_samples():
    # for normal data the exact interval is r / F_{1-a/2}(n-1, m-1) .. r / F_{a/2}(n-1, m-1); the
    # percentile bootstrap approaches it as n, m grow
    rng = np.random.default_rng(11)
    a, b = rng.normal(0, 2.0, 1500), rng.normal(5, 1.0, 1000)
    r = np.var(a, ddof=1) / np.var(b, ddof=1)
    exact = (r / st.f.ppf(0.975, a.size - 1, b.size - 1), r / st.f.ppf(0.025, a.size - 1, b.size - 1))
    ci = variance_ratio_ci(a, b)
    assert (ci["var_ratio_ci_low"], ci["var_ratio_ci_high"]) == pytest.approx(exact, rel=0.02)


@pytest.mark.slow
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


# equivalence and multiplicity: reference values from statsmodels on fixed data, intervals in closed form
C = [0.966, 0.979, 0.952, 0.971, 0.962, 0.975]   # an arm with one seed more than A


@pytest.mark.slow
def test_holm_matches_statsmodels_and_leaves_nan_out_of_the_family():
    from statsmodels.stats.multitest import multipletests

    for p in ([0.01, 0.04, 0.03, 0.2, 0.005], [0.02, 0.02, 0.5, 0.9], [0.3, 0.6, 0.45], [0.001]):
        assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    mixed = holm([0.01, math.nan, 0.04, 0.03])
    assert math.isnan(mixed[1])
    assert mixed[[0, 2, 3]] == pytest.approx(multipletests([0.01, 0.04, 0.03], method="holm")[1])
    assert holm([]).size == 0 and math.isnan(holm([math.nan])[0])


@pytest.mark.parametrize("delta", [0.005, 0.01, 0.02])
def test_welch_tost_matches_statsmodels_and_its_90_interval_is_the_closed_form(delta):
    from statsmodels.stats.weightstats import ttost_ind

    t = tost(A, C, delta)
    assert t["tost_p"] == pytest.approx(ttost_ind(np.array(A), np.array(C), -delta, delta, usevar="unequal")[0])
    va, vc = np.var(A, ddof=1) / len(A), np.var(C, ddof=1) / len(C)
    dof = (va + vc) ** 2 / (va**2 / (len(A) - 1) + vc**2 / (len(C) - 1))
    d, half = np.mean(A) - np.mean(C), st.t.ppf(0.95, dof) * math.sqrt(va + vc)
    assert (t["diff_ci90_low"], t["diff_ci90_high"]) == pytest.approx((d - half, d + half))
    # the TOST at 5% shows equivalence exactly when the 90% interval lies inside (-delta, delta)
    assert (t["tost_p"] < 0.05) == (-delta < t["diff_ci90_low"] and t["diff_ci90_high"] < delta)


@pytest.mark.parametrize("delta", [0.005, 0.01, 0.02])
def test_paired_tost_uses_the_shared_seeds_and_matches_statsmodels(delta):
    from statsmodels.stats.weightstats import ttost_paired

    a = dict(enumerate(A))
    c = {**dict(enumerate(C[:5])), 9: 0.5}   # seed 9 has no partner
    t = tost_paired(a, c, delta)
    assert t["paired_tost_p"] == pytest.approx(ttost_paired(np.array(A), np.array(C[:5]), -delta, delta)[0])
    d = np.array(A) - np.array(C[:5])
    half = st.t.ppf(0.95, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (t["paired_diff_ci90_low"], t["paired_diff_ci90_high"]) == pytest.approx((d.mean() - half, d.mean() + half))


def test_tost_without_a_margin_gives_the_interval_only_and_nothing_without_spread():
    t = tost(A, C)
    assert math.isnan(t["tost_p"]) and t["diff_ci90_low"] < t["diff_ci90_high"]
    assert all(math.isnan(v) for v in tost([0.5], C, 0.01).values())
    assert all(math.isnan(v) for v in tost([0.5, 0.5], [0.4, 0.4], 0.01).values())
    same = tost_paired({0: 0.75, 1: 0.5}, {0: 0.5, 1: 0.25}, 0.5)   # every difference 0.25: no spread
    assert all(math.isnan(v) for v in same.values())


def test_no_f_or_levene_test_below_three_values_per_arm():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        two = variance_ratio([0.90, 0.91], [0.80, 0.83])
        mixed = variance_ratio(A, [0.80, 0.83])
    for v in (two, mixed):
        assert math.isnan(v["f_p"]) and math.isnan(v["levene_p"])
    assert two["var_ratio"] == pytest.approx(np.var([0.90, 0.91], ddof=1) / np.var([0.80, 0.83], ddof=1))
    three = variance_ratio(A[:3], [0.80, 0.83, 0.81])
    assert 0 < three["f_p"] <= 1 and 0 < three["levene_p"] <= 1


def test_nearly_identical_arms_give_p_values_and_no_warning():
    """scipy warns of precision loss when two arms' values are nearly identical; compare's console stays
    clean (the p-value is still computed)."""
    import warnings

    from rmtprune.report.stats import paired, welch

    a = [0.98, 0.98, 0.98 + 1e-15]
    b = [0.98 + 1e-15, 0.98, 0.98]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w, p = welch(a, b), paired(dict(enumerate(a)), dict(enumerate(b)))
    assert 0 <= w["welch_p"] <= 1 and (p["paired_p"] != p["paired_p"] or 0 <= p["paired_p"] <= 1)
