"""Tracy–Widom (GOE) against its exact quantiles and moments."""

import numpy as np
import pytest
from scipy.integrate import quad

from rmtprune.rmt import tw1_cdf, tw1_quantile


@pytest.mark.parametrize("p,value", [(0.90, 0.4501432891), (0.95, 0.9793160535), (0.99, 2.0234492814)])
def test_exact_quantiles(p, value):
    assert abs(float(tw1_quantile(p)) - value) < 1e-6


@pytest.mark.slow
def test_mean_and_variance():
    # E[s] = int_0^inf (1 - F) - int_-inf^0 F ;  E[s^2] = int 2 s (1 - F) over s > 0 - int 2 s F over s < 0
    mean = quad(lambda s: 1 - float(tw1_cdf(s)), 0, 12, limit=200)[0] - quad(lambda s: float(tw1_cdf(s)), -12, 0, limit=200)[0]
    second = quad(lambda s: 2 * s * (1 - float(tw1_cdf(s))), 0, 12, limit=200)[0] \
        - quad(lambda s: 2 * s * float(tw1_cdf(s)), -12, 0, limit=200)[0]
    assert abs(mean - (-1.2065335746)) < 1e-5
    assert abs(second - mean**2 - 1.6077810346) < 1e-5


@pytest.mark.slow
def test_cdf_is_a_distribution_over_the_range_that_matters():
    s = tw1_quantile(np.array([0.001, 0.01, 0.5, 0.99, 0.999]))
    assert np.all(np.diff(s) > 0)
    np.testing.assert_allclose(tw1_cdf(s), [0.001, 0.01, 0.5, 0.99, 0.999], atol=1e-9)
    assert float(tw1_cdf(-20)) == 0.0 and float(tw1_cdf(20)) == 1.0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, np.nan])
def test_quantile_refuses_out_of_range(bad):
    with pytest.raises(ValueError):
        tw1_quantile(bad)
