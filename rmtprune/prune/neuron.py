"""``pruning=neuron``: structured unit pruning of an MLP by the L2 norm of each unit's incoming weights; the
layers physically shrink (rows of one layer, the matching columns of the next).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from torch import nn

from rmtprune.errors import UserError
from rmtprune.nn.geometry import count_parameters, param_count
from rmtprune.nn.layers import ShrunkLinear
from rmtprune.nn.select import prunable_layers, too_small
from rmtprune.nn.surgery import keep_units
from rmtprune.prune.base import CALENDAR_KEYS, LAYER_KEYS
from rmtprune.prune.budget import SCOPES, TARGET_KEYS, TargetPruner, _bisect
from rmtprune.prune.events import PruneEvent, ledger_row, record_replacement
from rmtprune.prune.params import OneOf, check_params


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
    config_keys = (*CALENDAR_KEYS, "min_size", *TARGET_KEYS, "scope", *LAYER_KEYS)
    _parameter_constraints = {"scope": OneOf(SCOPES)}

    def __init__(self, target_params: int, *, scope: str = "global", **kwargs: Any) -> None:
        super().__init__(target_params, include_output_layer=False, **kwargs)
        check_params(type(self), scope=scope)
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

    def plan_units(self, model: nn.Module, epoch: int) -> tuple[dict[int, np.ndarray], str]:
        """The units each eligible layer keeps after the event after ``epoch`` (``{layer index: sorted row
        indices}``, only layers that lose units) and the ledger note; side-effect free (the model's scores,
        theta by bisection on the chain count P(n), nearest the event's budget)."""
        layers = self.chain(model)
        if self.reached(epoch):
            return {}, f"target reached (pruning.target_epoch={self.target_epoch})"
        goal = self.budget(epoch)
        j, n_events, _ = self.progress(epoch)
        widths = [layers[0][1].in_features] + [m.out_features for _, m in layers]
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
        return keep, (f"{self.scope} unit share {theta:.6f}; budget {goal:,} (event {j} of {n_events}), "
                      f"reached {count(theta):,}")

    def step(self, model: nn.Module, epoch: int) -> PruneEvent:
        """Remove the lowest-scoring units until the count is nearest the event's budget (:meth:`plan_units`);
        ledger rows with action ``shrink`` (the layer lost rows or columns), ``keep`` or ``skip_small``."""
        event = PruneEvent(epoch)
        t0 = time.perf_counter()
        keep, note = self.plan_units(model, epoch)
        layers = self.chain(model)
        seconds = (time.perf_counter() - t0) / max(len(layers), 1)
        for i, (name, module) in enumerate(layers):
            rows, cols = keep.get(i), keep.get(i - 1)
            row = ledger_row(name, module, epoch=epoch, seconds=seconds, note=note,
                             keep_fraction=1.0 if rows is None else len(rows) / module.out_features)
            if rows is None and cols is None:
                small = i not in self.prunable and i < len(layers) - 1
                row.update(action="skip_small" if small else "keep", note=(too_small(module, self.min_size) or
                                                                           "not selected") if small else note)
            else:
                new = keep_units(module, rows, cols)
                model.set_submodule(name, new)
                record_replacement(event, module, new)
                row.update(action="shrink", params_after=param_count(new))
            event.records.append(row)
        return event
