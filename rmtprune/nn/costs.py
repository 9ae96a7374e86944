"""What a final model costs: storage, FLOPs and CPU inference latency beside its parameter count.

:func:`model_costs` gives the fields every run's ``summary.json`` records after training:

* ``model_bytes``: dense storage of the parameters and buffers as saved (``surgery.model_bytes``);
* ``model_bytes_csr`` (only with ``sparse_layers``, the layers of ``pruning=magnitude``): the same with
  those weights in CSR, int32 column indices and row pointers (``surgery.csr_bytes``);
* ``flops``: dense FLOPs per sample, 2 x multiply-adds of the Linear / Conv2d layers (``surgery.flops``);
* with ``latency=True`` (``cost.latency``): the median seconds of one forward pass on the CPU at batch 1
  and 256 (``latency_b1_s``, ``latency_b256_s``), the same for the dense model of the same architecture
  (``dense_latency_b*_s``), their ratios ``latency_b*_ratio`` = model / dense, and ``latency_threads``.

Latency: ``torch.utils.benchmark.Timer(...).blocked_autorange`` under ``torch.inference_mode`` on CPU
copies of both models in eval mode, with the process's torch thread count; at each batch size the dense
model and the model are timed in turn :data:`ROUNDS` times and each gets the median of its rounds'
medians. Measured after training, it never changes the run's results: the global RNG (the dense model's
init) is forked and restored.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch
from torch import nn

from rmtprune.nn.geometry import csr_bytes, flops, model_bytes

BATCH_SIZES = (1, 256)


MIN_RUN_TIME = 0.25  # seconds of timing per model, batch size and round (blocked_autorange)


ROUNDS = 3  # dense and model timed in turn, ROUNDS times: drift (other jobs, clocks) hits both alike


def median_latency(model: nn.Module, x: torch.Tensor, threads: int) -> float:
    """Median seconds of ``model(x)`` (no autograd) over blocks of ``blocked_autorange``."""
    from torch.utils import benchmark

    timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
    with torch.inference_mode():
        return float(timer.blocked_autorange(min_run_time=MIN_RUN_TIME).median)


def latencies(model: nn.Module, dense: nn.Module, input_shape: list[int]) -> dict[str, Any]:
    """CPU latency of ``model`` and of ``dense`` at each of :data:`BATCH_SIZES` (see the module doc)."""
    threads = torch.get_num_threads()
    model, dense = (copy.deepcopy(m).cpu().float().eval() for m in (model, dense))
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"latency_threads": threads}
    for b in BATCH_SIZES:
        x = torch.randn(b, *input_shape, generator=gen)
        rounds = [(median_latency(dense, x, threads), median_latency(model, x, threads)) for _ in range(ROUNDS)]
        base, own = (statistics.median(t) for t in zip(*rounds))
        out.update({f"latency_b{b}_s": own, f"dense_latency_b{b}_s": base, f"latency_b{b}_ratio": own / base})
    return out


def model_costs(model: nn.Module, spec: dict[str, Any], input_shape: list[int], *,
                sparse_layers: list[str] | None = None, latency: bool = True) -> dict[str, Any]:
    """The cost fields of ``model`` for summary.json (see the module doc); ``spec`` builds the dense model
    of the same architecture (``models.build_model``) that latency is measured against."""
    out: dict[str, Any] = {"model_bytes": model_bytes(model)}
    if sparse_layers is not None:
        out["model_bytes_csr"] = csr_bytes(model, sparse_layers)
    out["flops"] = flops(model, input_shape)
    if latency:
        from rmtprune.nn.models import build_model

        with torch.random.fork_rng(devices=[]):
            dense = build_model(spec)
        out.update(latencies(model, dense, input_shape))
    return out
