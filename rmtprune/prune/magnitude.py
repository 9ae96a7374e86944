"""``pruning=magnitude``: gradual unstructured magnitude pruning to a budget (masks, layer or global scope)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from torch import nn
from torch.nn.utils import prune

from rmtprune.nn.geometry import count_parameters, weight_count
from rmtprune.nn.layers import LOW_RANK_TYPES
from rmtprune.nn.select import select_layers, too_small
from rmtprune.prune.base import CALENDAR_KEYS, LAYER_KEYS, SELECT_KEYS
from rmtprune.prune.budget import SCOPES, TARGET_KEYS, TargetPruner, _bisect, dense_param_count
from rmtprune.prune.events import PruneEvent, ledger_row
from rmtprune.prune.params import OneOf, check_params


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
    config_keys = (*CALENDAR_KEYS, *SELECT_KEYS, *TARGET_KEYS, "scope", *LAYER_KEYS)
    _parameter_constraints = {"scope": OneOf(SCOPES)}

    def __init__(self, target_params: int, *, scope: str = "global", **kwargs: Any) -> None:
        super().__init__(target_params, **kwargs)
        check_params(type(self), scope=scope)
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

    def plan_zeros(self, layers: list[tuple[str, nn.Module, bool]], epoch: int) -> tuple[float, int | np.ndarray]:
        """(s, amount) of the event after ``epoch``, side-effect free: the sparsity s_j of the eligible weights and
        the weights to zero now (masks only grow): one number for ``scope=global`` (by one threshold over all
        ``layers``), one per layer for ``scope=layer``."""
        _, _, c = self.progress(epoch)
        s = self.sparsity(epoch)
        to_zero = int(round(self._to_zero * c))
        if self.target_trajectory is not None:  # the zeros that bring the count to the matched run's
            to_zero = self.dense_params - self.budget(epoch)
            total = int(self._sizes.sum())
            s = (to_zero / total if total else 0.0) if self.scope == "global" else \
                _bisect(lambda x: int(self._layer_zeros(x).sum()), to_zero)
        zeros_now = np.array([int((m.weight_mask == 0).sum()) for _, m, _ in layers], dtype=np.int64)
        if self.scope == "global":
            return s, to_zero - int(zeros_now.sum())
        return s, self._layer_zeros(s) - zeros_now

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        """Zero the smallest-magnitude weights until the eligible weights have sparsity s_j (:meth:`plan_zeros`;
        the masks only grow: a pruned weight stays pruned). Ledger rows with action ``mask`` (``keep`` for a
        layer whose mask did not change), counts of non-zero parameters, keep_fraction = the layer's share of
        weights kept."""
        event = PruneEvent(epoch)
        t0 = time.perf_counter()
        layers = self.eligible(model)
        names = {id(m) for _, m, _ in layers}
        before = {name: count_parameters(m) for name, m, _ in layers}
        s, amount = self.plan_zeros(layers, epoch)
        if self.scope == "global":
            if amount > 0:
                params = [(m, "weight") for _, m, _ in layers]
                prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=int(amount),
                                          importance_scores={(m, "weight"): m.weight_orig.detach() for m, _ in params})
        else:
            for (_, module, _), extra in zip(layers, amount):
                if extra > 0:
                    prune.l1_unstructured(module, "weight", amount=int(extra),
                                          importance_scores=module.weight_orig.detach())
        seconds = (time.perf_counter() - t0) / max(len(layers), 1)
        budget = "" if self.target_trajectory is None else f"; budget {self.budget(epoch):,} (match=trajectory)"
        for lname, module, _ in select_layers(model, self.include, self.exclude):
            if id(module) not in names:
                why_not = too_small(module, self.min_size, self.min_values)
                if why_not:
                    event.records.append(ledger_row(lname, module, epoch=epoch, action="skip_small", seconds=0.0,
                                                    note=why_not))
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
