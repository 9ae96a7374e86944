"""Planted spectra: Gaussian noise plus a low-rank signal of known strength, the test matrices of the RMT code.

A (p, n) matrix of i.i.d. noise with entry std sigma plus theta_i u_i v_i^T (u, v orthonormal) has one
singular value above the Marchenko-Pastur edge sigma (sqrt p + sqrt n) per spike above the BBP threshold
theta > sigma (n p)^(1/4) (``critical``), and none for a spike below it.
"""

from __future__ import annotations

import numpy as np
import torch


def critical(p: int, n: int, sigma: float = 1.0) -> float:
    """The BBP threshold sigma (n p)^(1/4) of a (p, n) noise matrix with entry std sigma."""
    return sigma * (n * p) ** 0.25


def frames(rng: np.random.Generator, p: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Random orthonormal (p, k) and (n, k) frames: the spike directions u, v."""
    u = np.linalg.qr(rng.normal(size=(p, k)))[0]
    v = np.linalg.qr(rng.normal(size=(n, k)))[0]
    return u, v


def spiked(rng: np.random.Generator, p: int, n: int, thetas, sigma: float = 1.0) -> np.ndarray:
    """(p, n) noise of entry std sigma plus one spike of strength theta per entry of ``thetas``."""
    u, v = frames(rng, p, n, len(thetas))
    return rng.normal(0.0, sigma, (p, n)) + (u * thetas) @ v.T


def _torch_frames(g: torch.Generator, out: int, inp: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.linalg.qr(torch.randn(out, rank, generator=g))[0]
    v = torch.linalg.qr(torch.randn(inp, rank, generator=g))[0]
    return u, v


def planted(out: int, inp: int, rank: int, sigma: float = 0.05, seed: int = 0) -> torch.Tensor:
    """An (out, inp) float32 weight: noise of entry std sigma plus ``rank`` spikes of strength 4 down to 2
    times the BBP threshold, so an MP bulk and exactly ``rank`` values above its edge."""
    g = torch.Generator().manual_seed(seed)
    u, v = _torch_frames(g, out, inp, rank)
    return sigma * torch.randn(out, inp, generator=g) + (u * torch.linspace(4.0, 2.0, rank) * critical(out, inp, sigma)) @ v.T


def planted_exact(out: int, inp: int, rank: int, seed: int) -> torch.Tensor:
    """An (out, inp) weight of exactly ``rank`` equal singular values (2.0) plus noise (std 1e-5) far below them."""
    g = torch.Generator().manual_seed(seed)
    u, v = _torch_frames(g, out, inp, rank)
    return 2.0 * u @ v.T + 1e-5 * torch.randn(out, inp, generator=g)
