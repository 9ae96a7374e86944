"""Numerical core: the Marchenko–Pastur law, the Tracy–Widom law, the BEMA fit.

Pure functions on arrays and small immutable results; no torch.nn, no files, no config.

>>> import numpy as np
>>> from rmtprune.rmt import fit_mp
>>> fit = fit_mp(np.random.default_rng(0).normal(0, 0.1, (300, 600)))
>>> round(fit.sigma2, 2), fit.good(0.05)
(0.01, True)
"""

from rmtprune.rmt.fit import MPFit, NoBulkError, as_matrix, fit_mp, singular_values
from rmtprune.rmt.mp import mp_cdf, mp_edges, mp_pdf, mp_quantile, window_quantiles
from rmtprune.rmt.tracy_widom import tw1_cdf, tw1_quantile

__all__ = [
    "MPFit", "NoBulkError", "as_matrix", "fit_mp", "singular_values",
    "mp_cdf", "mp_edges", "mp_pdf", "mp_quantile", "window_quantiles",
    "tw1_cdf", "tw1_quantile",
]
