"""Magnitude-pruning baseline: zero the weights with |w| <= tau, count what is left, evaluate.

The sweep of the reference notebook, done with ``torch.nn.utils.prune`` (global, unstructured,
L1) on a copy of the final model, so the run's own model is never changed.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from .evaluate import evaluate

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
                    batch_size: int = 4096) -> list[dict[str, Any]]:
    """Rows (sparsity, tau, n_nonzero, n_params, test_loss, test_acc), one per sparsity level.

    ``n_nonzero`` counts every non-zero parameter (biases and normalisation included) after
    zeroing the ``sparsity`` share of Linear/Conv2d weights with the smallest magnitude; ``tau``
    is the largest magnitude zeroed.
    """
    all_w = torch.cat([m.weight.detach().abs().flatten() for m, _ in _weights(model)])
    sorted_w = torch.sort(all_w.float().cpu()).values
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    for s in sparsity_grid(n_thresholds):
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
    return rows
