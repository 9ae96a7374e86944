"""What every pruning event leaves: the event record (:class:`PruneEvent`), the ledger schema
(``LEDGER_COLUMNS``, one row per layer), and the optimizer rebuilt around a changed model
(:func:`rebuild_optimizer`).

A *pruner* acts between epochs, at the epochs of its calendar (``every``, ``start_epoch``,
``stop_epoch``: :mod:`rmtprune.prune.calendar`), and never after the last epoch of a run. At every event
epoch the training loop multiplies the learning rate by ``lr_factor`` and rebuilds the optimizer with the
``momentum`` policy, whether or not the event changed the model: the learning-rate calendar is the same for
every arm that shares the calendar (``pruning=control`` is that calendar without pruning). The base of all
pruners is :class:`rmtprune.prune.base.Pruner`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from rmtprune.nn.geometry import is_conv, layer_matrix_shape, param_count

MOMENTUM_POLICIES = ("reset", "keep")


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite real number (a numpy scalar too; ``True`` is not a number here)."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def is_count(value: Any, low: int) -> bool:
    """Whether ``value`` is an integer (not a bool) >= ``low``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= low


def check_state(state: Any) -> None:
    """A pruner's ``load_state_dict`` argument must be a mapping (what ``state_dict`` returned)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"load_state_dict: state must be a dict, as state_dict() returns, got {type(state).__name__}")


@dataclass(repr=False)
class PruneEvent:
    """One event: the ledger rows (one per layer looked at) and the parameters it replaced.

    Attributes:
        epoch: the epoch after which the event happened.
        records: ledger rows (``pruner.LEDGER_COLUMNS``), one per eligible layer.
        replaced: parameters that left the model or whose values were overwritten (their optimizer
            state is stale).
        added: parameters the event put into the model (new factors).
        spectra: layer name -> singular values (descending, float32) of every fitted layer.
        origin: id of an added parameter -> the replaced parameter whose place it takes (a factor -> the
            layer's weight, the new bias -> its bias): :func:`rebuild_optimizer` puts it in that one's group.
    """

    epoch: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    replaced: list[nn.Parameter] = field(default_factory=list)
    added: list[nn.Parameter] = field(default_factory=list)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)
    origin: dict[int, nn.Parameter] = field(default_factory=dict, repr=False)

    @property
    def changed(self) -> bool:
        """Whether the event changed the model (a layer split, truncated or masked)."""
        return bool(self.replaced or self.added)

    @property
    def touched(self) -> set[int]:
        """ids of the replaced and added parameters."""
        return {id(p) for p in (*self.replaced, *self.added)}

    def summary(self) -> dict[str, Any]:
        """The event in numbers: ``{"epoch", "layers" (ledger rows), "params_before", "params_after"`` (summed
        over the layers looked at), ``"params_removed", "actions": {action: number of layers}}``."""
        before = sum(int(r["params_before"]) for r in self.records)
        after = sum(int(r["params_after"]) for r in self.records)
        actions: dict[str, int] = {}
        for r in self.records:
            actions[r["action"]] = actions.get(r["action"], 0) + 1
        return {"epoch": self.epoch, "layers": len(self.records), "params_before": before, "params_after": after,
                "params_removed": before - after, "actions": actions}

    def __repr__(self) -> str:
        s = self.summary()
        actions = ", ".join(f"{a}={n}" for a, n in s["actions"].items())
        return (f"PruneEvent(epoch={s['epoch']}, layers={s['layers']}"
                f"{', ' + actions if actions else ''}, params {s['params_before']:,} -> {s['params_after']:,})")


def record_replacement(event: PruneEvent, old: nn.Module, new: nn.Module) -> None:
    """Record in ``event`` that module ``new`` took the place of ``old``: old's parameters replaced, new's
    added, each new parameter's origin the old one of the same name (a split layer's factors, named
    ``first.weight``/``second.weight``, take the weight's place; the bias the bias's). ``new`` takes old's
    train/eval mode, and each new parameter its origin's ``requires_grad`` (a frozen layer stays frozen)."""
    before = dict(old.named_parameters())
    event.replaced.extend(before.values())
    new.train(old.training)
    for key, p in new.named_parameters():
        event.added.append(p)
        same = next(k for k in (key, key.rsplit(".", 1)[-1], "weight", *before) if k in before)
        event.origin[id(p)] = before[same]
        p.requires_grad_(before[same].requires_grad)


def rebuild_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, event: PruneEvent | None = None, *,
                      momentum: str = "reset", lr: float | None = None, lr_factor: float | None = None,
                      schedulers: Iterable[Any] = ()) -> torch.optim.Optimizer:
    """A new optimizer of the same class, settings and parameter groups over ``model``'s current parameters.

    Every parameter of ``model`` the old optimizer held stays in its group (frozen or not: a layer unfrozen
    later trains on); a parameter the event added (a split layer's factor) joins the group of the parameter
    it replaces (``event.origin``: the layer's weight, or its bias for the new bias), so per-group settings
    (e.g. ``weight_decay=0`` for biases and norms) carry over, unless it is frozen (the factors of a frozen
    layer inherit ``requires_grad=False``); parameters the optimizer did not hold stay out. Every group is
    kept, empty or not, so group indices (and a scheduler's ``base_lrs``) stay aligned.

    Learning rates: ``lr`` sets the first group's rate and scales every other group by the same ratio
    lr / lr_0; ``lr_factor`` multiplies every group's rate (give at most one). Each scheduler in
    ``schedulers`` (``torch.optim.lr_scheduler``; those a ``SequentialLR`` / ``ChainedScheduler`` wraps
    too) that drives ``optimizer`` is re-pointed at the new optimizer and its ``base_lrs``
    (and the groups' ``initial_lr``) scaled by the same per-group ratio, so its curve continues from the new
    rate (cosine annealing still ends at ``eta_min``). ``momentum="reset"`` starts every parameter's state
    afresh (SGD: zero momentum, as the reference does at every event); ``"keep"`` copies the state of every
    parameter the event did not replace or add (``event.touched``).

    Does not modify ``optimizer`` or ``model``; modifies the schedulers.
    """
    if momentum not in MOMENTUM_POLICIES:
        raise ValueError(f"momentum must be one of {', '.join(MOMENTUM_POLICIES)}, got {momentum!r}")
    if lr is not None and lr_factor is not None:
        raise ValueError("give lr= or lr_factor=, not both")
    old_groups = optimizer.param_groups
    if lr is not None:
        lr0 = old_groups[0]["lr"]
        ratios = [lr / lr0 if lr0 else 1.0 for _ in old_groups]
    else:
        ratios = [1.0 if lr_factor is None else float(lr_factor)] * len(old_groups)
    held = {id(p): g for g, group in enumerate(old_groups) for p in group["params"]}
    origin = event.origin if event is not None else {}
    params: list[list[nn.Parameter]] = [[] for _ in old_groups]
    for p in model.parameters():
        g = held.get(id(p), held.get(id(origin[id(p)])) if id(p) in origin else None)
        if g is not None and (id(p) in held or p.requires_grad):
            params[g].append(p)
    groups = []
    for g, (group, ratio) in enumerate(zip(old_groups, ratios)):
        settings = {k: v for k, v in group.items() if k != "params"}
        settings["lr"] = lr if (lr is not None and g == 0) else group["lr"] * ratio
        if "initial_lr" in settings:
            settings["initial_lr"] = group["initial_lr"] * ratio
        groups.append({"params": params[g], **settings})
    accepted = inspect.signature(type(optimizer).__init__).parameters
    new = type(optimizer)(groups, **{k: v for k, v in optimizer.defaults.items() if k in accepted and k != "params"})
    if momentum == "keep":
        touched = event.touched if event is not None else set()
        for p in model.parameters():
            if id(p) not in touched and p in optimizer.state:
                new.state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in optimizer.state[p].items()}
    for scheduler in _with_children(schedulers):
        if scheduler.optimizer is optimizer:
            scheduler.optimizer = new
            if hasattr(scheduler, "base_lrs"):  # ReduceLROnPlateau and the wrappers have none
                scheduler.base_lrs = [b * r for b, r in zip(scheduler.base_lrs, ratios)]
    return new


def _with_children(schedulers: Iterable[Any]) -> Iterable[Any]:
    """The schedulers and those they wrap (``SequentialLR``, ``ChainedScheduler``), depth first."""
    for scheduler in schedulers:
        yield scheduler
        yield from _with_children(getattr(scheduler, "_schedulers", ()))


LEDGER_COLUMNS = [
    "epoch", "layer", "kind", "out", "in", "gamma", "sigma2", "lambda_plus", "threshold", "n_spikes",
    "fit_error", "tolerance", "good_fit", "keep_fraction", "rank_before", "rank_after", "action",
    "params_before", "params_after", "n_censored", "n_known_spikes", "n_bulk", "seconds", "note",
    "recalibrate_bn",  # training batches the BatchNorm statistics were recomputed on after the event (empty: none)
]


# The ledger actions that changed a layer (metrics.csv's pruned_layers counts them).
PRUNING_ACTIONS = ("split", "truncate", "mask", "shrink")


def ledger_row(name: str, module: nn.Module, **values: Any) -> dict[str, Any]:
    """A ledger row for one layer with every column present (NaN where unknown)."""
    out, m = layer_matrix_shape(module)
    n_params = param_count(module)
    row: dict[str, Any] = {c: math.nan for c in LEDGER_COLUMNS}
    row.update(layer=name, kind="conv" if is_conv(module) else "linear", out=out, **{"in": m},
               params_before=n_params, params_after=n_params, good_fit=False, note="")
    row.update(values)
    return row
