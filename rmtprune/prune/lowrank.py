"""``pruning=lowrank``: a low-rank cut without RMT, ranks chosen by energy or uniformly to meet a budget."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune.nn.geometry import (
    count_parameters,
    layer_groups,
    layer_matrix_shape,
    param_count,
    split_weight_count,
    weight_count,
)
from rmtprune.nn.layers import LOW_RANK_TYPES
from rmtprune.nn.select import select_layers, selected
from rmtprune.nn.split_cost import SplitRule
from rmtprune.nn.surgery import layer_svd
from rmtprune.prune.base import LINALG_ERRORS, cut_layer
from rmtprune.prune.budget import RANK_RULES, TargetPruner, _bisect, dense_param_count
from rmtprune.prune.events import PruneEvent, check_state, ledger_row

log = logging.getLogger(__name__)


class LowRankPruner(TargetPruner):
    """``pruning=lowrank``: rank cuts without random-matrix theory, on the cubic schedule to ``target_params``
    (see the module docstring for the rank rules and how theta is solved).

    Args:
        rank_rule: ``"energy"`` or ``"uniform"``.
        min_rank: never cut a layer below this rank.
        output_min_rank: the output layer's rank floor (None: its number of outputs).
        truncate: a layer whose split would not save parameters is truncated in place (True) or left.
        split, batch_size, example_input: when a cut may split a layer (as :class:`rmtprune.RMTPruner`).
        other arguments: as :class:`TargetPruner`.
    """

    name = "lowrank"

    def __init__(self, target_params: int, *, rank_rule: str = "energy", min_rank: int = 1,
                 output_min_rank: int | None = None, truncate: bool = True, split: str = "always",
                 batch_size: int | None = None, example_input: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(target_params, **kwargs)
        self.split_rule = SplitRule(split, batch_size, example_input)
        if rank_rule not in RANK_RULES:
            raise ValueError(f"rank_rule must be one of {', '.join(RANK_RULES)}, got {rank_rule!r}")
        if not isinstance(min_rank, (int, np.integer)) or min_rank < 1:
            raise ValueError(f"min_rank must be an integer >= 1, got {min_rank!r}")
        if output_min_rank is not None and (not isinstance(output_min_rank, (int, np.integer)) or output_min_rank < 1):
            raise ValueError(f"output_min_rank must be a positive integer or None, got {output_min_rank!r}")
        self.rank_rule, self.min_rank, self.output_min_rank = rank_rule, int(min_rank), output_min_rank
        self.truncate = bool(truncate)
        self.ranks: dict[str, int] = {}  # rank of the layers truncated in place

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": dict(self.ranks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state)
        self.ranks = {str(k): int(v) for k, v in state.get("ranks", {}).items()}

    def floor(self, module: nn.Module, is_output: bool) -> int:
        """The layer's rank floor: min_rank (the output layer: at least output_min_rank, default its number of
        outputs), at most p."""
        out, m = layer_matrix_shape(module)
        floor = self.min_rank
        if is_output:
            floor = max(floor, int(self.output_min_rank if self.output_min_rank is not None else out))
        return min(floor, out, m)

    def bounds(self, model: nn.Module) -> tuple[int, int]:
        """Dense count P_0, and P_0 less what every eligible layer saves at its rank floor (split when that
        is smaller than the dense layer)."""
        dense = dense_param_count(model)
        low = dense
        for name, module, is_output in self.eligible(model):
            out, m = layer_matrix_shape(module)
            floor = self.floor(module, is_output)
            if self.split_rule.decide(model, name, module, floor)[0]:
                low -= max(0, out * m - split_weight_count(module, floor))
        return low, dense

    def floor_reason(self) -> str:
        return "every eligible layer cut to its rank floor, pruning.min_rank and pruning.output_min_rank"

    def current_rank(self, name: str, module: nn.Module) -> int:
        out, m = layer_matrix_shape(module)
        p = min(out, m)
        if isinstance(module, LOW_RANK_TYPES):
            return min(module.rank * layer_groups(module), p)
        return min(self.ranks.get(name, p), p)

    def rank_for(self, theta: float, s2_share: np.ndarray, p: int, floor: int, now: int) -> int:
        """The rule's rank at theta, clamped to [floor, now]. ``s2_share``: cumulative share of sum s_i^2."""
        if self.rank_rule == "energy":
            r = int(np.searchsorted(s2_share, theta, side="left")) + 1
        else:
            r = math.ceil(theta * p - 1e-12)
        return min(now, max(floor, r))

    def params_at(self, model: nn.Module, name: str, module: nn.Module, rank: int, now: int) -> int:
        """Layer ``name``'s parameter count after the cut to ``rank`` (``cut_layer``; without doing it)."""
        before = param_count(module)
        if rank >= now:
            return before
        if isinstance(module, LOW_RANK_TYPES) or (split_weight_count(module, rank) < weight_count(module)
                                                  and self.split_rule.decide(model, name, module, rank)[0]):
            bias = module.bias.numel() if module.bias is not None else 0
            return split_weight_count(module, rank) + bias
        return before

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        """Cut every eligible layer to the rule's rank at the theta that brings the model nearest the
        event's budget P_j; ledger rows with actions split / truncate / keep (skip_no_saving when
        ``truncate=False``, skip_small, skip_svd_failed)."""
        event = PruneEvent(epoch)
        goal = self.budget(epoch)
        eligible = {id(m) for _, m, _ in self.eligible(model)}
        all_layers = [(n, m) for n, m, _ in select_layers(model)]
        if self.reached(epoch):  # no SVD, no new cut: the ranks stay as the last scheduled event left them
            for name, module in all_layers:
                if id(module) in eligible:
                    now = self.current_rank(name, module)
                    event.records.append(ledger_row(name, module, epoch=epoch, action="keep", rank_before=now,
                                                    rank_after=now, note=f"target reached (pruning.target_epoch="
                                                    f"{self.target_epoch})"))
            return event
        layers = []  # (name, module, is_output, svd, share, p, floor, now, t_svd)
        for i, (name, module) in enumerate(all_layers):
            is_output = i == len(all_layers) - 1
            if id(module) not in eligible:
                if not (is_output and not self.include_output_layer) and selected(name, self.include, self.exclude):
                    o, m = layer_matrix_shape(module)
                    event.records.append(ledger_row(name, module, epoch=epoch, action="skip_small", seconds=0.0,
                                                    note=f"{o * m} weights < min_size {self.min_size}"))
                continue
            out, m = layer_matrix_shape(module)
            p, now = min(out, m), self.current_rank(name, module)
            t0 = time.perf_counter()
            try:
                svd = layer_svd(module)
            except LINALG_ERRORS as exc:
                event.records.append(ledger_row(name, module, epoch=epoch, action="skip_svd_failed",
                                                rank_before=now, rank_after=now, note=f"SVD failed: {exc}"))
                continue
            s = np.zeros(p)
            vals = svd[1].double().cpu().numpy()[:p]
            s[: vals.size] = vals
            event.spectra[name] = s.astype(np.float32)
            energy = np.cumsum(s ** 2)
            share = energy / energy[-1] if energy[-1] > 0 else np.ones(p)
            layers.append((name, module, is_output, svd, share, p, self.floor(module, is_output), now,
                           time.perf_counter() - t0))
        others = count_parameters(model) - sum(param_count(L[1]) for L in layers)

        def count(theta: float) -> int:
            return others + sum(self.params_at(model, name, mod, self.rank_for(theta, share, p, floor, now), now)
                                for name, mod, _, _, share, p, floor, now, _ in layers)

        theta = _bisect(count, goal)
        what = "energy share eta" if self.rank_rule == "energy" else "rank fraction"
        j, n_events, _ = self.progress(epoch)
        reached = count(theta)
        note = f"{what} {theta:.6f}; budget {goal:,} (event {j} of {n_events}), reached {reached:,}"
        if j == n_events and abs(reached - goal) > 0.01 * goal:
            log.warning("pruning=lowrank: the nearest count rank_rule=%s reaches is %s, %.1f%% from the target %s "
                        "(one rank of a layer costs in + out parameters)", self.rank_rule, f"{reached:,}",
                        100 * abs(reached - goal) / goal, f"{goal:,}")
        for name, module, is_output, svd, share, p, floor, now, t_svd in layers:
            t0 = time.perf_counter()
            rank = self.rank_for(theta, share, p, floor, now)
            row = ledger_row(name, module, epoch=epoch, keep_fraction=theta, rank_before=now, rank_after=now,
                             note=note)
            cut_layer(model, name, module, rank, now, svd, self.truncate, self.ranks, event, row, self.split_rule)
            row.update(seconds=t_svd + time.perf_counter() - t0)
            event.records.append(row)
        return event
