"""The base of the rank arms (``rmt``, ``lowrank``): the plan decides, the base applies.

At an event :meth:`RankPruner.step` runs one loop for every arm:

1. the layers the pruner looks at (``LayerPruner.candidates``: the one rule of eligibility); a layer that
   is not eligible gets a ``skip_small`` row;
2. for each eligible layer a :class:`Layer`: its current rank (a split layer's inner rank, a truncated
   layer's rank from the pruner's ``ranks``, else p = min(out, m)), its rank floor, and its singular values
   on demand (:meth:`Layer.spectrum`: one decomposition per layer, reused by the cut);
3. the arm's :meth:`RankPruner.plan_ranks`, side-effect free: a :class:`Plan` per layer (the rank to cut to,
   or None; ledger fields; the arm's per-layer state after the event);
4. the cut (``base.cut_layer``: split, truncation in place, or nothing), the state and the ledger row.

:meth:`RankPruner.preview` runs the same loop without the cut (singular values only, no vectors).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune.nn.geometry import layer_groups, layer_matrix_shape, param_count, planned_params, split_params
from rmtprune.nn.layers import LOW_RANK_TYPES
from rmtprune.nn.split_cost import SPLITS, SplitRule
from rmtprune.nn.surgery import SVD, layer_matrix, layer_svd, rank_action
from rmtprune.prune.base import LayerPruner, cut_layer, split_allowed
from rmtprune.prune.events import PruneEvent, check_state, ledger_row
from rmtprune.prune.params import Flag, Integer, OneOf, check_params
from rmtprune.rmt import singular_values

RANK_KEYS = ("min_rank", "output_min_rank", "truncate")  # config keys of the rank floors and the form of a cut


@dataclass
class Layer:
    """One eligible layer at an event, as :meth:`RankPruner.plan_ranks` reads it."""

    model: nn.Module
    name: str
    module: nn.Module
    is_output: bool
    rank: int    # its rank now
    floor: int   # the lowest rank it may be cut to (at most p)
    row: dict[str, Any]
    exact: bool = True  # whether spectrum() also keeps the singular vectors (the event cuts)
    svd: SVD | None = None
    seconds: float = 0.0
    announce: Callable[[str, nn.Module], None] | None = None
    _values: np.ndarray | None = field(default=None, repr=False)

    @cached_property
    def shape(self) -> tuple[int, int]:
        """(out, m) of the layer's matrix."""
        return layer_matrix_shape(self.module)

    @property
    def p(self) -> int:
        return min(self.shape)

    @cached_property
    def params(self) -> int:
        """Its parameter count now."""
        return param_count(self.module)

    def spectrum(self) -> np.ndarray:
        """Its p singular values, descending, zero-padded to p (float64): the thin SVD, kept for the cut, when
        the event cuts or the layer is split (through QR of its factors), else the values alone
        (``rmt.singular_values``). Computed once; a failure of the linear algebra propagates."""
        if self._values is None:
            self.start()
            t0 = time.perf_counter()
            if self.exact or isinstance(self.module, LOW_RANK_TYPES):
                self.svd = layer_svd(self.module)
                vals = self.svd[1].double().cpu().numpy()[: self.p]
            else:
                vals = singular_values(layer_matrix(self.module))[: self.p]
            s = np.zeros(self.p)
            s[: vals.size] = vals
            self._values = s
            self.seconds += time.perf_counter() - t0
        return self._values

    def start(self) -> None:
        """Report the layer to the progress callback, once."""
        if self.announce is not None:
            self.announce(self.name, self.module)
            self.announce = None


@dataclass
class Plan:
    """An arm's decision for one layer: cut to ``rank`` (None: leave it; ``row`` says why), the ledger
    fields it adds, its per-layer state after the event (``{attribute: value}``, e.g.
    ``{"known_spikes": 3}``), and the spectrum to record (None: none)."""

    rank: int | None = None
    row: dict[str, Any] = field(default_factory=dict)
    state: dict[str, int] = field(default_factory=dict)
    spectrum: np.ndarray | None = None


class RankPruner(LayerPruner):
    """Base of the arms that cut layers to a lower rank (``surgery.apply_rank``). A subclass writes
    :meth:`plan_ranks` (and, where it needs them, :meth:`event_context` and :meth:`row_fields`).

    Args:
        min_rank: never cut a layer below this rank.
        output_min_rank: the output layer's rank floor (None: its number of outputs).
        truncate: a layer whose split would not save parameters is truncated in place (True) or left.
        split: ``"always"``, ``"auto"`` (only where ``rmtprune.nn.split_cost`` finds the split cheaper at
            ``batch_size`` on ``example_input``) or ``"never"`` (truncate in place).
        other arguments: as :class:`rmtprune.prune.base.LayerPruner`.
    """

    _STATE: tuple[str, ...] = ("ranks",)  # what state_dict holds: per-layer dicts of ints
    _skips_first = False  # the ledger lists the skip_small rows before the others (lowrank's order since it began)
    _parameter_constraints = {"min_rank": Integer(1), "truncate": Flag(), "split": OneOf(SPLITS),
                              "output_min_rank": Integer(1, none=True, text="a positive integer")}

    def __init__(self, *, min_rank: int = 1, output_min_rank: int | None = None, truncate: bool = True,
                 split: str = "always", batch_size: int | None = None, example_input: torch.Tensor | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_params(type(self), min_rank=min_rank, output_min_rank=output_min_rank, truncate=truncate, split=split)
        self.min_rank, self.output_min_rank, self.truncate = int(min_rank), output_min_rank, bool(truncate)
        self.split_rule = SplitRule(split, batch_size, example_input)
        self.ranks: dict[str, int] = {}  # rank of the layers truncated in place

    # --- what an arm writes ------------------------------------------------------------------------
    def plan_ranks(self, layers: list[Layer], context: Any) -> list[Plan]:
        """One :class:`Plan` per layer of ``layers`` (the eligible layers, in module order), without side
        effects: nothing of the model or of this pruner changes (the base applies the plans)."""
        raise NotImplementedError

    def event_context(self, model: nn.Module, epoch: int) -> Any:
        """What the plans of the event after ``epoch`` share, computed once per event (default: ``epoch``)."""
        return epoch

    def row_fields(self, module: nn.Module, rank: int, context: Any) -> dict[str, Any]:
        """Ledger fields of every row of the event, eligible or not (default: none)."""
        return {}

    # --- the shared pieces ------------------------------------------------------------------------
    def current_rank(self, name: str, module: nn.Module) -> int:
        """The layer's rank now: a split layer's inner rank (times its groups), a layer truncated in place its
        rank in ``ranks``, else p = min(out, m)."""
        p = min(layer_matrix_shape(module))
        if isinstance(module, LOW_RANK_TYPES):
            return min(module.rank * layer_groups(module), p)
        return min(self.ranks.get(name, p), p)

    def floor(self, module: nn.Module, is_output: bool) -> int:
        """The layer's rank floor: min_rank (the output layer: at least output_min_rank, default its number of
        outputs), at most p."""
        out, m = layer_matrix_shape(module)
        floor = self.min_rank
        if is_output:
            floor = max(floor, int(self.output_min_rank if self.output_min_rank is not None else out))
        return min(floor, out, m)

    def cut_params(self, layer: Layer, rank: int) -> int:
        """The layer's parameter count after a cut to ``rank`` (as ``cut_layer`` would leave it; nothing is cut),
        from its shape: r (groups m + out) + bias when it is split, its count now otherwise."""
        if rank >= layer.rank:
            return layer.params
        out, m = layer.shape
        groups = layer_groups(layer.module)
        bias = layer.module.bias.numel() if layer.module.bias is not None else 0
        if isinstance(layer.module, LOW_RANK_TYPES) or (
                split_params(out, m, rank, groups) < out * m
                and self.split_rule.decide(layer.model, layer.name, layer.module, rank)[0]):
            return split_params(out, m, rank, groups, bias)
        return layer.params

    def state_dict(self) -> dict[str, Any]:
        """What the pruner learned about the model, for a checkpoint: ``{key: {layer: int}}`` for each key
        of ``_STATE`` (``ranks``: the rank of each layer truncated in place). Plain ints, ``torch.save`` /
        ``weights_only`` safe; the constructor arguments are not included."""
        return {key: dict(getattr(self, key)) for key in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a missing entry: empty); replaces what this pruner learned (the model is
        not touched)."""
        check_state(state)
        for key in self._STATE:
            setattr(self, key, {str(k): int(v) for k, v in state.get(key, {}).items()})

    # --- the event --------------------------------------------------------------------------------
    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        """Plan and cut every eligible layer of ``model`` (see the module docstring); returns the event (ledger
        rows, replaced and added parameters, spectra). Modifies ``model`` in place and this pruner's state."""
        return self._event(model, epoch, apply=True)

    def preview(self, model: nn.Module, epoch: int,
                each: Callable[[str, nn.Module], None] | None = None) -> PruneEvent:
        """What :meth:`step` would do, without the cut: the same ledger rows and spectra, from the singular values
        alone. ``model`` is not modified (this pruner's state is, as by step). ``each(name, module)`` is
        called before each layer (a progress display)."""
        return self._event(model, epoch, apply=False, each=each)

    def _event(self, model: nn.Module, epoch: int, apply: bool,
               each: Callable[[str, nn.Module], None] | None = None) -> PruneEvent:
        event = PruneEvent(epoch)
        context = self.event_context(model, epoch)
        rows, layers = [], []
        for name, module, is_output, why_not in self.candidates(model):
            rank = self.current_rank(name, module)
            row = ledger_row(name, module, epoch=epoch, **self.row_fields(module, rank, context))
            rows.append(row)
            if why_not:
                if each is not None:
                    each(name, module)
                row.update(action="skip_small", note=why_not, seconds=0.0)
                continue
            row.update(rank_before=rank, rank_after=rank)
            layers.append(Layer(model, name, module, is_output, rank, self.floor(module, is_output), row,
                                exact=apply, announce=each))
        t0 = time.perf_counter()
        plans = self.plan_ranks(layers, context)
        # the planning time beyond the decompositions, shared by the layers
        shared = (time.perf_counter() - t0 - sum(layer.seconds for layer in layers)) / max(len(layers), 1)
        for layer, plan in zip(layers, plans):
            layer.start()
            t0 = time.perf_counter()
            layer.row.update(plan.row)
            for key, value in plan.state.items():
                getattr(self, key)[layer.name] = value
            if plan.spectrum is not None:
                event.spectra[layer.name] = np.asarray(plan.spectrum, dtype=np.float32)
            if plan.rank is not None and apply:
                cut_layer(model, layer.name, layer.module, plan.rank, layer.rank, layer.svd, self.truncate,
                          self.ranks, event, layer.row, self.split_rule)
            elif plan.rank is not None:
                self._preview_cut(layer, plan.rank)
            layer.row.update(seconds=layer.seconds + shared + time.perf_counter() - t0)
        if self._skips_first:
            rows.sort(key=lambda row: row["action"] != "skip_small")  # stable: module order within each part
        event.records.extend(rows)
        return event

    def _preview_cut(self, layer: Layer, rank: int) -> None:
        """The row :func:`cut_layer` would leave, from the shapes alone."""
        split_ok = split_allowed(layer.model, layer.name, layer.module, rank, layer.rank, self.split_rule, layer.row)
        action = rank_action(layer.module, rank, layer.rank, truncate=self.truncate, split_ok=split_ok)
        layer.row.update(action=action, rank_after=rank if action in ("split", "truncate") else layer.rank,
                         params_after=planned_params(layer.module, rank, action))
