"""Baselines at the same size as the RMT arm: gradual magnitude pruning, a low-rank cut without RMT, and
structured neuron pruning.

All run on the event calendar of ``pruning=rmt`` (the same loop, lr factor and momentum policy) and
reach a final parameter count T (``target_params``, or the final count of another run:
``target_from``, resolved by :mod:`rmtprune.targets`) on the cubic schedule of Zhu & Gupta (2017):
at the j-th of the J events of a run (``EventCalendar.events(epochs)``) the share of the way from the
dense count P_0 to T done is

    c_j = 1 - (1 - j / J)^3          (c_J = 1).

``target_epoch`` ends the schedule earlier: J counts only the events after epochs <= target_epoch, and the
later events of the calendar keep the count (c = 1; they still apply its lr factor and momentum policy),
so a baseline can reach its count when the run it is matched to reached its own (e.g. after epoch 5 for
rmt at horizon 5) instead of at the calendar's last event.

* :class:`MagnitudePruner` (``pruning=magnitude``): unstructured L1 magnitude pruning of the weights of
  every eligible layer, the sparsity of the E eligible weights s_j = s_f c_j, with ``torch.nn.utils.prune``
  masks that keep pruned weights at zero while training goes on; ``finalize`` makes them permanent.
  ``scope=global``: one magnitude threshold over all eligible weights (``prune.global_unstructured``),
  s_f = (P_0 - T) / E, so round(s_f E) = P_0 - T weights are zero at the last event (exact);
  ``scope=layer``: the same sparsity s_j in each layer (``prune.l1_unstructured``), each keeping at least
  one weight, s_f solved by bisection so that sum_l min(E_l - 1, round(s_f E_l)) is closest to P_0 - T.
  Its count is the number of non-zero parameters (``models.count_parameters``); storing a sparse layer
  in less memory than a dense one needs the indices of its non-zeros as well (not counted).
* :class:`LowRankPruner` (``pruning=lowrank``): the SVD truncation and split of ``pruning=rmt``
  (``surgery.apply_rank``), every eligible layer cut to a rank from one number theta in [0, 1] shared by
  all layers, solved by bisection at each event so that the model has P_j = P_0 - (P_0 - T) c_j
  parameters (the nearest count the ranks allow; at the last event P_J = T):

  - ``rank_rule=energy``: the smallest rank r with sum_{i<=r} s_i^2 >= theta sum_i s_i^2 (eta = theta);
  - ``rank_rule=uniform``: r = ceil(theta p), p = min(out, m) the layer's full rank;

  clamped to [floor, current rank] (ranks never grow back; floor = ``min_rank``, the output layer at
  least ``output_min_rank``, default its number of outputs; never above p). A layer whose cut saves
  nothing is truncated in place (``truncate``) as in rmt. The count moves in steps of one rank of one
  layer (in + out parameters; several layers at once when their steps coincide, e.g. the uniform rule
  on widths that divide each other), so the nearest count is within half such a step of P_j: within
  1% of T whenever a step is below 2% of T (a warning is logged at the last event otherwise).

* :class:`NeuronPruner` (``pruning=neuron``): structured pruning of the hidden units of an MLP (rows of
  layer l with their bias entries, and the matching columns of layer l + 1), ranked by the L2 norm of their
  incoming weights normalised per layer; the layers physically shrink (see the class docstring).

``match=trajectory`` replaces the cubic schedule by the matched run's own counts: the count after the j-th
event is ``target_trajectory[j - 1]``, the count ``target_from``'s run had after the same event (resolved
by :mod:`rmtprune.targets`), so both arms hold the same count at every epoch (within a rank / unit step).

Bad targets (``target_params`` above the dense count, below the smallest reachable count, or a run
without events) raise :class:`rmtprune.errors.UserError` naming the key, from :meth:`setup` (before
training) or from :func:`rmtprune.targets.check_target` (before any job starts).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from .errors import UserError
from .events import PruneEvent, Pruner, check_state, record_replacement
from .lowrank import LOW_RANK_TYPES
from .cost import SplitRule
from .models import ShrunkLinear, count_parameters, name_patterns, prunable_layers, select_layers, selected
from .pruner import LINALG_ERRORS, cut_layer, ledger_row
from .surgery import (keep_units, layer_groups, layer_matrix_shape, layer_svd, param_count, split_weight_count,
                      weight_count)
from .targets import check_target, resolve_target  # noqa: F401  (the training loop and the CLI call these)

SCOPES = ("global", "layer")
RANK_RULES = ("energy", "uniform")
MATCHES = ("final", "trajectory")  # pruning.match
BISECTION_STEPS = 60

log = logging.getLogger(__name__)


def cubic_progress(j: int, n_events: int) -> float:
    """c_j = 1 - (1 - j / J)^3: the share of the pruning done after the j-th of J events (c_0 = 0, c_J = 1)."""
    return 1.0 - (1.0 - j / n_events) ** 3


def dense_param_count(model: nn.Module) -> int:
    """The parameter count of the dense network ``model`` was made from: every entry of every parameter,
    a masked weight in full and a split layer as its dense out x m weight (plus its bias)."""
    total = 0
    for _, module in prunable_layers(model):
        if isinstance(module, LOW_RANK_TYPES):
            out, m = layer_matrix_shape(module)
            total += out * m - weight_count(module)
    return total + sum(p.numel() for p in model.parameters())


def _bisect(count: Callable[[float], int], goal: int) -> float:
    """The theta in [0, 1] whose ``count(theta)`` (non-decreasing) is nearest to ``goal`` (the larger on a tie)."""
    lo, hi = 0.0, 1.0
    if count(hi) <= goal:
        return hi
    if count(lo) >= goal:
        return lo
    for _ in range(BISECTION_STEPS):  # invariant: count(lo) < goal <= count(hi)
        mid = 0.5 * (lo + hi)
        if count(mid) < goal:
            lo = mid
        else:
            hi = mid
    return lo if goal - count(lo) < count(hi) - goal else hi


class TargetPruner(Pruner):
    """The part the baselines share: a target count, eligibility, the event index and the bound checks.

    Args:
        target_params: the final parameter count T (> 0).
        target_key: how the target is named in error messages (the config key it came from).
        min_size: eligible layers have at least this many weight entries (out x in x kh x kw).
        include_output_layer: whether the last prunable layer (in module order) is pruned.
        target_epoch: the schedule reaches the target at the last event after an epoch <= target_epoch
            (None: the calendar's last event); later events keep the count.
        match: ``"final"`` (the cubic schedule to ``target_params``) or ``"trajectory"``: the count after the
            j-th event is ``target_trajectory[j - 1]`` (the matched run's count after the same event).
        include, exclude: ``fnmatch`` patterns of module names: only layers matching a pattern of ``include``
            (None: all) and none of ``exclude`` are pruned.
        every, start_epoch, stop_epoch, lr_factor, momentum, recalibrate_bn: the event calendar and what the loop
            applies at an event (``events.Pruner``).
    """

    def __init__(self, target_params: int, *, target_key: str | None = None, min_size: int = 10000,
                 include_output_layer: bool = True, target_epoch: int | None = None, match: str = "final",
                 target_trajectory: list[int] | None = None, every: int = 1, start_epoch: int = 1,
                 stop_epoch: int | None = None, lr_factor: float = 0.96, momentum: str = "reset",
                 recalibrate_bn: int = 20, include: list[str] | None = None,
                 exclude: list[str] | None = None) -> None:
        super().__init__(every=every, start_epoch=start_epoch, stop_epoch=stop_epoch, lr_factor=lr_factor,
                         momentum=momentum, recalibrate_bn=recalibrate_bn)
        self.include, self.exclude = name_patterns("include", include), name_patterns("exclude", exclude)
        if not isinstance(target_params, (int, np.integer)) or isinstance(target_params, bool) or target_params < 1:
            raise ValueError(f"target_params must be a positive integer, got {target_params!r}")
        if not isinstance(min_size, (int, np.integer)) or min_size < 0:
            raise ValueError(f"min_size must be an integer >= 0, got {min_size!r}")
        if target_epoch is not None and (not isinstance(target_epoch, (int, np.integer))
                                         or isinstance(target_epoch, bool) or target_epoch < 1):
            raise ValueError(f"target_epoch must be a positive integer or None, got {target_epoch!r}")
        if match not in MATCHES:
            raise ValueError(f"match must be one of {', '.join(MATCHES)}, got {match!r}")
        if (match == "trajectory") != (target_trajectory is not None):
            raise ValueError("match='trajectory' needs target_trajectory (the count after each event), and only it")
        if match == "trajectory" and target_epoch is not None:
            raise ValueError("target_epoch does not apply with match='trajectory'")
        self.target_params = int(target_params)
        self.target_epoch = None if target_epoch is None else int(target_epoch)
        self.target_trajectory = None if target_trajectory is None else [int(n) for n in target_trajectory]
        self.target_key = target_key or f"pruning.target_params={self.target_params}"
        self.min_size, self.include_output_layer = int(min_size), bool(include_output_layer)
        self.events: list[int] = []
        self.dense_params = 0

    def eligible(self, model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
        """(name, module, is_output) of the layers this pruner cuts, in module order."""
        out = []
        for name, module, is_output in select_layers(model, self.include, self.exclude, self.include_output_layer):
            o, m = layer_matrix_shape(module)
            if o * m >= self.min_size:
                out.append((name, module, is_output))
        return out

    def bounds(self, model: nn.Module) -> tuple[int, int]:
        """(smallest reachable count, dense count) of ``model``'s network under this pruner's settings."""
        raise NotImplementedError

    def check(self, model: nn.Module, epochs: int | None) -> None:
        """Raise UserError (naming the target's key) when ``target_params`` cannot be reached: above the
        dense count, below :meth:`bounds`' smallest count, or (below the dense count) with no event in a
        run of ``epochs`` epochs. Reads shapes only (a model on the meta device will do)."""
        low, dense = self.bounds(model)
        t = self.target_params
        events = self.calendar.events(int(epochs)) if epochs is not None else None
        if self.target_trajectory is not None and events is not None:
            if len(self.target_trajectory) != len(events):
                raise UserError(f"{self.target_key}: {len(self.target_trajectory)} counts for the {len(events)} events "
                                f"of this run; match a run of the same calendar and epochs")
            if self.target_trajectory and not low <= min(self.target_trajectory) <= max(self.target_trajectory) <= dense:
                raise UserError(f"{self.target_key}: its counts after the events ({min(self.target_trajectory):,} to "
                                f"{max(self.target_trajectory):,}) leave [{low:,}, {dense:,}], the counts "
                                f"pruning={self.name} can reach here ({self.floor_reason()})")
        if t > dense:
            raise UserError(f"{self.target_key} is larger than the network ({dense:,} parameters); give a "
                            f"final count at most {dense:,}")
        if t < low:
            raise UserError(f"{self.target_key} is below the smallest count {self.name} pruning can reach here "
                            f"({low:,}: {self.floor_reason()}); give at least {low:,}")
        if epochs is not None and t < dense and not self.calendar.events(int(epochs)):
            raise UserError(f"{self.target_key}: pruning={self.name} has no event in a run of {epochs} epochs "
                            f"(pruning.start_epoch={self.calendar.start_epoch}, pruning.every={self.calendar.every}, "
                            f"events come after an epoch and before the last); raise epochs or lower start_epoch")
        if epochs is not None and t < dense and not self.schedule_events(self.calendar.events(int(epochs))):
            first = self.calendar.events(int(epochs))[0]
            raise UserError(f"pruning.target_epoch={self.target_epoch}: no event of pruning={self.name} comes after "
                            f"an epoch <= {self.target_epoch} (the first is after epoch {first}); give at least {first}")
        if epochs is not None and self.target_epoch is not None and self.calendar.events(int(epochs)) \
                and self.target_epoch >= self.calendar.events(int(epochs))[-1]:
            last = self.calendar.events(int(epochs))[-1]
            raise UserError(f"pruning.target_epoch={self.target_epoch} is not before the last event (after epoch {last}) "
                            f"of this {epochs}-epoch run: it would change nothing; leave it null, or give less than {last}")

    def schedule_events(self, events: list[int]) -> list[int]:
        """The events of the cubic schedule: those after epochs <= ``target_epoch`` (all without one)."""
        return [e for e in events if self.target_epoch is None or e <= self.target_epoch]

    def floor_reason(self) -> str:
        """What the smallest reachable count of :meth:`bounds` is made of (for the error message)."""
        raise NotImplementedError

    def setup(self, model: nn.Module, epochs: int | None = None) -> None:
        """Check the target against ``model`` and learn the run's events. Raises UserError (see :meth:`check`)."""
        super().setup(model, epochs)
        self.check(model, epochs)
        self.events = self.calendar.events(int(epochs)) if epochs is not None else []
        self.dense_params = self.bounds(model)[1]

    def budget(self, epoch: int) -> int:
        """The parameter count after an event after ``epoch``: ``target_trajectory[j - 1]`` (match=trajectory),
        else P_j = P_0 - (P_0 - T) c_j."""
        j, _, c = self.progress(epoch)
        if self.target_trajectory is not None:
            return self.target_trajectory[j - 1] if j > 0 else self.dense_params
        return int(round(self.dense_params - (self.dense_params - self.target_params) * c))

    def progress(self, epoch: int) -> tuple[int, int, float]:
        """(j, J, c_j) of an event after ``epoch``: j counts the run's events up to ``epoch`` (at most J, the
        events of the schedule)."""
        if self.epochs is None:
            raise ValueError(f"{type(self).__name__} needs setup(model, epochs) before step: its cubic schedule "
                             f"runs over the events of the whole run")
        n_events = len(self.schedule_events(self.events))
        j = min(sum(e <= epoch for e in self.events), n_events)
        if n_events == 0:
            return 0, 0, 1.0
        return j, n_events, cubic_progress(j, n_events)

    def reached(self, epoch: int) -> bool:
        """Whether the target was reached at an earlier event: an event after ``epoch`` only keeps the count."""
        scheduled = self.schedule_events(self.events)
        return self.target_epoch is not None and bool(scheduled) and epoch > scheduled[-1]


class MagnitudePruner(TargetPruner):
    """``pruning=magnitude``: gradual unstructured magnitude pruning (Zhu & Gupta 2017) to ``target_params``
    non-zero parameters (see the module docstring for the schedule and the two scopes).

    :meth:`setup` puts an identity mask (``torch.nn.utils.prune.identity``) on the weight of every
    eligible dense Linear / Conv2d layer that has none (so it is idempotent, and a model restored from a
    masked checkpoint keeps its masks); from then on the layer's parameter is ``weight_orig`` and the
    forward pass uses ``weight = weight_orig * weight_mask``. :meth:`step` zeroes more of the mask;
    :meth:`finalize` makes the masks permanent (``prune.remove``), leaving plain layers with zeros.
    An event lists the ``weight_orig`` of every layer whose mask grew in ``event.replaced`` (its
    effective values changed), so under ``momentum=keep`` those layers restart their momentum.

    Args:
        scope: ``"global"`` (one threshold over all eligible weights) or ``"layer"`` (the same sparsity in each).
        other arguments: as :class:`TargetPruner`.
    """

    name = "magnitude"

    def __init__(self, target_params: int, *, scope: str = "global", **kwargs: Any) -> None:
        super().__init__(target_params, **kwargs)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.scope = scope
        self.final_sparsity = 0.0

    def eligible(self, model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
        return [(n, m, o) for n, m, o in super().eligible(model) if not isinstance(m, LOW_RANK_TYPES)]

    def bounds(self, model: nn.Module) -> tuple[int, int]:
        """Dense count P_0, and P_0 - E + L: every eligible weight zero but one per eligible layer (L layers)."""
        dense = dense_param_count(model)
        layers = self.eligible(model)
        return dense - sum(weight_count(m) - 1 for _, m, _ in layers), dense

    def floor_reason(self) -> str:
        return "every eligible weight zero but one per layer; lower pruning.min_size to prune more layers"

    def setup(self, model: nn.Module, epochs: int | None = None) -> None:
        super().setup(model, epochs)
        sizes = []
        for _, module, _ in self.eligible(model):
            if not hasattr(module, "weight_mask"):
                prune.identity(module, "weight")
            sizes.append(module.weight_orig.numel())
        self._sizes = np.array(sizes, dtype=np.int64)
        self._to_zero = dense_param_count(model) - self.target_params  # P_0 - T weights zero at the end
        total = int(self._sizes.sum())
        if self.scope == "global" or total == 0:
            self.final_sparsity = self._to_zero / total if total else 0.0
        else:
            self.final_sparsity = _bisect(lambda s: int(self._layer_zeros(s).sum()), self._to_zero)

    def _layer_zeros(self, sparsity: float) -> np.ndarray:
        """Weights to zero per eligible layer at ``sparsity`` (scope=layer): min(E_l - 1, round(s E_l))."""
        return np.minimum(self._sizes - 1, np.round(sparsity * self._sizes).astype(np.int64))

    def sparsity(self, epoch: int) -> float:
        """s_j = s_f c_j, the sparsity of the eligible weights after an event after ``epoch``."""
        return self.final_sparsity * self.progress(epoch)[2]

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        """Zero the smallest-magnitude weights until the eligible weights have sparsity s_j (the masks only
        grow: a pruned weight stays pruned). Ledger rows with action ``mask`` (``keep`` for a layer whose
        mask did not change), counts of non-zero parameters, keep_fraction = the layer's share of
        weights kept."""
        event = PruneEvent(epoch)
        t0 = time.perf_counter()
        _, _, c = self.progress(epoch)
        s = self.sparsity(epoch)
        to_zero = int(round(self._to_zero * c))
        if self.target_trajectory is not None:  # the zeros that bring the count to the matched run's
            to_zero = self.dense_params - self.budget(epoch)
            total = int(self._sizes.sum())
            s = (to_zero / total if total else 0.0) if self.scope == "global" else \
                _bisect(lambda x: int(self._layer_zeros(x).sum()), to_zero)
        layers = self.eligible(model)
        names = {id(m) for _, m, _ in layers}
        before = {name: count_parameters(m) for name, m, _ in layers}
        zeros_now = np.array([int((m.weight_mask == 0).sum()) for _, m, _ in layers], dtype=np.int64)
        if self.scope == "global":
            extra = to_zero - int(zeros_now.sum())
            if extra > 0:
                params = [(m, "weight") for _, m, _ in layers]
                prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=extra,
                                          importance_scores={(m, "weight"): m.weight_orig.detach() for m, _ in params})
        else:
            goal = self._layer_zeros(s)
            for (_, module, _), want, have in zip(layers, goal, zeros_now):
                if want > have:
                    prune.l1_unstructured(module, "weight", amount=int(want - have),
                                          importance_scores=module.weight_orig.detach())
        seconds = (time.perf_counter() - t0) / max(len(layers), 1)
        budget = "" if self.target_trajectory is None else f"; budget {self.budget(epoch):,} (match=trajectory)"
        for lname, module, _ in select_layers(model, self.include, self.exclude):
            if id(module) not in names:
                o, m = layer_matrix_shape(module)
                if o * m < self.min_size:
                    event.records.append(ledger_row(lname, module, epoch=epoch, action="skip_small", seconds=0.0,
                                                    note=f"{o * m} weights < min_size {self.min_size}"))
                continue
            after = count_parameters(module)
            kept = int(module.weight_mask.count_nonzero())
            changed = after != before[lname]
            if changed:
                event.replaced.append(module.weight_orig)  # its effective values were overwritten by the mask
            event.records.append(ledger_row(
                lname, module, epoch=epoch, action="mask" if changed else "keep", params_before=before[lname],
                params_after=after, keep_fraction=kept / module.weight_orig.numel(), seconds=seconds,
                note=f"{self.scope} sparsity {s:.4f} of the eligible weights (event {self.progress(epoch)[0]} "
                     f"of {self.progress(epoch)[1]}, final {self.final_sparsity:.4f})" + budget))
        return event

    def finalize(self, model: nn.Module) -> None:
        """Make every mask permanent (``prune.remove``): plain layers whose pruned weights are zeros."""
        for module in model.modules():
            if hasattr(module, "weight_mask") and hasattr(module, "weight_orig"):
                prune.remove(module, "weight")


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


class NeuronPruner(TargetPruner):
    """``pruning=neuron``: structured pruning of the hidden units of a chain of ``nn.Linear`` layers
    (``model=mlp``), on the calendar and budget of the other baselines (cubic schedule to ``target_params``,
    or ``match=trajectory``).

    A unit i of layer l (a row of W_l, shape (n_l, n_{l-1})) is scored by the L2 norm of its incoming
    weights normalised by its layer's root-mean-square row norm,

        z_i = ||W_l[i, :]|| / sqrt(mean_k ||W_l[k, :]||^2),

    so that layers of different fan-in (rows of typical norm sigma sqrt(n_{l-1})) are ranked on one scale.
    ``scope=global`` keeps the ceil(theta N) units of highest z among the N units of all eligible layers;
    ``scope=layer`` keeps ceil(theta N_l) units of each; either way every layer keeps at least one unit.
    theta in [0, 1] is solved by bisection so that the model's count

        P(n) = sum_l n_l (n_{l-1} + b_l)        (b_l = 1 with a bias, 0 without)

    is nearest the event's budget. Removing unit i of layer l removes row i of W_l and entry i of b_l and
    column i of W_{l+1}: the layers physically shrink (``surgery.keep_units``). The output layer's units are
    never removed; eligible layers (``min_size``, the output layer excluded) are chosen on the dense network
    and kept in :meth:`state_dict` with its widths, so a resumed (shrunk) model prunes the same layers
    toward the same dense count. One unit of layer l moves the count by n_{l-1} + b_l + n_{l+1}.
    """

    name = "neuron"

    def __init__(self, target_params: int, *, scope: str = "global", **kwargs: Any) -> None:
        super().__init__(target_params, include_output_layer=False, **kwargs)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.scope = scope
        self.widths: list[int] = []    # n_0 .. n_L of the dense chain
        self.biases: list[int] = []    # b_l of each layer
        self.prunable: list[int] = []  # indices of the eligible layers (dense network)

    def state_dict(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "biases": list(self.biases), "eligible": list(self.prunable)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.widths = [int(n) for n in state.get("widths", [])]
        self.biases = [int(b) for b in state.get("biases", [])]
        self.prunable = [int(i) for i in state.get("eligible", [])]

    def chain(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        """The prunable layers of ``model`` as a chain of nn.Linear, each feeding the next; else UserError."""
        layers = prunable_layers(model)
        for i, (name, module) in enumerate(layers):
            if type(module) not in (nn.Linear, ShrunkLinear):
                raise UserError(f"pruning=neuron removes units of a chain of nn.Linear layers; {name} is a "
                                f"{type(module).__name__} (use model=mlp)")
            if i and module.in_features != layers[i - 1][1].out_features:
                raise UserError(f"pruning=neuron: {name} takes {module.in_features} inputs, not the "
                                f"{layers[i - 1][1].out_features} outputs of {layers[i - 1][0]}: not a chain")
        return layers  # type: ignore[return-value]

    def _dense(self, model: nn.Module) -> tuple[list[int], list[int], list[int]]:
        """(widths, biases, eligible layer indices) of the dense chain: recorded, or read from ``model``."""
        if self.widths:
            return self.widths, self.biases, self.prunable
        layers = self.chain(model)
        names = {n for n, _, _ in self.eligible(model)}
        return ([layers[0][1].in_features] + [m.out_features for _, m in layers],
                [int(m.bias is not None) for _, m in layers], [i for i, (n, _) in enumerate(layers) if n in names])

    @staticmethod
    def chain_count(widths: list[int], biases: list[int]) -> int:
        """P(n) = sum_l n_l (n_{l-1} + b_l) of a chain of widths n_0 .. n_L."""
        return sum(widths[i + 1] * (widths[i] + b) for i, b in enumerate(biases))

    def bounds(self, model: nn.Module) -> tuple[int, int]:
        """Dense count P_0, and the count with one unit left in every eligible layer."""
        widths, biases, prunable = self._dense(model)
        others = count_parameters(model) - sum(param_count(m) for _, m in self.chain(model))
        low = [1 if i - 1 in prunable else n for i, n in enumerate(widths)]
        return others + self.chain_count(low, biases), others + self.chain_count(widths, biases)

    def floor_reason(self) -> str:
        return "one unit left in every eligible layer; lower pruning.min_size to prune more layers"

    def setup(self, model: nn.Module, epochs: int | None = None) -> None:
        self.widths, self.biases, self.prunable = self._dense(model)
        super().setup(model, epochs)

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        """Remove the lowest-scoring units until the count is nearest the event's budget; ledger rows with
        action ``shrink`` (the layer lost rows or columns), ``keep`` or ``skip_small``."""
        event = PruneEvent(epoch)
        t0 = time.perf_counter()
        layers = self.chain(model)
        goal = self.budget(epoch)
        j, n_events, _ = self.progress(epoch)
        widths = [layers[0][1].in_features] + [m.out_features for _, m in layers]
        keep: dict[int, np.ndarray] = {}
        note = f"target reached (pruning.target_epoch={self.target_epoch})"
        if not self.reached(epoch):
            order, z = {}, {}
            for i in self.prunable:
                norms = layers[i][1].weight.detach().double().norm(dim=1).cpu().numpy()
                rms = math.sqrt(float(np.mean(norms ** 2)))
                z[i] = norms / rms if rms > 0 else norms
                order[i] = np.argsort(-z[i], kind="stable")
            pooled = np.concatenate([z[i] for i in self.prunable]) if self.prunable else np.zeros(0)
            owner = np.concatenate([np.full(len(z[i]), i) for i in self.prunable]) if self.prunable else pooled
            ranked = owner[np.argsort(-pooled, kind="stable")]
            others = count_parameters(model) - sum(param_count(m) for _, m in layers)

            def units(theta: float) -> dict[int, int]:
                if self.scope == "global":
                    top = ranked[: math.ceil(theta * len(ranked) - 1e-12)]
                    return {i: max(1, int((top == i).sum())) for i in self.prunable}
                return {i: max(1, math.ceil(theta * widths[i + 1] - 1e-12)) for i in self.prunable}

            def count(theta: float) -> int:
                n = units(theta)
                return others + self.chain_count([n.get(i - 1, w) for i, w in enumerate(widths)], self.biases)

            theta = _bisect(count, goal)
            keep = {i: np.sort(order[i][:n]) for i, n in units(theta).items() if n < widths[i + 1]}
            note = (f"{self.scope} unit share {theta:.6f}; budget {goal:,} (event {j} of {n_events}), "
                    f"reached {count(theta):,}")
        seconds = (time.perf_counter() - t0) / max(len(layers), 1)
        for i, (name, module) in enumerate(layers):
            rows, cols = keep.get(i), keep.get(i - 1)
            row = ledger_row(name, module, epoch=epoch, seconds=seconds, note=note,
                             keep_fraction=1.0 if rows is None else len(rows) / module.out_features)
            if rows is None and cols is None:
                small = i not in self.prunable and i < len(layers) - 1
                row.update(action="skip_small" if small else "keep",
                           note=f"{module.weight.numel()} weights < min_size {self.min_size}" if small else note)
            else:
                new = keep_units(module, rows, cols)
                model.set_submodule(name, new)
                record_replacement(event, module, new)
                row.update(action="shrink", params_after=param_count(new))
            event.records.append(row)
        return event


def baseline_from_config(pruning: Any, batch_size: int | None = None,
                         input_shape: list[int] | None = None) -> Pruner:
    """The pruner of a ``pruning=magnitude`` or ``pruning=lowrank`` config node (rmtprune/conf/pruning/*.yaml): its
    keys (``config.PRUNING_KEYS``) are the keyword arguments. ``target_from``
    must have been resolved into ``target_params`` (:func:`rmtprune.targets.resolve_target`); it names the
    target in error messages. ``batch_size`` and ``input_shape`` (one sample): what ``split=auto`` costs at."""
    from .config import PRUNING_KEYS
    from .pruner import split_arguments

    name = pruning.name
    classes = {"magnitude": MagnitudePruner, "lowrank": LowRankPruner, "neuron": NeuronPruner}
    if name not in classes:
        raise ValueError(f"not a baseline pruning: {name!r}")
    if pruning.target_params is None:
        raise UserError(f"pruning={name} needs pruning.target_params=N, or pruning.target_from=RUN resolved into it "
                        f"(rmtprune.targets.resolve_target)")
    kwargs = {k: pruning[k] for k in PRUNING_KEYS[name]
              if k not in ("name", "target_params", "target_from", "split")}
    if "split" in PRUNING_KEYS[name]:
        kwargs.update(split_arguments(pruning, batch_size, input_shape))
    target = int(pruning.target_params)
    if pruning.get("target_from") is not None:
        what = "counts after each event" if pruning.get("match") == "trajectory" else f"final count {target:,}"
        key = f"pruning.target_from={pruning.target_from} ({what})"
    else:
        key = f"pruning.target_params={target}"
    if kwargs.get("target_trajectory") is not None:
        kwargs["target_trajectory"] = [int(n) for n in kwargs["target_trajectory"]]
    return classes[name](target, target_key=key, **kwargs)

