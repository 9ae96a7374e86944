"""The BEMA fit against random-matrix theory: pure noise, planted spikes (BBP), non-MP bulks."""

import math

import numpy as np
import pytest
import torch
from tests_support.spikes import spiked

from rmtprune.rmt import as_matrix, fit_mp, singular_values


@pytest.mark.parametrize("shape", [(300, 300), (300, 1200), (1000, 400), (784, 3000)])
@pytest.mark.parametrize("std", [1.0, 0.05])
def test_pure_noise_sigma2_and_fit(shape, std):
    rng = np.random.default_rng(hash(shape) % 2**32)
    fit = fit_mp(rng.normal(0.0, std, shape))
    assert fit.sigma2 == pytest.approx(std**2, rel=0.02)
    assert 1e-4 < fit.fit_error < 1.5e-2
    assert fit.good(0.05)
    assert fit.gamma == min(shape) / max(shape)
    assert fit.threshold == pytest.approx(math.sqrt(max(shape) * fit.lambda_plus))
    assert np.all(np.diff(fit.singular_values) <= 0)


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.1, 0.3])
def test_false_spike_rate_is_beta(beta):
    # Over many pure-noise draws, the share with a value above the TW-corrected edge is ~ beta.
    rng = np.random.default_rng(7)
    draws = 400
    hits = sum(fit_mp(rng.normal(size=(60, 120)), beta=beta).n_spikes > 0 for _ in range(draws))
    tol = 3 * math.sqrt(beta * (1 - beta) / draws)
    assert abs(hits / draws - beta) < tol


def test_tracy_widom_correction_uses_the_four_thirds_exponent():
    fit = fit_mp(np.random.default_rng(0).normal(size=(200, 200)))
    g, n = fit.gamma, 200
    from rmtprune.rmt import tw1_quantile
    t = float(tw1_quantile(0.9))
    expected = fit.sigma2 * ((1 + g**0.5) ** 2 + t * n ** (-2 / 3) * g ** (-1 / 6) * (1 + g**0.5) ** (4 / 3))
    assert fit.lambda_plus == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("p,n,sigma", [(400, 800, 1.0), (500, 500, 0.1), (300, 1200, 2.0)])
def test_bbp_counts_only_supercritical_spikes(p, n, sigma):
    rng = np.random.default_rng(p + n)
    critical = sigma * (n * p) ** 0.25
    strengths = np.array([3.0, 2.0, 1.5, 0.7, 0.4]) * critical  # 3 above the BBP threshold, 2 below
    fit = fit_mp(spiked(rng, p, n, strengths, sigma))
    assert fit.n_spikes == 3
    assert fit.good(0.05)
    sup = strengths[:3]
    predicted = np.sqrt((sup**2 + sigma**2 * n) * (sup**2 + sigma**2 * p)) / sup
    np.testing.assert_allclose(fit.singular_values[:3], predicted, rtol=0.05)
    assert fit.sigma2 == pytest.approx(sigma**2, rel=0.03)


@pytest.mark.slow
def test_non_mp_bulks_are_bad_fits():
    rng = np.random.default_rng(3)
    product = rng.normal(size=(300, 300)) @ rng.normal(size=(300, 300))
    heavy = rng.standard_t(1.5, size=(300, 600))
    g = rng.normal(size=(300, 600))
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    s[150:] = 0.0
    zeros = (u * s) @ vt
    for w in (product, heavy, zeros):
        assert fit_mp(w).fit_error > 0.08
        assert not fit_mp(w).good(0.05)
    # the same zeros, declared as pruned away (censored), leave a good MP fit of the original noise
    censored = fit_mp(zeros, n_censored=150)
    assert censored.good(0.05) and censored.sigma2 == pytest.approx(1.0, rel=0.03)


@pytest.mark.slow
def test_precomputed_singular_values_and_torch_input_agree():
    w = np.random.default_rng(5).normal(size=(120, 500))
    a = fit_mp(w)
    b = fit_mp(singular_values=np.linalg.svd(w, compute_uv=False), shape=w.shape)
    c = fit_mp(torch.from_numpy(w).float())
    assert a.sigma2 == pytest.approx(b.sigma2, rel=1e-10)
    assert a.sigma2 == pytest.approx(c.sigma2, rel=1e-5)
    assert a.n_spikes == b.n_spikes == c.n_spikes


def test_singular_values_paths_match_numpy():
    rng = np.random.default_rng(0)
    for shape in [(50, 400), (400, 50), (300, 310)]:
        w = rng.normal(size=shape)
        np.testing.assert_allclose(singular_values(torch.from_numpy(w)), np.linalg.svd(w, compute_uv=False),
                                   rtol=1e-9)


def test_conv_weights_become_matrices():
    w = torch.randn(64, 32, 3, 3)
    assert as_matrix(w).shape == (64, 288)
    assert fit_mp(as_matrix(w)).shape == (64, 288)


@pytest.mark.parametrize("kwargs,match", [
    ({"W": np.zeros((3, 4, 5))}, "2-D"),
    ({"W": np.full((20, 20), np.nan)}, "NaN"),
    ({"W": np.ones((5, 40))}, "at least 10"),
    ({"W": np.zeros((20, 30))}, "all zeros"),
    ({"W": np.ones((20, 30)), "alpha": 0.5}, "alpha"),
    ({"W": np.ones((20, 30)), "alpha": 0.0}, "alpha"),
    ({"W": np.ones((20, 30)), "beta": 1.0}, "beta"),
    ({"singular_values": np.ones(20)}, "shape"),
])
def test_bad_input_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_mp(**kwargs)


def test_result_is_immutable():
    fit = fit_mp(np.random.default_rng(0).normal(size=(40, 80)))
    with pytest.raises(AttributeError):
        fit.sigma2 = 2.0
    with pytest.raises(ValueError):
        fit.singular_values[0] = 0.0
