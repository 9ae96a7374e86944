"""Keep fraction f(e) of the sub-edge singular values at a pruning event after epoch e.

At an event the target rank is r = k + floor((p - k) * f(e)), k the number of spikes above the
MP edge and p = min(out, in): f = 1 keeps every value, f = 0 keeps only the spikes (or
ceil(margin * k) values with a ``margin``, see :func:`target_rank`).

``spikes`` (:class:`SpikeCut`) is no function of the epoch: it decides per layer, from the layer's
spike counts over the events (``RMTPruner`` keeps them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from rmtprune.prune.params import Interval, ParamError

if TYPE_CHECKING:  # importing rmtprune (the Python API) must not import the config machinery
    pass


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


MIN_PATIENCE = 1   # schedule=spikes: events without a new spike before the cut


MIN_MARGIN = 1.0   # pruning.margin: a cut to the spikes never keeps fewer than the spikes


@dataclass(frozen=True)
class SpikeCut:
    """The spike-count cut: a layer keeps every value (f = 1) while its spike count k grows, and is cut
    to its spikes (f = 0: r = k, or ceil(margin k)) at the event where k has not grown for ``patience``
    events in a row; it keeps that rank at every later event. Events with a bad fit do not count.

    Raises:
        ValueError: ``patience`` not an integer >= MIN_PATIENCE.
    """

    patience: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < MIN_PATIENCE:
            raise ValueError(f"patience must be an integer >= {MIN_PATIENCE} (events without a new spike before "
                             f"the cut), got {self.patience!r}")


MARGIN = Interval(MIN_MARGIN, none=True,
                  text=f"a number >= {MIN_MARGIN} (a cut to the spikes keeps ceil(margin * k) values)")


def check_margin(margin: float | None) -> None:
    """Raise ValueError (:class:`rmtprune.prune.params.ParamError`) unless ``margin`` is None or a number >= MIN_MARGIN."""
    if not MARGIN.ok(margin):
        raise ParamError("margin", margin, MARGIN.text)


SCHEDULES: dict[str, Callable[..., Any]] = {
    "linear": linear, "step": step, "oneshot": oneshot, "exponential": exponential, "constant": constant,
    "spikes": SpikeCut,
}


def target_rank(p: int, n_spikes: int, keep_fraction: float, min_rank: int, margin: float | None = None) -> int:
    """r = k + floor((p - k) f), or r = ceil(margin k) when f = 0 and a margin is given; clamped to
    [min(min_rank, p), p]."""
    k = min(n_spikes, p)
    if margin is not None and keep_fraction == 0.0:
        r = math.ceil(margin * k - 1e-9)
    else:
        r = k + math.floor((p - k) * keep_fraction + 1e-9)
    return int(min(p, max(r, min(min_rank, p))))
