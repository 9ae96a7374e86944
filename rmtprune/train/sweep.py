"""The post-training magnitude sweep of every run: accuracy against sparsity when the final weights with the
smallest magnitudes are zeroed (magnitude_sweep.csv).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from rmtprune.nn.evaluate import evaluate
from rmtprune.nn.geometry import count_parameters
from rmtprune.nn.masks import weight_params
from rmtprune.runs.folder import MAGNITUDE_COLUMNS

COLUMNS = MAGNITUDE_COLUMNS  # magnitude_sweep.csv


def sparsity_grid(n: int) -> list[float]:
    """n fractions of weights to zero, from 0 to 0.995, denser at high sparsity."""
    n = max(n, 2)
    low = np.linspace(0.0, 0.9, max(n // 2, 1), endpoint=False)
    high = 1.0 - np.geomspace(0.1, 0.005, n - low.size)
    return [float(v) for v in np.concatenate([low, high])]


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
    all_w = torch.cat([m.weight.detach().abs().flatten() for m, _ in weight_params(model)])
    sorted_w = torch.sort(all_w.float().cpu()).values
    n_params = count_parameters(model)
    rows = []
    grid = sparsity_grid(n_thresholds)
    for s in grid:
        amount = int(round(s * sorted_w.numel()))
        work = copy.deepcopy(model)
        params = weight_params(work)
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
