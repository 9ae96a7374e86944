"""The base of every pruning method (the event calendar, the lr factor and momentum policy), the base of those
that look at a model's layers (:class:`LayerPruner`: which layers, by the one rule of ``nn.select``), and the
cut of one layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune.nn.select import name_patterns, select_layers, too_small
from rmtprune.nn.split_cost import SplitRule
from rmtprune.nn.surgery import apply_rank
from rmtprune.prune.calendar import EventCalendar
from rmtprune.prune.events import MOMENTUM_POLICIES, PruneEvent, check_state, record_replacement
from rmtprune.prune.params import Constraint, Flag, Integer, Interval, OneOf, check_params

# the config keys (rmtprune/conf/pruning/*.yaml) of the event calendar, of which layers, and of what follows a cut
CALENDAR_KEYS = ("name", "every", "start_epoch", "stop_epoch", "lr_factor", "momentum")
SELECT_KEYS = ("min_size", "include_output_layer")
LAYER_KEYS = ("include", "exclude", "recalibrate_bn")


class Pruner:
    """Base of every pruning method: a calendar, an lr factor, a momentum policy, and the number of training
    batches to recalibrate BatchNorm statistics on after an event that changed the model (``recalibrate_bn``,
    0: none), all three applied by the training loop (``rmtprune.recalibrate_bn`` does the last).

    Subclasses implement :meth:`step`; :meth:`setup` and :meth:`finalize` are hooks for methods that
    attach something to the model (masks) before training and make it permanent after.
    """

    name = "pruner"
    config_keys: tuple[str, ...] = CALENDAR_KEYS  # its keys in a config's pruning group, in the config's order
    uses_schedule = False  # whether its keep fraction comes from the config's schedule group
    _parameter_constraints: dict[str, Constraint] = {
        "every": Integer(1), "start_epoch": Integer(1), "stop_epoch": Integer(1, none=True),
        "lr_factor": Interval(0, ends="()", text="positive and finite"),
        "momentum": OneOf(MOMENTUM_POLICIES), "recalibrate_bn": Integer(0, text="a number of batches >= 0"),
    }

    def __init__(self, *, every: int = 1, start_epoch: int = 1, stop_epoch: int | None = None,
                 lr_factor: float = 0.96, momentum: str = "reset", recalibrate_bn: int = 0) -> None:
        check_params(type(self), every=every, start_epoch=start_epoch, stop_epoch=stop_epoch)
        self.calendar = EventCalendar(every, start_epoch, stop_epoch)
        check_params(type(self), recalibrate_bn=recalibrate_bn, lr_factor=lr_factor, momentum=momentum)
        self.recalibrate_bn = int(recalibrate_bn)
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


class LayerPruner(Pruner):
    """Base of the methods that prune layers: which ones, by the one rule of :func:`rmtprune.nn.select.too_small`
    (a Linear / Conv2d, dense or split, of at least ``min_size`` weights and ``min_values`` singular values,
    selected by ``include`` / ``exclude``; the output layer only with ``include_output_layer``).

    Args:
        min_size: eligible layers have at least this many weight entries (out x in x kh x kw).
        include_output_layer: whether the last prunable layer (in module order) is pruned.
        include, exclude: ``fnmatch`` patterns of module names: only layers matching a pattern of ``include``
            (None: all) and none of ``exclude`` are pruned.
        every, start_epoch, stop_epoch, lr_factor, momentum, recalibrate_bn: as :class:`Pruner`.
    """

    min_values = 1  # the singular values a layer needs to be eligible (rmt: 10, for the MP fit)
    _parameter_constraints = {"min_size": Integer(0), "include_output_layer": Flag()}

    def __init__(self, *, min_size: int = 10000, include_output_layer: bool = True,
                 include: list[str] | None = None, exclude: list[str] | None = None, recalibrate_bn: int = 20,
                 **calendar: Any) -> None:
        super().__init__(recalibrate_bn=recalibrate_bn, **calendar)
        check_params(type(self), min_size=min_size, include_output_layer=include_output_layer)
        self.min_size, self.include_output_layer = int(min_size), bool(include_output_layer)
        self.include, self.exclude = name_patterns("include", include), name_patterns("exclude", exclude)

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module, bool, str]]:
        """(name, module, is_output, why not eligible: "" when eligible) of the layers this pruner looks at, in
        module order."""
        return [(name, module, is_output, too_small(module, self.min_size, self.min_values))
                for name, module, is_output in select_layers(model, self.include, self.exclude,
                                                             self.include_output_layer)]

    def eligible(self, model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
        """(name, module, is_output) of the layers this pruner cuts, in module order."""
        return [(name, module, is_output) for name, module, is_output, why in self.candidates(model) if not why]


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
