"""``pruning=lowrank``: a low-rank cut without RMT, ranks chosen by energy or uniformly to meet a budget."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from torch import nn

from rmtprune.nn.geometry import count_parameters, layer_matrix_shape, split_weight_count
from rmtprune.prune.base import CALENDAR_KEYS, LAYER_KEYS, LINALG_ERRORS, SELECT_KEYS
from rmtprune.prune.budget import TARGET_KEYS, TargetPruner, _bisect, dense_param_count
from rmtprune.prune.params import OneOf, check_params
from rmtprune.prune.rank import RANK_KEYS, Layer, Plan, RankPruner

log = logging.getLogger(__name__)

RANK_RULES = ("energy", "uniform")  # pruning.rank_rule


class LowRankPruner(TargetPruner, RankPruner):
    """``pruning=lowrank``: rank cuts without random-matrix theory, on the cubic schedule to ``target_params``
    (see the module docstring of :mod:`rmtprune.prune.budget` for the rank rules and how theta is solved).

    Args:
        rank_rule: ``"energy"`` or ``"uniform"``.
        other arguments: as :class:`rmtprune.prune.rank.RankPruner` (rank floors, truncation, split) and
            :class:`rmtprune.prune.budget.TargetPruner` (the target, which layers, the calendar).
    """

    name = "lowrank"
    config_keys = (*CALENDAR_KEYS, *SELECT_KEYS, *RANK_KEYS, *TARGET_KEYS, "rank_rule", *LAYER_KEYS, "split")
    _parameter_constraints = {"rank_rule": OneOf(RANK_RULES)}
    _skips_first = True

    def __init__(self, target_params: int, *, rank_rule: str = "energy", **kwargs: Any) -> None:
        super().__init__(target_params, **kwargs)
        check_params(type(self), rank_rule=rank_rule)
        self.rank_rule = rank_rule

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

    def rank_for(self, theta: float, s2_share: np.ndarray, layer: Layer) -> int:
        """The rule's rank at theta, clamped to [floor, current rank]. ``s2_share``: cumulative share of sum s_i^2."""
        if self.rank_rule == "energy":
            r = int(np.searchsorted(s2_share, theta, side="left")) + 1
        else:
            r = math.ceil(theta * layer.p - 1e-12)
        return min(layer.rank, max(layer.floor, r))

    def event_context(self, model: nn.Module, epoch: int) -> tuple[int, int]:
        return epoch, count_parameters(model)

    def plan_ranks(self, layers: list[Layer], context: tuple[int, int]) -> list[Plan]:
        """Every layer cut to the rule's rank at the one theta that brings the model nearest the event's budget
        P_j (bisection, the counts from the layers' shapes: :meth:`RankPruner.cut_params`); after the target
        epoch, nothing (the ranks the last scheduled event left)."""
        epoch, total = context
        if self.reached(epoch):  # no SVD, no new cut
            note = f"target reached (pruning.target_epoch={self.target_epoch})"
            return [Plan(row=dict(action="keep", note=note)) for _ in layers]
        plans: dict[str, Plan] = {}
        cut = []  # (layer, cumulative share of the energy)
        for layer in layers:
            try:
                s = layer.spectrum()
            except LINALG_ERRORS as exc:
                plans[layer.name] = Plan(row=dict(action="skip_svd_failed", note=f"SVD failed: {exc}"))
                continue
            energy = np.cumsum(s ** 2)
            cut.append((layer, energy / energy[-1] if energy[-1] > 0 else np.ones(layer.p)))
        others = total - sum(layer.params for layer, _ in cut)

        def count(theta: float) -> int:
            return others + sum(self.cut_params(layer, self.rank_for(theta, share, layer)) for layer, share in cut)

        goal = self.budget(epoch)
        theta = _bisect(count, goal)
        what = "energy share eta" if self.rank_rule == "energy" else "rank fraction"
        j, n_events, _ = self.progress(epoch)
        reached = count(theta)
        note = f"{what} {theta:.6f}; budget {goal:,} (event {j} of {n_events}), reached {reached:,}"
        if j == n_events and abs(reached - goal) > 0.01 * goal:
            log.warning("pruning=lowrank: the nearest count rank_rule=%s reaches is %s, %.1f%% from the target %s "
                        "(one rank of a layer costs in + out parameters)", self.rank_rule, f"{reached:,}",
                        100 * abs(reached - goal) / goal, f"{goal:,}")
        for layer, share in cut:
            plans[layer.name] = Plan(self.rank_for(theta, share, layer), dict(keep_fraction=theta, note=note),
                                     spectrum=layer.spectrum())
        return [plans[layer.name] for layer in layers]
