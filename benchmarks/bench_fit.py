"""Speed of the MP fit (not a test): ``fit_mp`` against ``torch.linalg.svdvals`` on the same matrix,
and its estimator part against a straightforward reference-style BEMA (method doc section 1: one
Brent root-finding of a numerically integrated CDF per quantile, and a quadrature per CDF value).

    python benchmarks/bench_fit.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy.integrate import quad
from scipy.optimize import brentq

from rmtprune.rmt import fit_mp, mp_edges, mp_pdf, tw1_quantile
from rmtprune.rmt.mp import _window_quantiles


def reference_estimator(s: np.ndarray, shape: tuple[int, int], alpha: float = 0.25, beta: float = 0.1):
    """BEMA as the reference computes it: every quantile and CDF value by quadrature + root finding."""
    p, n = min(shape), max(shape)
    gamma = p / n
    lo_edge, hi_edge = mp_edges(gamma)
    lam = np.sort(s**2 / n)

    def cdf(x: float, sigma2: float = 1.0) -> float:
        a, b = mp_edges(gamma, sigma2)
        if x <= a:
            return 0.0
        if x >= b:
            return 1.0
        return quad(lambda t: float(mp_pdf(t, gamma, sigma2)), a, x, limit=200)[0]

    lo, hi = math.floor(alpha * p), math.floor((1 - alpha) * p)
    q = np.array([brentq(lambda x: cdf(x) - (i + 0.5) / p, lo_edge, hi_edge) for i in range(lo, hi)])
    sigma2 = float(np.dot(q, lam[lo:hi]) / np.dot(q, q))
    t = float(tw1_quantile(1 - beta))
    lam_plus = sigma2 * ((1 + gamma**0.5) ** 2 + t * n ** (-2 / 3) * gamma ** (-1 / 6) * (1 + gamma**0.5) ** (4 / 3))
    emp = alpha + (1 - 2 * alpha) * np.arange(hi - lo) / (hi - lo)
    err = max(abs(cdf(x, sigma2) - e) for x, e in zip(lam[lo:hi], emp))
    return sigma2, math.sqrt(n * lam_plus), err


def best_of(f, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times are the best of {args.repeats}")
    print(f"{'shape':>11} {'svdvals':>9} {'fit_mp':>9} {'ratio':>6} | {'estimator':>10} {'cold':>9} "
          f"{'reference':>10} {'speed-up':>9} {'sigma2 agree':>12}")
    for shape in [(3000, 3000), (784, 3000), (500, 3000)]:
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.02
        fit_mp(w)  # warm the quantile cache: every later refit of this shape hits it
        t_svd = best_of(lambda: torch.linalg.svdvals(w), args.repeats)
        t_fit = best_of(lambda: fit_mp(w), args.repeats)
        s = fit_mp(w).singular_values
        t_est = best_of(lambda: fit_mp(singular_values=s, shape=shape), args.repeats * 5)

        def cold():
            _window_quantiles.cache_clear()
            fit_mp(singular_values=s, shape=shape)

        t_cold = best_of(cold, args.repeats)
        t = time.perf_counter()
        ref = reference_estimator(s, shape)
        t_ref = time.perf_counter() - t
        ours = fit_mp(singular_values=s, shape=shape)
        agree = abs(ref[0] - ours.sigma2) / ours.sigma2
        print(f"{shape[0]:>5}x{shape[1]:<5} {t_svd:9.3f} {t_fit:9.3f} {t_fit / t_svd:6.2f} | {t_est * 1e3:8.2f}ms "
              f"{t_cold * 1e3:7.1f}ms {t_ref:9.2f}s {t_ref / t_est:8.0f}x {agree:12.1e}")
    print("ratio = fit_mp / svdvals (target <= 1.2); speed-up = reference / estimator with cached quantiles "
          "(target >= 100); cold = estimator with the quantile cache cleared")


if __name__ == "__main__":
    main()
