"""The training step and epoch (one pass over the shuffled training set)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from .data import Data
from .errors import RunFailed
from .progress import BatchProgress


def configure_numerics(cfg: DictConfig, device: torch.device) -> None:
    """Process-wide numerics of a run (deterministic algorithms, precision); a no-op with the defaults."""


def train_epoch(model: nn.Module, data: Data, opt: torch.optim.Optimizer, gen: torch.Generator,
                batch_size: int, l1: float, progress: BatchProgress, epoch: int) -> tuple[float, float]:
    """One pass over the shuffled training set; returns (mean cross-entropy, accuracy).

    Raises RunFailed as soon as the loss is NaN or Inf.
    """
    model.train()
    n = len(data.train_x)
    perm = torch.randperm(n, generator=gen).to(data.train_x.device)
    n_batches = math.ceil(n / batch_size)
    params = [p for p in model.parameters()]
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.train_x.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.train_x.device)
    progress.start_epoch(epoch, n_batches)
    t0 = time.perf_counter()
    for b in range(n_batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        x, y = data.train_x[idx], data.train_y[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if l1 > 0:
            grads = [p.grad for p in params]
            torch._foreach_add_(grads, torch._foreach_sign(params), alpha=l1)
        opt.step()
        with torch.no_grad():
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.argmax(1) == y).sum()
        if b % 20 == 19 or b == n_batches - 1:
            seen = min((b + 1) * batch_size, n)
            mean = float(loss_sum) / seen
            if not math.isfinite(mean):
                raise RunFailed(f"the training loss became {mean} at epoch {epoch}, batch {b + 1}; "
                                f"try a smaller optimizer.lr")
            progress.update(b + 1, mean, float(correct) / seen, seen / max(time.perf_counter() - t0, 1e-9))
    return float(loss_sum) / n, float(correct) / n
