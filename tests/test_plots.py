"""Figures drawn from files: the ESD's MP curve is the fitted bulk's density."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rmtprune.report.plots import esd_plot  # noqa: E402
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


def _run(tmp_path, name: str, sigma2: float, seed: int = 0):
    """A run read back, as esd_figures sees it: one event at epoch 1 on a 100x300 layer."""
    from types import SimpleNamespace

    import pandas as pd

    from rmtprune.runs.folder import append_spectra

    folder = tmp_path / name
    folder.mkdir()
    s = np.random.default_rng(seed).normal(size=(100, 300))
    append_spectra(folder / "spectra.npz", 1, {"layers.0": np.linalg.svd(s, compute_uv=False)})
    ledger = pd.DataFrame([{"epoch": 1, "layer": "layers.0", "out": 100, "in": 300, "sigma2": sigma2,
                            "lambda_plus": (1 + np.sqrt(1 / 3)) ** 2, "fit_error": 0.01, "n_censored": 0,
                            "n_bulk": 100, "action": "truncate", "rank_before": 100, "rank_after": 50}])
    return SimpleNamespace(folder=folder, seed=seed, spectra_path=folder / "spectra.npz", ledger=ledger)


@pytest.mark.slow
def test_esd_figures_come_from_the_arm_that_fitted_the_mp_law(tmp_path):
    """A baseline cutting by SVD (lowrank) has spectra but no MP fit (σ² empty): its runs are passed over
    without a warning, and the figure is the rmt run's."""
    from rmtprune.report.plots import esd_figures

    arms = {"none": [], "lowrank": [_run(tmp_path, "lowrank", float("nan"))], "rmt": [_run(tmp_path, "rmt", 1.0)]}
    paths, warnings = esd_figures(arms, tmp_path / "out")
    assert warnings == []
    assert [p.name for p in paths] == ["out_esd_layers_0.png"]
    assert paths[0].stat().st_size > 5000
    paths, warnings = esd_figures({"lowrank": arms["lowrank"]}, tmp_path / "only")
    assert paths == [] and warnings == []
