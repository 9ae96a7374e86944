"""``pruning=none`` (no event) and ``pruning=control`` (the rmt arm's events, lr factor and momentum policy,
nothing removed): the fair unpruned arm.
"""

from __future__ import annotations

from torch import nn

from rmtprune.prune.base import Pruner
from rmtprune.prune.events import PruneEvent


class NoPruner(Pruner):
    """``pruning=none``: never an event, so a constant lr calendar."""

    name = "none"
    config_keys = ("name",)

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
