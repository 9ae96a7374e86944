"""Test-set evaluation: mean cross-entropy and accuracy (a fraction in [0, 1])."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on (x (N, ...), y (N,))."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        target = y[i : i + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(1) == target).sum()
    model.train(was_training)
    n = max(len(x), 1)
    return float(loss) / n, float(correct) / n
