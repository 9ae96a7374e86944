"""Baselines at the same size as the RMT arm: gradual magnitude pruning, a low-rank cut without RMT, and
structured neuron pruning.

All run on the event calendar of ``pruning=rmt`` (the same loop, lr factor and momentum policy) and
reach a final parameter count T (``target_params``, or the final count of another run:
``target_from``, resolved by :mod:`rmtprune.runs.targets`) on the cubic schedule of Zhu & Gupta (2017):
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
by :mod:`rmtprune.runs.targets`), so both arms hold the same count at every epoch (within a rank / unit step).

Bad targets (``target_params`` above the dense count, below the smallest reachable count, or a run
without events) raise :class:`rmtprune.errors.UserError` naming the key, from :meth:`setup` (before
training) or from :func:`rmtprune.runs.targets.check_target` (before any job starts).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from rmtprune.errors import UserError
from rmtprune.nn.geometry import layer_matrix_shape, weight_count
from rmtprune.nn.layers import LOW_RANK_TYPES
from rmtprune.nn.select import prunable_layers
from rmtprune.prune.base import LayerPruner
from rmtprune.prune.params import Integer, OneOf, check_params

SCOPES = ("global", "layer")  # pruning.scope (magnitude, neuron)


MATCHES = ("final", "trajectory")  # pruning.match


TARGET_KEYS = ("target_params", "target_from", "target_epoch", "match", "target_trajectory")  # config keys


BISECTION_STEPS = 60


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


class TargetPruner(LayerPruner):
    """The budget mix-in of the arms matched to a parameter count (lowrank, magnitude, neuron): the target, the
    cubic progress of the event count, and the bound checks; an arm plans each event's cut to :meth:`budget`.
    Cooperative: ``class LowRankPruner(TargetPruner, RankPruner)`` passes the other arguments on.

    Args:
        target_params: the final parameter count T (> 0).
        target_key: how the target is named in error messages (the config key it came from).
        target_epoch: the schedule reaches the target at the last event after an epoch <= target_epoch
            (None: the calendar's last event); later events keep the count.
        match: ``"final"`` (the cubic schedule to ``target_params``) or ``"trajectory"``: the count after the
            j-th event is ``target_trajectory[j - 1]`` (the matched run's count after the same event).
        other arguments: as :class:`rmtprune.prune.base.LayerPruner` (which layers, the calendar).
    """

    _parameter_constraints = {"target_params": Integer(1, text="a positive integer"),
                              "target_epoch": Integer(1, none=True, text="a positive integer"),
                              "match": OneOf(MATCHES)}

    def __init__(self, target_params: int, *, target_key: str | None = None, target_epoch: int | None = None,
                 match: str = "final", target_trajectory: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_params(type(self), target_params=target_params, target_epoch=target_epoch, match=match)
        if (match == "trajectory") != (target_trajectory is not None):
            raise ValueError("match='trajectory' needs target_trajectory (the count after each event), and only it")
        if match == "trajectory" and target_epoch is not None:
            raise ValueError("target_epoch does not apply with match='trajectory'")
        self.target_params = int(target_params)
        self.target_epoch = None if target_epoch is None else int(target_epoch)
        self.target_trajectory = None if target_trajectory is None else [int(n) for n in target_trajectory]
        self.target_key = target_key or f"pruning.target_params={self.target_params}"
        self.events: list[int] = []
        self.dense_params = 0

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
