"""What every pruning method shares: the event calendar, the event record, the optimizer rebuild.

A *pruner* acts between epochs, at the epochs of its calendar (``every``, ``start_epoch``,
``stop_epoch``), and never after the last epoch of a run. At every event epoch the training loop
multiplies the learning rate by ``lr_factor`` and rebuilds the optimizer with the ``momentum``
policy, whether or not the event changed the model: the learning-rate calendar is the same for
every arm that shares the calendar (``pruning=control`` is that calendar without pruning).

:class:`Pruner` is the base of all of them (:class:`NoPruner`, :class:`ControlPruner`, and the
pruning methods in ``pruner.py`` and ``baselines.py``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

MOMENTUM_POLICIES = ("reset", "keep")


@dataclass
class PruneEvent:
    """One event: the ledger rows (one per layer looked at) and the parameters it replaced.

    Attributes:
        epoch: the epoch after which the event happened.
        records: ledger rows (``pruner.LEDGER_COLUMNS``), one per eligible layer.
        replaced: parameters that left the model or whose values were overwritten (their optimizer
            state is stale).
        added: parameters the event put into the model (new factors).
        spectra: layer name -> singular values (descending, float32) of every fitted layer.
    """

    epoch: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    replaced: list[nn.Parameter] = field(default_factory=list)
    added: list[nn.Parameter] = field(default_factory=list)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether the event changed the model (a layer split, truncated or masked)."""
        return bool(self.replaced or self.added)

    @property
    def touched(self) -> set[int]:
        """ids of the replaced and added parameters."""
        return {id(p) for p in (*self.replaced, *self.added)}


class EventCalendar:
    """Event epochs e = start_epoch, start_epoch + every, ... up to stop_epoch (None: no end).

    Events happen after an epoch's training and never after the last epoch of a run (the saved model is
    the evaluated one): :meth:`events` lists those of a run of ``epochs`` epochs.
    """

    def __init__(self, every: int = 1, start_epoch: int = 1, stop_epoch: int | None = None) -> None:
        for name, value in (("every", every), ("start_epoch", start_epoch)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
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


class Pruner:
    """Base of every pruning method: a calendar, an lr factor, a momentum policy, and the number of training
    batches to recalibrate BatchNorm statistics on after an event that changed the model (``recalibrate_bn``,
    0: none), all three applied by the training loop (``rmtprune.recalibrate_bn`` does the last).

    Subclasses implement :meth:`step`; :meth:`setup` and :meth:`finalize` are hooks for methods that
    attach something to the model (masks) before training and make it permanent after.
    """

    name = "pruner"

    def __init__(self, *, every: int = 1, start_epoch: int = 1, stop_epoch: int | None = None,
                 lr_factor: float = 0.96, momentum: str = "reset", recalibrate_bn: int = 0) -> None:
        self.calendar = EventCalendar(every, start_epoch, stop_epoch)
        if isinstance(recalibrate_bn, bool) or not isinstance(recalibrate_bn, (int, np.integer)) or recalibrate_bn < 0:
            raise ValueError(f"recalibrate_bn must be a number of batches >= 0, got {recalibrate_bn!r}")
        self.recalibrate_bn = int(recalibrate_bn)
        if not (isinstance(lr_factor, (int, float)) and lr_factor > 0):
            raise ValueError(f"lr_factor must be a positive number, got {lr_factor!r}")
        if momentum not in MOMENTUM_POLICIES:
            raise ValueError(f"momentum must be one of {', '.join(MOMENTUM_POLICIES)}, got {momentum!r}")
        self.lr_factor = float(lr_factor)
        self.momentum = momentum
        self.epochs: int | None = None

    def is_event(self, epoch: int) -> bool:
        """Whether an event happens after ``epoch`` (and, once :meth:`setup` knows the run length,
        before its last epoch)."""
        if self.epochs is not None and epoch >= self.epochs:
            return False
        return self.calendar.is_event(epoch)

    def setup(self, model: nn.Module, epochs: int | None = None) -> None:
        """Called once before training (and again after a resume, so it must be idempotent), with the
        run length. The base class only records ``epochs``."""
        self.epochs = None if epochs is None else int(epochs)

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        raise NotImplementedError

    def finalize(self, model: nn.Module) -> None:
        """Called once after training, before the final model is saved (e.g. to make masks permanent)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class NoPruner(Pruner):
    """``pruning=none``: never an event, so a constant lr calendar."""

    name = "none"

    def __init__(self) -> None:
        super().__init__(lr_factor=1.0, momentum="keep")

    def is_event(self, epoch: int) -> bool:
        return False

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        return PruneEvent(epoch)


class ControlPruner(Pruner):
    """``pruning=control``: the events of the calendar change nothing, but the training loop applies the
    same lr factor and momentum policy at them as for a pruning arm with the same settings."""

    name = "control"

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        return PruneEvent(epoch)


def rebuild_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, event: PruneEvent | None = None, *,
                      momentum: str = "reset", lr: float | None = None) -> torch.optim.Optimizer:
    """A new optimizer of the same class and settings over ``model``'s current parameters.

    Does not modify ``optimizer`` or ``model``. The settings are those of the first parameter group
    (one group is assumed; extra groups are merged into it), ``lr`` replaces its learning rate.
    ``momentum="reset"`` starts every parameter's state afresh (SGD: zero momentum, as the reference
    does at every event); ``"keep"`` copies the state of every parameter the event did not replace or
    add (``event.touched``).
    """
    if momentum not in MOMENTUM_POLICIES:
        raise ValueError(f"momentum must be one of {', '.join(MOMENTUM_POLICIES)}, got {momentum!r}")
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    if lr is not None:
        group["lr"] = lr
    accepted = inspect.signature(type(optimizer).__init__).parameters
    new = type(optimizer)(model.parameters(), **{k: v for k, v in group.items() if k in accepted})
    new.param_groups[0].update({k: v for k, v in group.items() if k not in accepted})  # e.g. an lr scheduler's initial_lr
    if momentum == "keep":
        touched = event.touched if event is not None else set()
        for p in model.parameters():
            if id(p) not in touched and p in optimizer.state:
                new.state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in optimizer.state[p].items()}
    return new
