"""Keep fraction f(e) of the sub-edge singular values at a pruning event after epoch e.

At an event the target rank is r = k + floor((p - k) * f(e)), k the number of spikes above the
MP edge and p = min(out, in): f = 1 keeps every value, f = 0 keeps only the spikes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # importing rmtprune (the Python API) must not import the config machinery
    from omegaconf import DictConfig

Schedule = Callable[[int], float]


def linear(epoch: int, horizon: float) -> float:
    """f(e) = max(0, 1 - e / horizon) (the paper: horizon 300)."""
    return max(0.0, 1.0 - epoch / horizon)


def step(epoch: int, at: int) -> float:
    """f(e) = 1 for e < at, 0 from ``at`` on."""
    return 1.0 if epoch < at else 0.0


def exponential(epoch: int, rate: float) -> float:
    """f(e) = rate ** e."""
    return float(rate) ** epoch


def oneshot(epoch: int) -> float:
    """f(e) = 0: only the spikes survive the first event."""
    return 0.0


def constant(epoch: int, value: float) -> float:
    """f(e) = value."""
    return float(value)


SCHEDULES: dict[str, Callable[..., float]] = {
    "linear": linear, "step": step, "oneshot": oneshot, "exponential": exponential, "constant": constant,
}


def make_schedule(cfg: DictConfig) -> Schedule:
    """The schedule named by ``cfg.name`` with its parameters from the config (config.SCHEDULE_KEYS)."""
    from functools import partial

    from .config import SCHEDULE_KEYS

    name = cfg.name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}")
    return partial(SCHEDULES[name], **{k: cfg[k] for k in SCHEDULE_KEYS[name] if k != "name"})


def target_rank(p: int, n_spikes: int, keep_fraction: float, min_rank: int) -> int:
    """r = k + floor((p - k) f), clamped to [min(min_rank, p), p]."""
    k = min(n_spikes, p)
    r = k + math.floor((p - k) * keep_fraction + 1e-9)
    return int(min(p, max(r, min(min_rank, p))))
