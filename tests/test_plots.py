"""Figures drawn from files: the ESD's MP curve is the fitted bulk's density."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rmtprune.plots import esd_plot  # noqa: E402
from rmtprune.rmt import fit_mp  # noqa: E402


def test_the_esd_curve_is_the_density_of_the_bulk_the_fit_describes():
    rng = np.random.default_rng(0)
    p, n, k = 300, 600, 30
    w = rng.normal(size=(p, n))
    u, _ = np.linalg.qr(rng.normal(size=(p, k)))
    v, _ = np.linalg.qr(rng.normal(size=(n, k)))
    w += (u * np.linspace(3, 6, k) * (p * n) ** 0.25) @ v.T  # k spikes above the BBP threshold
    fit = fit_mp(w)
    assert fit.n_bulk == p - k
    fig, ax = plt.subplots()
    esd_plot(ax, fit.singular_values, (p, n), fit.sigma2, fit.lambda_plus, fit.fit_error, n_bulk=fit.n_bulk)
    x, y = ax.lines[0].get_data()
    # the curve integrates to the bulk's share of all p values, and the histogram of the bulk matches it
    assert np.trapezoid(y, x) == pytest.approx((p - k) / p, abs=0.01)
    lam = np.sort(fit.singular_values ** 2 / n)[: p - k]
    mean_curve = np.trapezoid(x * y, x) / np.trapezoid(y, x)
    assert mean_curve == pytest.approx(lam.mean(), rel=0.02)
    plt.close(fig)
