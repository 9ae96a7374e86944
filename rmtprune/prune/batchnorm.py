"""BatchNorm statistics after a cut.

A pruning event changes the layers in front of every BatchNorm, but not the running mean and variance
it normalises with in eval mode: those describe the activations of the network before the cut, and
the accuracy measured right after it (``test_acc_after_event``) falls for that reason alone. Recomputing
them on a few training batches, in train mode and without any training step, removes that part:
:func:`recalibrate_bn`, done by ``torch.optim.swa_utils.update_bn`` (the running statistics reset, then
the plain average over the batches given, momentum restored after).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from rmtprune.prune.events import PruneEvent


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer that keeps running statistics."""
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable[Any], batches: int, event: PruneEvent | None = None) -> int:
    """Recompute the running statistics of every BatchNorm layer of ``model`` on the first ``batches``
    batches of ``loader`` (input tensors, or tuples / lists whose first item is the input, on the model's
    device), in train mode, with no gradient and no parameter change. Dropout masks are drawn from a fork
    of the RNG, so the training that follows draws what it would have without this call. The model's
    train / eval mode is restored.

    ``event``: the pruning event this follows; its ledger rows get ``recalibrate_bn`` = the number of
    batches used. Returns that number (0: no BatchNorm layer, or ``batches`` = 0; nothing done).

    Raises:
        ValueError: ``batches`` is not a non-negative integer.
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise ValueError(f"batches must be a non-negative integer, got {batches!r}")
    if batches == 0 or not has_batchnorm(model):
        return 0
    used = 0

    def counted() -> Iterator[Any]:
        nonlocal used
        for batch in itertools.islice(loader, batches):
            used += 1
            yield batch

    first = next(model.parameters(), None)
    devices = [first.device] if first is not None and first.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.optim.swa_utils.update_bn(counted(), model)
    if event is not None:
        for row in event.records:
            row["recalibrate_bn"] = used
    return used
