"""The BEMA fit with spikes and censoring from both sides, against random-matrix theory.

Planted model: W = N + U diag(theta) V^T, N with i.i.d. N(0, sigma^2) entries, theta at 3-6x the
BBP threshold sigma (n p)^(1/4), where every spike leaves the bulk (and the bulk is the noise
compressed to a (p - k) x (n - k) matrix, see rmtprune.rmt.fit).
"""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from tests_support.spikes import spiked

from rmtprune.rmt import NoBulkError, fit_mp, mp_quantile
from rmtprune.rmt.fit import MIN_WINDOW, bulk_window

RUNS = Path(__file__).resolve().parents[1] / "docs" / "results" / "v1" / "runs"  # spectra of trained layers


def _planted(rng, p, n, k, sigma=1.0, lo=3.0, hi=6.0):
    """k spikes of strengths uniform in [lo, hi] times the BBP threshold."""
    return spiked(rng, p, n, rng.uniform(lo, hi, k) * sigma * (n * p) ** 0.25, sigma)


@pytest.mark.slow
@pytest.mark.parametrize("strength", [(2.0, 2.0), (3.0, 6.0)])
@pytest.mark.parametrize("k,tol", [(10, 0.02), (50, 0.02), (100, 0.025)])
def test_sigma2_does_not_grow_with_the_number_of_spikes(k, tol, strength):
    # issue #11: the old estimator gave 1.02-1.03, 1.14, 1.35 for k = 10, 50, 100; issue #20: the
    # spike-deflated bulk alone gives 0.995, 0.978, 0.951 at 2x critical (outlier deflation, rmt.fit)
    rng = np.random.default_rng(100 + k)
    p = n = 500
    fits = [fit_mp(singular_values=np.linalg.svd(_planted(rng, p, n, k, lo=strength[0], hi=strength[1]),
                                                 compute_uv=False), shape=(p, n)) for _ in range(3)]
    assert np.mean([f.sigma2 for f in fits]) == pytest.approx(1.0, rel=tol)
    # every planted spike counted; on top of them a false one now and then (rate about beta = 0.1)
    assert all(f.n_spikes >= k for f in fits) and sum(f.n_spikes - k for f in fits) <= 2
    assert all(f.n_bulk == p - f.n_spikes for f in fits)


@pytest.mark.slow
@pytest.mark.parametrize("p,n,k", [(500, 500, 10), (500, 500, 50), (500, 500, 100), (250, 1000, 10), (250, 1000, 50)])
def test_the_bulk_loses_the_first_order_bbp_energy(p, n, k):
    # theory: the bulk of noise plus k spikes at theta is the compressed noise scaled by 1 - delta,
    # delta = sigma^2 sum_j theta_j^-2 (rmt.fit, "Outlier deflation"): what sigma2 corrects for
    rng = np.random.default_rng(300 + k + p)
    theta2 = 4.0 * math.sqrt(n * p)  # 2x critical
    delta = k / theta2
    fits = [fit_mp(singular_values=np.linalg.svd(_planted(rng, p, n, k, lo=2.0, hi=2.0), compute_uv=False),
                   shape=(p, n)) for _ in range(2)]
    assert np.mean([f.bulk_sigma2 for f in fits]) == pytest.approx(1.0 - delta, abs=0.006)
    assert all(f.sigma2 > f.bulk_sigma2 for f in fits)
    assert np.mean([f.sigma2 for f in fits]) == pytest.approx(1.0, abs=0.02 if k < 100 else 0.025)


@pytest.mark.slow
def test_pure_noise_is_unchanged():
    # sigma2 unbiased to 0.5%, false-spike rate beta within 3 binomial standard deviations
    rng = np.random.default_rng(21)
    p = n = 300
    beta, draws = 0.1, 100
    fits = [fit_mp(singular_values=np.linalg.svd(rng.normal(0.0, 0.1, (p, n)), compute_uv=False), shape=(p, n),
                   beta=beta) for _ in range(draws)]
    assert np.mean([f.sigma2 for f in fits]) == pytest.approx(0.01, rel=0.005)
    rate = np.mean([f.n_spikes > 0 for f in fits])
    assert abs(rate - beta) < 3 * math.sqrt(beta * (1 - beta) / draws)
    assert all(f.n_bulk == p - f.n_spikes for f in fits)  # a false spike is left out of the bulk too
    assert all(f.fit_error < 0.015 for f in fits)
    # no spike, no deflation: sigma2 is the bulk's own scale
    assert all(f.sigma2 == f.bulk_sigma2 for f in fits if f.n_spikes == 0)


@pytest.mark.parametrize("p,n", [(300, 300), (200, 800)])
def test_spectrum_at_the_mp_quantiles_is_fitted_exactly(p, n):
    # eigenvalues at the plotting positions (i + 1/2) / p of MP(p/n, sigma2): sigma2 exact, fit error 0
    # (the old empirical CDF i / p read 0.5 / p off)
    sigma2 = 0.3
    lam = sigma2 * mp_quantile((np.arange(p) + 0.5) / p, p / n)
    fit = fit_mp(singular_values=np.sqrt(n * lam), shape=(p, n))
    assert fit.sigma2 == pytest.approx(sigma2, rel=1e-9)
    assert fit.fit_error < 1e-9
    assert fit.n_spikes == 0


def test_compressed_bulk_with_spikes_is_fitted_exactly():
    # k spikes far out and the other p - k values at the quantiles of the compressed noise,
    # MP((p - k) / (n - k), sigma2) on s**2 / (n - k): the refit recovers sigma2 exactly
    p, n, k, sigma2 = 400, 600, 40, 2.0
    pb, nb = p - k, n - k
    bulk = np.sqrt(nb * sigma2 * mp_quantile((np.arange(pb) + 0.5) / pb, pb / nb))
    spikes = np.sqrt(sigma2) * (math.sqrt(n) + math.sqrt(p)) * np.linspace(2.0, 4.0, k)
    fit = fit_mp(singular_values=np.concatenate([bulk, spikes]), shape=(p, n))
    assert fit.bulk_sigma2 == pytest.approx(sigma2, rel=1e-9)  # no BBP deflation planted: sigma2 is above it
    assert fit.n_spikes == k and fit.n_bulk == pb
    assert fit.bulk_gamma == pytest.approx(pb / nb)
    assert fit.threshold == pytest.approx(math.sqrt(n * fit.lambda_plus))
    assert bulk.max() < fit.threshold < spikes.min()


def _truncate(w, rank):
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    s[rank:] = 0.0
    return (u * s) @ vt


@pytest.mark.parametrize("extra", [0, 3])
def test_a_layer_cut_to_its_spikes_has_no_bulk(extra):
    rng = np.random.default_rng(5)
    p, k = 300, 10
    w = _truncate(_planted(rng, p, p, k), k + extra)
    with pytest.raises(NoBulkError, match="bulk value"):
        fit_mp(w, n_censored=p - k - extra, n_known_spikes=k)
    assert issubclass(NoBulkError, ValueError)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [10, 100])
def test_a_layer_cut_to_spikes_and_some_bulk_refits_the_truth(extra):
    # the survivors are the top of the bulk: their positions among the p - k bulk values are kept
    rng = np.random.default_rng(extra)
    p, k = 300, 10
    fits = [fit_mp(_truncate(_planted(rng, p, p, k), k + extra), n_censored=p - k - extra, n_known_spikes=k)
            for _ in range(3)]
    assert np.mean([f.sigma2 for f in fits]) == pytest.approx(1.0, rel=0.02)
    assert [f.n_spikes for f in fits] == [k] * 3
    assert all(f.n_known_spikes == k and f.n_censored == p - k - extra for f in fits)


def test_known_spikes_are_never_bulk():
    # the top values named as known spikes stay out of the bulk even below the new edge: the fit
    # does not depend on their values at all
    rng = np.random.default_rng(8)
    s = np.linalg.svd(rng.normal(size=(200, 400)), compute_uv=False)
    fit = fit_mp(singular_values=s, shape=(200, 400), n_known_spikes=15)
    louder = s.copy()
    louder[:15] *= 10.0
    same = fit_mp(singular_values=louder, shape=(200, 400), n_known_spikes=15)
    assert fit.n_bulk == same.n_bulk == 200 - 15 and fit.n_known_spikes == 15
    assert fit.bulk_sigma2 == same.bulk_sigma2 and fit.threshold == same.threshold
    assert fit.n_spikes < 15 and same.n_spikes == 15  # pure noise: most of them lie below the edge


@pytest.mark.parametrize("p_b", list(range(MIN_WINDOW, 40)) + [101, 1000])
@pytest.mark.parametrize("alpha", [0.1, 0.25, 0.45])
def test_window_stays_between_the_censored_zeros_and_the_spikes(p_b, alpha):
    for c in range(p_b - MIN_WINDOW + 1):
        start, stop = bulk_window(p_b, c, alpha)
        assert c <= start and stop <= p_b and stop - start >= MIN_WINDOW
        if c <= math.floor(alpha * p_b) and math.floor((1 - alpha) * p_b) - math.floor(alpha * p_b) >= MIN_WINDOW:
            assert (start, stop) == (math.floor(alpha * p_b), math.floor((1 - alpha) * p_b))


def test_bad_censoring_counts_are_value_errors():
    s = np.linspace(1.0, 2.0, 50)
    for kwargs in ({"n_censored": -1}, {"n_known_spikes": -2}, {"n_censored": 30, "n_known_spikes": 21}):
        with pytest.raises(ValueError, match="n_censored") as err:
            fit_mp(singular_values=s, shape=(50, 80), **kwargs)
        assert not isinstance(err.value, NoBulkError)


def _committed(run, epoch, layer):
    folder = RUNS / run / "rmt_seed0"
    with open(folder / "layers.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["epoch"] == str(epoch) and r["layer"] == layer)
    with np.load(folder / "spectra.npz") as z:
        s = z[f"e{epoch}/{layer}"].astype(np.float64)
    return s, (int(row["out"]), int(row["in"])), int(row["n_censored"] or 0)


@pytest.mark.parametrize("run,epoch,layer", [
    ("mnist_fc_1000_1000_1000_500_cpu", 9, "layers.1"),     # issue #11: 22 -> 10 -> 5
    ("fashion_fc_2000_2000_1000_500_cpu", 9, "layers.1"),   # issue #11: 30 -> 14 -> 7 -> 4
    ("ablation_oneshot", 5, "layers.2"),                     # cut from full rank to its spikes
])
def test_replay_of_a_spikes_only_event_keeps_the_rank(run, epoch, layer):
    s, shape, censored = _committed(run, epoch, layer)
    p = min(shape)
    k = fit_mp(singular_values=s, shape=shape, n_censored=censored).n_spikes
    cut = s.copy()
    cut[k:] = 0.0
    with pytest.raises(NoBulkError):
        fit_mp(singular_values=cut, shape=shape, n_censored=p - k, n_known_spikes=k)
