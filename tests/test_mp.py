"""The MP law against numerical integration and its own definition."""

import numpy as np
import pytest
from scipy.integrate import quad

from rmtprune.rmt import mp_cdf, mp_edges, mp_pdf, mp_quantile, window_quantiles

GAMMAS = [1.0, 0.5, 0.2613, 0.01]


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("sigma2", [1.0, 0.37])
def test_cdf_is_the_integral_of_the_density(gamma, sigma2):
    lo, hi = mp_edges(gamma, sigma2)
    for x in np.linspace(lo, hi, 9)[1:-1]:
        integral, _ = quad(lambda t: float(mp_pdf(t, gamma, sigma2)), lo, x, limit=400, epsabs=1e-13, epsrel=1e-13)
        assert abs(float(mp_cdf(x, gamma, sigma2)) - integral) < 1e-9


@pytest.mark.parametrize("gamma", GAMMAS)
def test_density_integrates_to_one_and_edges_are_exact(gamma):
    lo, hi = mp_edges(gamma)
    assert lo == pytest.approx((1 - np.sqrt(gamma)) ** 2) and hi == pytest.approx((1 + np.sqrt(gamma)) ** 2)
    total, _ = quad(lambda t: float(mp_pdf(t, gamma)), lo, hi, limit=400)
    assert total == pytest.approx(1.0, abs=1e-9)
    # F = 0 at and below the lower edge, 1 at and above the upper edge (the reference returns 0 there)
    assert np.all(mp_cdf([lo - 1.0, lo], gamma) == 0.0)
    assert np.all(mp_cdf([hi, hi + 1.0, 1e9], gamma) == 1.0)
    assert float(mp_quantile(0.0, gamma)) == lo and float(mp_quantile(1.0, gamma)) == hi


@pytest.mark.parametrize("gamma", GAMMAS)
def test_quantile_inverts_the_cdf(gamma):
    lo, hi = mp_edges(gamma, 2.0)
    x = np.linspace(lo, hi, 101)[1:-1]
    np.testing.assert_allclose(mp_quantile(mp_cdf(x, gamma, 2.0), gamma, 2.0), x, rtol=1e-9, atol=1e-12)
    u = np.linspace(0.001, 0.999, 57)
    np.testing.assert_allclose(mp_cdf(mp_quantile(u, gamma), gamma), u, atol=1e-12)


def test_mean_of_the_law_is_sigma2():
    # E[x] = sigma2 for every gamma (trace of the Gram matrix / p)
    for gamma in GAMMAS:
        lo, hi = mp_edges(gamma, 0.5)
        mean, _ = quad(lambda t: t * float(mp_pdf(t, gamma, 0.5)), lo, hi, limit=400)
        assert mean == pytest.approx(0.5, rel=1e-8)


def test_window_quantiles_are_cached_and_read_only():
    a = window_quantiles(0.5, 300, 75, 225)
    assert a is window_quantiles(0.5, 300, 75, 225)
    assert not a.flags.writeable
    np.testing.assert_allclose(a, mp_quantile((np.arange(75, 225) + 0.5) / 300, 0.5))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_gamma_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="gamma"):
        mp_cdf(1.0, bad)
