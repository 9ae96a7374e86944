"""The base of every pruning method: the event calendar, the per-event loop, the cut of one layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune.nn.split_cost import SplitRule
from rmtprune.nn.surgery import apply_rank
from rmtprune.prune.calendar import EventCalendar
from rmtprune.prune.events import (
    MOMENTUM_POLICIES,
    PruneEvent,
    check_state,
    is_real,
    record_replacement,
)


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
        if not (is_real(lr_factor) and lr_factor > 0):
            raise ValueError(f"lr_factor must be a positive finite number, got {lr_factor!r}")
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
        check_state(state)


# Failures of the linear algebra on one layer (no convergence, a NaN matrix): logged in the ledger and the
# layer left as it is. Anything else (CUDA out of memory, a device error) fails the run.
LINALG_ERRORS = (ValueError, np.linalg.LinAlgError, torch.linalg.LinAlgError)


def split_allowed(model: nn.Module, name: str, module: nn.Module, rank: int, rank_now: int,
                  split_rule: SplitRule | None, row: dict[str, Any]) -> bool:
    """Whether ``split_rule`` lets layer ``name`` be split at ``rank`` (its reason, if any, goes into the note)."""
    split_ok, why = split_rule.decide(model, name, module, rank) if split_rule and rank < rank_now else (True, "")
    if why:
        row["note"] = f"{row['note']}; {why}" if row.get("note") else why
    return split_ok


def cut_layer(model: nn.Module, name: str, module: nn.Module, rank: int, rank_now: int, svd: Any, truncate: bool,
              ranks: dict[str, int], event: PruneEvent, row: dict[str, Any],
              split_rule: SplitRule | None = None) -> None:
    """Bring layer ``name`` to ``rank`` (surgery.apply_rank) and record it: a split (where ``split_rule``
    allows it; its reason otherwise goes into the note) replaces the layer in ``model`` (its parameters
    listed as replaced, the factors as added), a truncation overwrites its weight in place (replaced) and
    its rank goes into ``ranks``; ``row`` gets the action, the rank and the counts (``skip_svd_failed``
    when the linear algebra fails)."""
    split_ok = split_allowed(model, name, module, rank, rank_now, split_rule, row)
    try:
        result = apply_rank(module, rank, rank_now, svd, truncate=truncate, split_ok=split_ok)
    except LINALG_ERRORS as exc:
        row.update(action="skip_svd_failed", note=f"SVD failed: {exc}")
        return
    if result.action == "split":
        model.set_submodule(name, result.module)
        record_replacement(event, module, result.module)
        ranks.pop(name, None)
    elif result.action == "truncate":
        event.replaced.extend(module.parameters())
        ranks[name] = result.rank_after
    row.update(action=result.action, rank_after=result.rank_after, params_before=result.params_before,
               params_after=result.params_after)
