"""Magnitude-pruning baseline: zero the weights with |w| <= tau, count what is left, evaluate.

The sweep of the reference notebook, done with ``torch.nn.utils.prune`` (global, unstructured,
L1) on a copy of the final model, so the run's own model is never changed; and
:func:`prune_to_count`, which zeroes exactly as many weights as it takes to leave a given number
of non-zero parameters (the post-training baseline at a pruned arm's own parameter count).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from .evaluate import evaluate
from .models import count_parameters

COLUMNS = ["sparsity", "tau", "n_nonzero", "n_params", "test_loss", "test_acc"]


def sparsity_grid(n: int) -> list[float]:
    """n fractions of weights to zero, from 0 to 0.995, denser at high sparsity."""
    n = max(n, 2)
    low = np.linspace(0.0, 0.9, max(n // 2, 1), endpoint=False)
    high = 1.0 - np.geomspace(0.1, 0.005, n - low.size)
    return [float(v) for v in np.concatenate([low, high])]


def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@torch.no_grad()
def magnitude_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_thresholds: int = 25,
                    batch_size: int = 4096,
                    report: Callable[[int, int, float], None] | None = None) -> list[dict[str, Any]]:
    """Rows (sparsity, tau, n_nonzero, n_params, test_loss, test_acc), one per sparsity level.

    ``n_nonzero`` counts every non-zero parameter (biases and normalisation included) after
    zeroing the ``sparsity`` share of Linear/Conv2d weights with the smallest magnitude; ``tau``
    is the largest magnitude zeroed. ``report(done, total, seconds so far)`` is called after each level.
    """
    t0 = time.perf_counter()
    all_w = torch.cat([m.weight.detach().abs().flatten() for m, _ in _weights(model)])
    sorted_w = torch.sort(all_w.float().cpu()).values
    n_params = count_parameters(model)
    rows = []
    grid = sparsity_grid(n_thresholds)
    for s in grid:
        amount = int(round(s * sorted_w.numel()))
        work = copy.deepcopy(model)
        params = _weights(work)
        if amount > 0:
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
            for m, name in params:
                prune.remove(m, name)
        loss, acc = evaluate(work, x, y, batch_size)
        n_nonzero = int(sum(int(torch.count_nonzero(p)) for p in work.parameters()))
        tau = float(sorted_w[amount - 1]) if amount > 0 else 0.0
        rows.append({"sparsity": s, "tau": tau, "n_nonzero": n_nonzero, "n_params": n_params,
                     "test_loss": loss, "test_acc": acc})
        if report is not None:
            report(len(rows), len(grid), time.perf_counter() - t0)
    return rows


def count_nonzero(model: nn.Module) -> int:
    """Non-zero entries of every parameter (biases and normalisation included), as the model computes
    with them: under a ``torch.nn.utils.prune`` mask the masked weight ``w = w_orig * mask`` counts."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            value = getattr(module, name[: -len("_orig")]) if name.endswith("_orig") else p
            total += int(torch.count_nonzero(value))
    return total


@torch.no_grad()
def prune_to_count(model: nn.Module, target: int, keep_masks: bool = False) -> tuple[nn.Module, int]:
    """A copy of ``model`` with the smallest-magnitude Linear/Conv2d weights zeroed (global,
    unstructured, L1) so that exactly ``target`` parameters stay non-zero; returns (copy, count).

    With N non-zero parameters now, of which z weights are already zero, zeroing the k = N - target + z
    smallest |w| leaves N - (k - z) = target (``L1Unstructured`` takes exactly the k smallest, ties
    broken by position). The count is exact unless ``target`` is above N (nothing is pruned) or
    below the non-zero parameters outside the weights (every weight is pruned); the count returned
    says which. ``keep_masks``: leave the pruning masks on (for fine-tuning with pruned weights held
    at zero; ``prune.remove`` makes them permanent), else the zeros are written into the weights.
    """
    work = copy.deepcopy(model)
    params = _weights(work)
    n_weights = sum(m.weight.numel() for m, _ in params)
    zero_weights = sum(int((m.weight == 0).sum()) for m, _ in params)
    amount = min(max(count_nonzero(work) - int(target) + zero_weights, 0), n_weights)
    if amount > 0:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        if not keep_masks:
            for m, name in params:
                prune.remove(m, name)
    return work, count_nonzero(work)


def remove_masks(model: nn.Module) -> nn.Module:
    """Make every ``torch.nn.utils.prune`` mask of ``model`` permanent (in place); returns the model."""
    for m, name in _weights(model):
        if prune.is_pruned(m) and hasattr(m, f"{name}_orig"):
            prune.remove(m, name)
    return model
