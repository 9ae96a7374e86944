"""The pruning step between epochs: fit every eligible layer, pick its rank, do the surgery.

The training loop only calls ``pruner.step(model, epoch)``; :class:`NoPruner` is the normal
baseline and does nothing. :class:`RMTPruner` implements method doc section 4:

1. singular values -> BEMA fit -> edge s_+ and fit error; a fit error at or above the tolerance
   leaves the layer unchanged (``skip_bad_fit``);
2. target rank r = k + floor((p - k) f(e)) clamped to [min rank, p] (k spikes, f the schedule);
3. split into two factors if r (groups m + out) < out m, else truncate in place (or leave it,
   ``truncate=false``); a split layer is refitted on its product and re-split.

Layers that were truncated or split hold p - r (near-)zero singular values, no longer MP: the
fit censors them (``n_censored``) so that they do not drag the noise estimate down.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from .lowrank import LOW_RANK_TYPES
from .models import prunable_layers
from .rmt import fit_mp
from .schedules import Schedule, target_rank
from .surgery import apply_rank, layer_matrix, layer_matrix_shape, layer_svd, param_count

log = logging.getLogger(__name__)

LEDGER_COLUMNS = [
    "epoch", "layer", "kind", "out", "in", "gamma", "sigma2", "lambda_plus", "threshold", "n_spikes",
    "fit_error", "tolerance", "good_fit", "keep_fraction", "rank_before", "rank_after", "action",
    "params_before", "params_after", "n_censored", "seconds", "note",
]


@dataclass
class PruneEvent:
    """Ledger rows of one event and the parameters whose values or identity changed."""

    records: list[dict[str, Any]] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> singular values (descending)

    @property
    def changed(self) -> bool:
        return any(r["action"] in ("split", "truncate") for r in self.records)


class Pruner(Protocol):
    def is_event(self, epoch: int) -> bool: ...
    def step(self, model: nn.Module, epoch: int) -> PruneEvent: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NoPruner:
    """``pruning=none``: never prunes."""

    lr_factor = 1.0
    momentum = "keep"

    def is_event(self, epoch: int) -> bool:
        return False

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        return PruneEvent()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class RMTPruner:
    """MP-fit pruning of every eligible Linear / Conv2d layer (see the module docstring)."""

    def __init__(self, cfg: DictConfig, schedule: Schedule, num_classes: int) -> None:
        self.cfg = cfg
        self.schedule = schedule
        self.num_classes = num_classes
        self.lr_factor = float(cfg.lr_factor)
        self.momentum = str(cfg.momentum)
        self.ranks: dict[str, int] = {}   # current rank of layers that were truncated in place

    def is_event(self, epoch: int) -> bool:
        c = self.cfg
        if epoch < c.start_epoch or (c.stop_epoch is not None and epoch > c.stop_epoch):
            return False
        return (epoch - c.start_epoch) % c.every == 0

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": dict(self.ranks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ranks = {str(k): int(v) for k, v in state.get("ranks", {}).items()}

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        event = PruneEvent()
        layers = prunable_layers(model)
        output_name = layers[-1][0] if layers else None
        f = round(float(self.schedule(epoch)), 12)
        for name, module in layers:
            is_output = name == output_name
            if is_output and not self.cfg.include_output_layer:
                continue
            t0 = time.perf_counter()
            row = self._prune_one(model, name, module, is_output, f, event)
            row["seconds"] = time.perf_counter() - t0
            row["epoch"] = epoch
            event.records.append(row)
        return event

    def _tolerance(self, module: nn.Module) -> float:
        is_conv = module.__class__.__name__.endswith("Conv2d")
        if is_conv and self.cfg.conv_tolerance is not None:
            return float(self.cfg.conv_tolerance)
        return float(self.cfg.tolerance)

    def _prune_one(self, model: nn.Module, name: str, module: nn.Module, is_output: bool, f: float,
                   event: PruneEvent) -> dict[str, Any]:
        out, m = layer_matrix_shape(module)
        p = min(out, m)
        tol = self._tolerance(module)
        kind = "conv" if "Conv" in type(module).__name__ else "linear"
        rank_now = module.rank * getattr(module, "groups", 1) if isinstance(module, LOW_RANK_TYPES) \
            else self.ranks.get(name, p)
        rank_now = min(rank_now, p)
        row: dict[str, Any] = {c: math.nan for c in LEDGER_COLUMNS}
        n_params = param_count(module)
        row.update(layer=name, kind=kind, out=out, **{"in": m}, tolerance=tol, keep_fraction=f,
                   rank_before=rank_now, rank_after=rank_now, params_before=n_params,
                   params_after=n_params, good_fit=False, note="")
        if out * m < self.cfg.min_size or p < 10:
            row.update(action="skip_small", note=f"{out * m} weights < min_size {self.cfg.min_size}"
                       if p >= 10 else "fewer than 10 singular values")
            return row
        censored = p - rank_now
        try:
            if isinstance(module, LOW_RANK_TYPES):
                svd = layer_svd(module)
                s = np.zeros(p)
                vals = svd[1].double().cpu().numpy()[:p]
                s[: vals.size] = vals
                fit = fit_mp(singular_values=s, shape=(out, m), alpha=self.cfg.alpha, beta=self.cfg.beta,
                             n_censored=censored)
            else:
                svd = None
                fit = fit_mp(layer_matrix(module), alpha=self.cfg.alpha, beta=self.cfg.beta, n_censored=censored)
        except (ValueError, np.linalg.LinAlgError, torch.linalg.LinAlgError, RuntimeError) as exc:
            row.update(action="skip_bad_fit", note=f"fit failed: {exc}")
            return row
        event.spectra[name] = np.asarray(fit.singular_values, dtype=np.float32)
        row.update(gamma=fit.gamma, sigma2=fit.sigma2, lambda_plus=fit.lambda_plus, threshold=fit.threshold,
                   n_spikes=fit.n_spikes, fit_error=fit.fit_error, good_fit=fit.good(tol), n_censored=censored)
        if not fit.good(tol):
            row.update(action="skip_bad_fit", note=f"fit error {fit.fit_error:.4f} >= tolerance {tol}")
            return row
        floor = int(self.cfg.min_rank)
        if is_output:
            floor = max(floor, int(self.cfg.output_min_rank if self.cfg.output_min_rank is not None
                                   else self.num_classes))
        rank = target_rank(p, fit.n_spikes, f, floor)
        try:
            result = apply_rank(module, rank, rank_now, svd, truncate=bool(self.cfg.truncate))
        except (torch.linalg.LinAlgError, RuntimeError) as exc:
            row.update(action="skip_svd_failed", note=f"SVD failed: {exc}")
            return row
        if result.action == "split":
            event.touched.update(id(q) for q in module.parameters())
            model.set_submodule(name, result.module)
            event.touched.update(id(q) for q in result.module.parameters())
            self.ranks.pop(name, None)
        elif result.action == "truncate":
            event.touched.update(id(q) for q in module.parameters())
            self.ranks[name] = result.rank_after
        row.update(action=result.action, rank_after=result.rank_after, params_before=result.params_before,
                   params_after=result.params_after)
        return row


def make_pruner(cfg: DictConfig, schedule: Schedule, num_classes: int) -> Pruner:
    if cfg.name == "none":
        return NoPruner()
    return RMTPruner(cfg, schedule, num_classes)
