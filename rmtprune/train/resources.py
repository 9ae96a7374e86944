"""Will a run fit? The model is built on PyTorch's ``meta`` device (shapes, no memory) to check that it
can be built and count its parameters and activations, and a lower bound on the memory the run needs
is compared with what is available, before anything is allocated.

With P parameters, A activations per sample (the outputs of every leaf module), the largest layer
output M per sample, batch sizes b (training) and b_e (evaluation) and D data values (train and test
sets, float32), a run needs at least, in bytes,

    on the training device:  4 (3 P + D + max(b A, b_e M))     (weights, gradients, SGD momentum)
    on the host as well:     4 (D + 2 P)  for a GPU run         (the data before it moves; checkpoint copies)

This is a lower bound (allocator overhead, temporaries and the data's uint8 originals come on top), so
a run it refuses could not have trained.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rmtprune.config.build import Job
from rmtprune.data import DataSettings
from rmtprune.errors import UserError
from rmtprune.nn.models import ModelSpec, build_model

FLOAT_BYTES = 4


# Samples each real data set loads whole before dataset.train_size / test_size take subsets.
REAL_SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000)}


SYNTHETIC_DEFAULTS = (2000, 1000)  # data.make_synthetic's sizes when train_size / test_size are null


@dataclass
class Footprint:
    """Sizes of a model: parameters, activations per sample (all leaf outputs), the largest output per sample."""

    params: int
    activations: int
    largest: int


def skeleton(spec: ModelSpec, data: DataSettings) -> nn.Module | None:
    """The built-in model of ``spec`` with its parameters on the meta device (shapes, no memory, no random
    numbers drawn), or None for ``model=custom`` (its constructor is the user's). A model that cannot be built
    for the data set's input (``model.kernel_size=20`` on 28 x 28 images) is a UserError."""

    if spec["kind"] not in ("mlp", "cnn"):
        return None
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # "initializing zero-element tensors is a no-op": meta tensors
            return build_model(spec).eval()
    except (ValueError, RuntimeError) as exc:
        raise _unbuildable(spec, data, exc) from None


def _unbuildable(spec: ModelSpec, data: DataSettings, exc: BaseException) -> UserError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    what = (f"model=cnn with model.kernel_size={spec['kernel_size']}, model.channels={list(spec['channels'])}, "
            f"model.pool_after={list(spec['pool_after'])}" if spec["kind"] == "cnn"
            else f"topology={'-'.join(str(w) for w in spec['widths'])}")
    return UserError(f"{what} cannot be built for dataset={data.name} (input {list(data.input_shape)}): {first}; each "
                     f"k x k convolution (no padding) takes k - 1 pixels off each side length, each pool halves it")


def model_footprint(model: nn.Module | None, spec: ModelSpec, data: DataSettings) -> Footprint | None:
    """The sizes of ``model`` (its :func:`skeleton`; None: nothing to measure) from one batch of 2 (eval mode)."""
    if model is None:
        return None
    outputs: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o[0].numel()))
             for m in model.modules() if not list(m.children())]
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            logits = model(torch.empty(2, *data.input_shape))
    except (ValueError, RuntimeError) as exc:
        raise _unbuildable(spec, data, exc) from None
    finally:
        for hook in hooks:
            hook.remove()
    if tuple(logits.shape) != (2, data.num_classes):
        raise UserError(f"model={spec['kind']} gives {tuple(logits.shape[1:])} outputs per sample, dataset="
                        f"{data.name} has {data.num_classes} classes")
    params = sum(p.numel() for p in model.parameters())
    return Footprint(params, sum(outputs), max(outputs, default=0))


def data_values(data: DataSettings) -> int:
    """Float32 values of the train and test sets as loaded (before subsets for the real data sets)."""
    per_sample = math.prod(data.input_shape)
    if data.name in REAL_SIZES:
        n_train, n_test = REAL_SIZES[data.name]
    elif data.name == "synthetic":
        n_train = int(data.train_size or SYNTHETIC_DEFAULTS[0])
        n_test = int(data.test_size or SYNTHETIC_DEFAULTS[1])
    else:
        n_train, n_test = int(data.train_size or 0), int(data.test_size or 0)
    return (n_train + n_test) * per_sample


def needed_bytes(job: Job, fp: Footprint | None, device: torch.device) -> dict[str, int]:
    """The lower bounds of the module docstring: ``{"device": ..., "host": ...}`` (one entry on the CPU)."""
    data = data_values(job.data)
    params = fp.params if fp else 0
    acts = max(job.run.batch_size * fp.activations, job.run.eval_batch_size * fp.largest) if fp else 0
    on_device = FLOAT_BYTES * (3 * params + data + acts)
    if device.type == "cpu":
        return {"host": on_device}
    return {"device": on_device, "host": FLOAT_BYTES * (data + 2 * params)}


def available_host_bytes() -> int | None:
    """Memory the system can still give (MemAvailable + free swap, within a cgroup limit); None if unknown."""
    total = None
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            info[name] = int(rest.split()[0]) * 1024
        total = info.get("MemAvailable", info.get("MemFree", 0)) + info.get("SwapFree", 0)
    except (OSError, ValueError, IndexError):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (OSError, ValueError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            total = min(total, int(limit) - used)
    except (OSError, ValueError):
        pass
    return total


def available_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None for other devices)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits(job: Job, fp: Footprint | None, device: torch.device, in_job: bool = False) -> None:
    """Refuse (UserError) a run whose lower bound (``fp``: its model's :func:`model_footprint`) exceeds the
    memory available. Before the jobs start (``in_job=False``) only the host is checked (no CUDA context in
    the launching process); in the job the GPU too."""
    need = needed_bytes(job, fp, device)
    checks = [("host", "memory", available_host_bytes())]
    if in_job and "device" in need:
        checks.append(("device", f"{device} memory", available_device_bytes(device)))
    for where, name, have in checks:
        if have is not None and need[where] > have:
            size = f"{fp.params:,} parameters, " if fp else ""
            values = data_values(job.data)
            raise UserError(f"this run needs at least {_gib(need[where])} of {name} ({size}{values:,} data "
                            f"values), more than the {_gib(have)} available; use a smaller topology / model, "
                            f"dataset.train_size or batch_size")
