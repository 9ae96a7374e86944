"""Magnitude-pruning baseline: zero the weights with |w| <= tau, count what is left, evaluate.

The sweep of the reference notebook, done with ``torch.nn.utils.prune`` (global, unstructured,
L1) on a copy of the final model, so the run's own model is never changed; and
:func:`prune_to_count`, which zeroes exactly as many weights as it takes to leave a given number
of non-zero parameters (the post-training baseline at a pruned arm's own parameter count).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune


def weight_params(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


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
    params = weight_params(work)
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
    for m, name in weight_params(model):
        if prune.is_pruned(m) and hasattr(m, f"{name}_orig"):
            prune.remove(m, name)
    return model
