"""RMT pruning of any ``nn.Module``, in your own loop or through ``rmtprune train``.

>>> pruner = rmtprune.RMTPruner(schedule="linear", horizon=epochs)
>>> for epoch in range(1, epochs + 1):
...     train_one_epoch(model, optimizer)
...     if pruner.is_event(epoch):
...         event = pruner.step(model, epoch)          # modifies model in place
...         optimizer = rmtprune.rebuild_optimizer(optimizer, model, event, momentum=pruner.momentum,
...                                                lr_factor=pruner.lr_factor, schedulers=[scheduler])

At an event, every eligible ``nn.Linear`` / ``nn.Conv2d`` (at least ``min_size`` weights; and the
layers it split before) goes through (method doc section 4):

1. one decomposition of the layer's matrix W (out, m), m = in (Linear) or in/groups * kh * kw (Conv2d):
   the thin SVD (for a split layer, through QR of its factors), reused by the surgery;
2. the BEMA fit of the Marchenko-Pastur law to its singular values (``rmt.fit_mp``), with the zeros left
   by earlier cuts censored from below and the values that were above the edge at an earlier fit never
   used as bulk; a fit error at or above the tolerance leaves the layer unchanged (``skip_bad_fit``);
   no bulk left to fit (a layer already cut to its spikes) keeps its rank (``keep_no_bulk``);
3. target rank r = k + floor((p - k) f(e)), k the spikes (now or at an earlier fit), p = min(out, m), f the schedule's keep
   fraction (``schedule="spikes"``: per layer, 1 until its spike count has not grown for ``patience`` events,
   then 0, and the layer keeps that rank), or r = ceil(margin k) when f = 0 and ``margin`` is set; clamped to
   [min_rank, p] (the output layer: at least ``output_min_rank``, default its number of outputs);
4. a split into two thin factors when r (groups m + out) < out m (and, with ``split="auto"``, the cost
   model of ``rmtprune.nn.split_cost`` says two factors are cheaper at the run's batch size; ``"never"``: no split),
   else a truncation in place (``truncate=True``) or nothing (``skip_no_saving``); a split layer is re-split.

``include`` / ``exclude`` (``fnmatch`` patterns of module names, e.g. ``["encoder.*"]``, ``["*.out_proj"]``)
choose the layers an event looks at; a split layer keeps working where its parent reads ``.weight``
(``nn.MultiheadAttention``, the fast path of ``nn.TransformerEncoderLayer``: see ``rmtprune.nn.layers``).

Side effects of :meth:`RMTPruner.step`: modifies ``model`` in place (``set_submodule`` for split
layers, ``weight.data`` for truncated ones); the returned :class:`PruneEvent` lists the parameters
that were replaced or added, so that an optimizer holding them can be rebuilt
(:func:`rmtprune.rebuild_optimizer`). The pruner itself remembers, per layer name, the rank of
truncated layers, the number of known spikes and, for ``schedule="spikes"``, each layer's last spike count
and events without growth (``state_dict``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Union

import torch
from torch import nn

from rmtprune.nn.geometry import is_conv, layer_matrix_shape
from rmtprune.nn.layers import LOW_RANK_TYPES
from rmtprune.prune.base import CALENDAR_KEYS, LAYER_KEYS, LINALG_ERRORS, SELECT_KEYS
from rmtprune.prune.events import PruneEvent, is_real
from rmtprune.prune.params import Interval, check_params
from rmtprune.prune.rank import RANK_KEYS, Layer, Plan, RankPruner
from rmtprune.prune.schedules import MARGIN, SCHEDULES, Schedule, SpikeCut, target_rank
from rmtprune.rmt import NoBulkError, fit_mp
from rmtprune.rmt.fit import ALPHA_RANGE, BETA_RANGE, MIN_SINGULAR_VALUES

# the schedules RMTPruner takes by name (others: a callable epoch -> keep fraction, rmtprune.prune.schedules)
NAMED_SCHEDULES = ("linear", "oneshot", "spikes")


class RMTPruner(RankPruner):
    """Marchenko-Pastur pruning between epochs (see the module docstring for what one event does).

    Args:
        tolerance: prune a layer only if its MP fit error is below this (1 always passes, 0 never).
        conv_tolerance: the tolerance for Conv2d layers (None: ``tolerance``; the reference CNN used 0.6).
        alpha: BEMA trimming of the bulk window, in (0, 0.5).
        beta: Tracy-Widom confidence level of the edge, in (0, 1).
        schedule: keep fraction f(e) of the sub-edge values at an event after epoch e: ``"linear"``
            (f = max(0, 1 - e / horizon)), ``"oneshot"`` (f = 0), any callable epoch -> [0, 1]
            (``rmtprune.prune.schedules``: ``step``, ``exponential``, ``constant``), or ``"spikes"`` (a
            ``schedules.SpikeCut``): per layer, f = 1 until its spike count has not grown for ``patience``
            events in a row, then a cut to its spikes, whose rank it keeps.
        horizon: the linear schedule's horizon, in epochs (None: the run length given to :meth:`setup`).
        every, start_epoch, stop_epoch: the event calendar (events after epochs start_epoch,
            start_epoch + every, ..., up to stop_epoch).
        min_size: eligible layers have at least this many weight entries (out * in * kh * kw).
        min_rank: never cut a layer below this rank.
        include_output_layer: whether the last prunable layer (in module order) is pruned.
        output_min_rank: the output layer's rank floor (None: its number of outputs).
        truncate: a layer whose split would not save parameters is truncated in place (True) or left.
        include, exclude: ``fnmatch`` patterns of module names (``model.named_modules()``): only layers matching
            a pattern of ``include`` (None: all) and none of ``exclude`` are pruned.
        split: ``"always"`` (split whenever that saves parameters), ``"auto"`` (only where ``rmtprune.nn.split_cost``
            also finds the split cheaper at ``batch_size`` on ``example_input``, one sample as a batch of 1),
            ``"never"`` (truncate in place).
        lr_factor, momentum: what the training loop applies at every event epoch (lr x lr_factor; a new
            optimizer, ``"reset"``: all momentum zeroed, ``"keep"``: untouched parameters keep theirs).
        patience: ``schedule="spikes"`` only: events without a new spike before a layer is cut (None: 2).
        margin: a cut with f = 0 keeps r = ceil(margin k) values instead of the k spikes (None: k; >= 1).
        recalibrate_bn: what the training loop applies after an event that changed the model: BatchNorm
            statistics recomputed on this many training batches (``rmtprune.recalibrate_bn``; 0: none).

    Raises:
        ValueError: an argument out of range, named in the message.
    """

    name = "rmt"
    config_keys = (*CALENDAR_KEYS, *SELECT_KEYS, *RANK_KEYS, "alpha", "beta", "tolerance", "conv_tolerance", "margin",
                   *LAYER_KEYS, "split")
    uses_schedule = True
    min_values = MIN_SINGULAR_VALUES  # the MP fit needs a spectrum
    _STATE = ("ranks", "known_spikes", "spike_counts", "stalls")  # what state_dict holds
    _TOLERANCE = Interval(0, 1, text="in [0, 1] (1 always passes, 0 never)")
    _parameter_constraints = {
        "tolerance": _TOLERANCE, "conv_tolerance": Interval(0, 1, none=True, text=_TOLERANCE.text),
        "alpha": Interval(*ALPHA_RANGE, "()"), "beta": Interval(*BETA_RANGE, "()"), "margin": MARGIN,
        "horizon": Interval(0, ends="()", none=True, text="a positive finite number of epochs"),
    }

    def __init__(self, tolerance: float = 0.05, conv_tolerance: float | None = None, alpha: float = 0.25,
                 beta: float = 0.1, schedule: Union[str, Schedule, SpikeCut] = "linear",
                 horizon: float | None = None,
                 every: int = 1, start_epoch: int = 1, stop_epoch: int | None = None, min_size: int = 10000,
                 min_rank: int = 1, include_output_layer: bool = True, output_min_rank: int | None = None,
                 truncate: bool = True, lr_factor: float = 0.96, momentum: str = "reset",
                 patience: int | None = None, margin: float | None = None, recalibrate_bn: int = 20,
                 include: list[str] | None = None, exclude: list[str] | None = None, split: str = "always",
                 batch_size: int | None = None, example_input: torch.Tensor | None = None) -> None:
        check_params(type(self), tolerance=tolerance, conv_tolerance=conv_tolerance, alpha=alpha, beta=beta,
                     horizon=horizon)
        if not (callable(schedule) or isinstance(schedule, SpikeCut) or schedule in NAMED_SCHEDULES):
            raise ValueError(f"schedule must be one of {', '.join(map(repr, NAMED_SCHEDULES))} or a callable epoch -> "
                             f"keep fraction, got {schedule!r} (step, exponential, constant: rmtprune.prune.schedules)")
        if schedule == "spikes":
            schedule = SpikeCut() if patience is None else SpikeCut(patience)
        elif patience is not None:
            raise ValueError(f"patience applies to schedule='spikes' only, got schedule={schedule!r}")
        check_params(type(self), margin=margin)
        super().__init__(every=every, start_epoch=start_epoch, stop_epoch=stop_epoch, lr_factor=lr_factor,
                         momentum=momentum, recalibrate_bn=recalibrate_bn, min_size=min_size,
                         include_output_layer=include_output_layer, include=include, exclude=exclude,
                         min_rank=min_rank, output_min_rank=output_min_rank, truncate=truncate, split=split,
                         batch_size=batch_size, example_input=example_input)
        self.tolerance, self.conv_tolerance = float(tolerance), conv_tolerance
        self.alpha, self.beta = float(alpha), float(beta)
        self.schedule, self.horizon = schedule, horizon
        self.margin = None if margin is None else float(margin)
        self.known_spikes: dict[str, int] = {}  # values above the edge at an earlier good fit, per layer
        self.spike_counts: dict[str, int] = {}  # schedule="spikes": spike count at the layer's last good fit
        self.stalls: dict[str, int] = {}        # schedule="spikes": good fits since the count last grew

    # --- schedule -------------------------------------------------------------------------------
    def keep_fraction(self, epoch: int) -> float | None:
        """f(epoch), the share of the sub-edge singular values an event after ``epoch`` keeps (None for
        ``schedule="spikes"``, which decides per layer)."""
        if isinstance(self.schedule, SpikeCut):
            return None
        if callable(self.schedule):
            f = float(self.schedule(epoch))
        elif self.schedule == "oneshot":
            f = 0.0
        else:
            horizon = self.horizon if self.horizon is not None else self.epochs
            if horizon is None:
                raise ValueError("RMTPruner(schedule='linear') needs horizon= (the epoch at which the keep fraction "
                                 "reaches 0, e.g. your number of epochs), or pruner.setup(model, epochs) first")
            f = SCHEDULES["linear"](epoch, float(horizon))
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"the schedule gave keep fraction {f} at epoch {epoch}; it must be in [0, 1]")
        return round(f, 12)


    # --- the event ------------------------------------------------------------------------------
    def plan(self, model: nn.Module, epoch: int,
             each: Callable[[str, nn.Module], None] | None = None) -> PruneEvent:
        """What :meth:`step` would do, without doing it: the same ledger rows (fit, rank, action, parameters
        after) and spectra, from the singular values alone (``rmt.singular_values``: the eigenvalues of the
        p x p Gram matrix where n >= 2p, else ``svdvals``; no singular vectors, no surgery), so a large model
        is read in a fraction of the time. ``model`` is not modified (this pruner's state is, as by step).
        ``each(name, module)`` is called before each layer (a progress display)."""
        return self.preview(model, epoch, each)

    def event_context(self, model: nn.Module, epoch: int) -> float | None:
        return self.keep_fraction(epoch)

    def row_fields(self, module: nn.Module, rank: int, f: float | None) -> dict[str, Any]:
        return dict(tolerance=self.tolerance_for(module), keep_fraction=math.nan if f is None else f,
                    rank_before=rank, rank_after=rank)

    def tolerance_for(self, module: nn.Module) -> float:
        if is_conv(module) and self.conv_tolerance is not None:
            return float(self.conv_tolerance)
        return self.tolerance


    def plan_ranks(self, layers: list[Layer], f: float | None) -> list[Plan]:
        """Per layer: the MP fit of its spectrum (the zeros of earlier cuts censored, its known spikes never
        fitted as bulk) and the target rank of the schedule's keep fraction ``f`` (None: schedule=spikes)."""
        return [self._plan_one(layer, f) for layer in layers]

    def _plan_one(self, layer: Layer, f: float | None) -> Plan:
        name, (out, m), p = layer.name, layer.shape, layer.p
        known = min(self.known_spikes.get(name, 0), layer.rank)
        if f is None and self.stalls.get(name, 0) >= self.schedule.patience:
            return Plan(row=dict(action="keep_cut", keep_fraction=0.0, n_known_spikes=known,
                                 note="cut to its spikes at an earlier event (schedule=spikes): keeps its rank"))
        censored = p - layer.rank
        row: dict[str, Any] = dict(n_censored=censored, n_known_spikes=known)
        tol = self.tolerance_for(layer.module)
        try:
            fit = fit_mp(singular_values=layer.spectrum(), shape=(out, m), alpha=self.alpha, beta=self.beta,
                         n_censored=censored, n_known_spikes=known)
        except NoBulkError as exc:
            return Plan(row={**row, "action": "keep_no_bulk", "note": f"no bulk left to fit: {exc}"})
        except LINALG_ERRORS as exc:
            return Plan(row={**row, "action": "skip_bad_fit", "note": f"fit failed: {exc}"})
        row.update(gamma=fit.gamma, sigma2=fit.sigma2, lambda_plus=fit.lambda_plus, threshold=fit.threshold,
                   n_spikes=fit.n_spikes, fit_error=fit.fit_error, good_fit=fit.good(tol), n_bulk=fit.n_bulk)
        if not fit.good(tol):
            row.update(action="skip_bad_fit", note=f"fit error {fit.fit_error:.4f} >= tolerance {tol}")
            return Plan(row=row, spectrum=fit.singular_values)
        # a value above the edge at an earlier fit stays a spike: the rank never creeps down below them
        spikes = max(known, fit.n_spikes)
        state = {"known_spikes": spikes}
        if f is None:
            stalls = self._stalls(name, spikes)
            state.update(spike_counts=spikes, stalls=stalls)
            f = 0.0 if stalls >= self.schedule.patience else 1.0
            row.update(keep_fraction=f)
        rank = target_rank(p, spikes, f, layer.floor, self.margin)
        return Plan(rank, row, state, fit.singular_values)

    def adopt_ranks(self, model: nn.Module) -> None:
        """Take a model cut before (by another pruner, run or session) as this pruner would have left it: every
        eligible layer it knows nothing about whose rank r is below p (a split layer's r; a dense layer's
        numerical rank, ``torch.linalg.matrix_rank``, after a truncation in place) gets r known spikes (and,
        dense, r as its rank). The next event then censors its p - r zeros and never fits its r survivors as
        bulk: a layer cut to its values keeps its rank (``keep_no_bulk``). Does not modify ``model``."""
        for name, module, _ in self.eligible(model):
            out, m = layer_matrix_shape(module)
            if name in self.known_spikes:
                continue
            if isinstance(module, LOW_RANK_TYPES):
                rank = self.current_rank(name, module)
            else:
                rank = int(torch.linalg.matrix_rank(module.weight.detach().reshape(out, -1).float()))
                if rank < min(out, m):
                    self.ranks[name] = rank
            if rank < min(out, m):
                self.known_spikes[name] = rank

    def _stalls(self, name: str, spikes: int) -> int:
        """schedule="spikes": the good fits in a row, this one included, since layer ``name``'s spike count last
        grew (0 when it grew now: the first fit of a layer is growth from nothing; a layer without spikes never
        stalls, there is nothing yet to cut to). f = 0 once it reaches ``patience``, else 1."""
        last = self.spike_counts.get(name)
        return 0 if last is None or spikes > last or spikes == 0 else self.stalls.get(name, 0) + 1


def prune_model(model: nn.Module, keep_fraction: float = 0.0, **kwargs: Any) -> PruneEvent:
    """One RMT cut of a trained model: every eligible layer keeps its spikes and ``keep_fraction`` of its
    sub-edge singular values. Modifies ``model`` in place; keyword arguments as :class:`RMTPruner`
    (``schedule``, ``patience`` and the calendar excepted). Returns the event (ledger rows in ``event.records``).

    A layer already cut (split, or truncated in place) is taken as :meth:`RMTPruner.adopt_ranks` says: its
    values are known spikes, so a second call changes nothing (without it a fresh pruner would fit the
    survivors as bulk and halve the rank again: 12 -> 8 -> 5 -> 2)."""
    for key in ("schedule", "patience", "horizon", "every", "start_epoch", "stop_epoch"):
        if key in kwargs:
            raise ValueError(f"prune_model makes one cut at keep_fraction: {key}= does not apply")
    if not (is_real(keep_fraction) and 0 <= keep_fraction <= 1):
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction!r}")
    pruner = RMTPruner(schedule=lambda e: float(keep_fraction), **kwargs)
    pruner.adopt_ranks(model)
    return pruner.step(model, epoch=0)
