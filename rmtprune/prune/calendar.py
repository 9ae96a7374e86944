"""The event calendar (which epochs end with a pruning event) and the final lr anneal on top of it.

The final anneal (``optimizer.anneal``, :func:`anneal_scale`) multiplies the calendar's lr step by step
over the last epochs of a run; it depends on the epoch and the batch only, so it is the same in every arm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rmtprune.prune.events import is_count


class EventCalendar:
    """Event epochs e = start_epoch, start_epoch + every, ... up to stop_epoch (None: no end).

    Events happen after an epoch's training and never after the last epoch of a run (the saved model is
    the evaluated one): :meth:`events` lists those of a run of ``epochs`` epochs.
    """

    def __init__(self, every: int = 1, start_epoch: int = 1, stop_epoch: int | None = None) -> None:
        for name, value in (("every", every), ("start_epoch", start_epoch), ("stop_epoch", stop_epoch)):
            if not (is_count(value, 1) or (name == "stop_epoch" and value is None)):
                raise ValueError(f"{name} must be an integer >= 1{' or None' if name == 'stop_epoch' else ''}, "
                                 f"got {value!r}")
        if stop_epoch is not None and stop_epoch < start_epoch:
            raise ValueError(f"stop_epoch={stop_epoch} is before start_epoch={start_epoch}: no event would happen")
        self.every, self.start_epoch, self.stop_epoch = int(every), int(start_epoch), stop_epoch

    def is_event(self, epoch: int) -> bool:
        if epoch < self.start_epoch or (self.stop_epoch is not None and epoch > self.stop_epoch):
            return False
        return (epoch - self.start_epoch) % self.every == 0

    def events(self, epochs: int) -> list[int]:
        """The event epochs of a run of ``epochs`` epochs (all < epochs)."""
        return [e for e in range(1, int(epochs)) if self.is_event(e)]


def anneal_factor(shape: str, u: float) -> float:
    """The anneal's multiplier of the calendar lr at the fraction ``u`` in [0, 1) of its steps done:
    cosine 0.5 (1 + cos(pi u)), linear 1 - u, none 1."""
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * u))
    return 1.0 - u if shape == "linear" else 1.0


def anneal_scale(shape: str, anneal_epochs: int, epochs: int, epoch: int,
                 n_batches: int) -> Callable[[int], float] | None:
    """Multiplier of the calendar lr at batch b (from 0) of ``epoch`` (from 1) of a run of ``epochs``:
    ``anneal_factor(shape, t / T)`` with t = (epoch - (epochs - anneal_epochs) - 1) n_batches + b the step
    within the last ``anneal_epochs`` epochs and T = anneal_epochs n_batches (1 at the window's first
    step, 1/T (linear) or ~(pi/T)^2/4 (cosine) at the run's last); None before the window or for none."""
    before = int(epochs) - int(anneal_epochs)
    if shape == "none" or epoch <= before:
        return None
    total = int(anneal_epochs) * int(n_batches)
    done = (epoch - before - 1) * int(n_batches)
    return lambda b: anneal_factor(shape, (done + b) / total)
