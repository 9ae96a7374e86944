"""The training step and epoch, and the run-wide numerics settings (determinism, precision, compile).

One step on a batch (x (B, ...), y (B,)) is::

    logits = model(x)                                   # autocast to bfloat16 when precision=bf16
    loss   = cross_entropy(logits, y)                   # the reported loss: the L1/L2 terms enter as gradients
    g      = d loss / d theta                           # grads set to None before, so backward writes them fresh
    g     += l1 sign(theta) + 2 l2 theta                # L1 and weight decay (weight_decay = 2 l2 of the SGD group)
    buf    = momentum buf + g   (buf = g at the first step)
    theta -= lr buf

The update is one pass per parameter: on the CPU the ops run on cache-sized chunks of each tensor
(the same ATen kernels as ``torch.optim.SGD``, so the default run stays bitwise identical to the
unfused step; only the memory traffic shrinks), on CUDA as multi-tensor (foreach) kernels, and with
``compile=true`` as one Inductor kernel. The optimizer object stays a ``torch.optim.SGD``: its
``state`` holds the momentum buffers, so checkpoints and optimizer rebuilds are unchanged.

The host waits for the device only at logging points (every ``LOG_EVERY`` batches and at the end of
the epoch), where the running loss is read and checked for NaN / Inf.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from rmtprune.data import Data
from rmtprune.errors import RunFailed
from rmtprune.train.progress import BatchProgress

if TYPE_CHECKING:
    from rmtprune.config.build import RunSettings

LOG_EVERY = 20  # batches between logging points (progress bar, NaN check): the only host syncs


# Elements per chunk of the CPU update: 2^18 fp32 = 1 MiB per tensor, so the five streams of one
# chunk (parameter, gradient, momentum, sign scratch and their writes) stay in the L2/L3 cache.
CPU_CHUNK = 1 << 18


CUBLAS_DETERMINISTIC = ":4096:8"  # cuBLAS workspace setting required for deterministic CUDA matmuls


COMPILE_RECOMPILE_LIMIT = 64  # pruning changes shapes at every event; each shape is one (re)compile


def configure_numerics(settings: RunSettings, device: torch.device) -> dict[str, Any]:
    """Apply the run's ``deterministic``, ``precision`` and ``compile`` process-wide, once per run.

    * deterministic=true: ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic
      kernel raises), ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless already set), cuDNN deterministic
      and not benchmarking; false restores PyTorch's defaults.
    * precision=tf32: TF32 matmuls and convolutions on CUDA; fp32 and bf16 keep fp32 matmuls (also
      cuDNN convolutions, whose PyTorch default is TF32). No effect on the CPU.
      precision=bf16 autocasts the forward pass (see :class:`TrainStep`).
    * compile=true: raises TorchDynamo's recompile limit (each pruned shape compiles once).

    Returns what was set, for the run's summary.
    """
    deterministic, precision, compile_step = settings.deterministic, settings.precision, settings.compile
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    tf32 = precision == "tf32"
    _set_tf32(tf32)
    if compile_step:
        import torch._dynamo.config as dynamo_config

        for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(int(getattr(dynamo_config, name)), COMPILE_RECOMPILE_LIMIT))
                break
    info: dict[str, Any] = {"device": str(device), "deterministic": deterministic, "precision": precision,
                            "compile": compile_step, "tf32": tf32 and device.type == "cuda",
                            "autocast": "bfloat16" if precision == "bf16" else None}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    return info


def _set_tf32(on: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions. The ``allow_tf32`` flags, not the newer
    ``fp32_precision`` ones: setting these keeps both views consistent, whereas setting the new ones
    makes a later read of ``allow_tf32`` (by Inductor, say) an error in recent PyTorch."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16: ``torch.autocast`` to bfloat16 on the device (matmuls and convolutions in bf16, the loss
    in fp32); fp32 / tf32: no autocast."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _chunks(t: torch.Tensor, size: int) -> list[torch.Tensor]:
    flat = t.view(-1)
    return [flat[i : i + size] for i in range(0, flat.numel(), size)]


@torch.no_grad()
def update_chunked_(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor | None],
                    lr: float, momentum: float, weight_decay: float, l1: float,
                    chunk: int | None = None, scratch: torch.Tensor | None = None) -> list[torch.Tensor | None]:
    """The CPU update, chunk by chunk (same kernels and rounding as ``torch.optim.SGD``); returns the
    momentum buffers (new ones where ``bufs`` had None). ``scratch``: a float32 buffer of at least
    ``chunk`` elements for sign(theta), reused across steps."""
    size = int(chunk or CPU_CHUNK)
    if scratch is None or scratch.numel() < size:
        scratch = torch.empty(size, dtype=torch.float32)
    out: list[torch.Tensor | None] = []
    for p, g, buf in zip(params, grads, bufs):
        if buf is None and momentum != 0:
            buf = _prepare_grad(p, g, weight_decay, l1).clone()
            p.add_(buf, alpha=-lr)
            out.append(buf)
            continue
        if not (p.is_contiguous() and g.is_contiguous() and (buf is None or buf.is_contiguous())
                and p.dtype == scratch.dtype):
            step = _prepare_grad(p, g, weight_decay, l1)
            if momentum != 0:
                step = buf.mul_(momentum).add_(step)
            p.add_(step, alpha=-lr)
            out.append(buf)
            continue
        ps, gs = _chunks(p, size), _chunks(g, size)
        bs = _chunks(buf, size) if buf is not None else [None] * len(ps)
        for pc, gc, bc in zip(ps, gs, bs):
            if l1 != 0:
                s = scratch[: pc.numel()]
                torch.sign(pc, out=s)
                gc.add_(s, alpha=l1)
            if weight_decay != 0:
                gc.add_(pc, alpha=weight_decay)
            if bc is not None:
                bc.mul_(momentum).add_(gc)
                pc.add_(bc, alpha=-lr)
            else:
                pc.add_(gc, alpha=-lr)
        out.append(buf)
    return out


def _prepare_grad(p: torch.Tensor, g: torch.Tensor, weight_decay: float, l1: float) -> torch.Tensor:
    """g + l1 sign(p) + weight_decay p, in place in g (same order of roundings as the chunked path)."""
    if l1 != 0:
        g.add_(torch.sign(p), alpha=l1)
    if weight_decay != 0:
        g.add_(p, alpha=weight_decay)
    return g


@torch.no_grad()
def update_foreach_(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor | None],
                    lr: float, momentum: float, weight_decay: float, l1: float) -> list[torch.Tensor | None]:
    """The same update as multi-tensor kernels (one launch per op for all parameters: the CUDA path)."""
    if l1 != 0:
        torch._foreach_add_(grads, torch._foreach_sign(params), alpha=l1)
    if weight_decay != 0:
        torch._foreach_add_(grads, params, alpha=weight_decay)
    if momentum == 0:
        torch._foreach_add_(params, grads, alpha=-lr)
        return list(bufs)
    new = [i for i, b in enumerate(bufs) if b is None]
    out = list(bufs)
    for i in new:
        out[i] = grads[i].clone()
    old = [i for i, b in enumerate(bufs) if b is not None]
    if old:
        ob = [out[i] for i in old]
        torch._foreach_mul_(ob, momentum)
        torch._foreach_add_(ob, [grads[i] for i in old])
    torch._foreach_add_(params, out, alpha=-lr)
    return out


def _update_tensor_lr(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor],
                      lr: torch.Tensor, momentum: float, weight_decay: float, l1: float) -> None:
    """The update with every momentum buffer present and lr a 0-d tensor (so a new lr does not
    recompile): the body ``torch.compile`` fuses into one kernel."""
    for p, g, b in zip(params, grads, bufs):
        d = g + l1 * torch.sign(p) + weight_decay * p
        b.mul_(momentum).add_(d)
        p.sub_(lr * b)


_compiled_update: Callable[..., None] | None = None


_compiled_forward: dict[str, Callable[..., Any]] = {}


def _forward_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def _compiled_parts(device: torch.device) -> tuple[Callable[..., Any], Callable[..., None]]:
    """torch.compile of the forward + loss (CUDA graphs on CUDA: mode reduce-overhead) and of the
    update; compiled once per process, recompiled by TorchDynamo's guards when shapes change."""
    global _compiled_update
    mode = "reduce-overhead" if device.type == "cuda" else None
    if device.type not in _compiled_forward:
        _compiled_forward[device.type] = torch.compile(_forward_loss, mode=mode)
    if _compiled_update is None:
        _compiled_update = torch.compile(_update_tensor_lr)
    return _compiled_forward[device.type], _compiled_update


class TrainStep:
    """One training step of ``model`` with ``opt`` (a ``torch.optim.SGD``) and L1 strength ``l1``:
    ``step(x, y) -> (loss, correct)``, both 0-d tensors on the device, nothing read back to the host.

    precision: fp32 | tf32 | bf16 (autocast of the forward pass); compile: torch.compile the forward,
    loss and update (the backward through AOTAutograd).
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, l1: float, precision: str = "fp32",
                 compile: bool = False) -> None:
        self.model, self.opt, self.l1 = model, opt, float(l1)
        first = next(model.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.precision = precision
        self.compile = bool(compile)
        self._lr_tensor: torch.Tensor | None = None
        self._scratch: torch.Tensor | None = None
        if self.compile:
            self._forward, self._update_compiled = _compiled_parts(self.device)
        else:
            self._forward = _forward_loss
        self._fused = _is_plain_sgd(opt)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.opt.zero_grad(set_to_none=True)
        if self.compile and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        with autocast_for(self.precision, self.device):
            loss, logits = self._forward(self.model, x, y)
        loss.backward()
        self._update()
        with torch.no_grad():
            correct = (logits.argmax(1) == y).sum()
        return loss.detach(), correct

    def _update(self) -> None:
        if not self._fused:  # an optimizer this step does not fuse: L1 on the grads, then its own step
            params = [p for g in self.opt.param_groups for p in g["params"] if p.grad is not None]
            if self.l1 != 0 and params:
                with torch.no_grad():
                    torch._foreach_add_([p.grad for p in params], torch._foreach_sign(params), alpha=self.l1)
            self.opt.step()
            return
        for group in self.opt.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            momentum, wd, lr = float(group["momentum"]), float(group["weight_decay"]), float(group["lr"])
            bufs = [self.opt.state[p].get("momentum_buffer") for p in params] if momentum != 0 else [None] * len(params)
            if self.compile and momentum != 0 and all(b is not None for b in bufs):
                if self._lr_tensor is None:
                    self._lr_tensor = torch.zeros((), dtype=torch.float32, device=self.device)
                with torch.no_grad():
                    self._lr_tensor.fill_(lr)
                    self._update_compiled(params, grads, bufs, self._lr_tensor, momentum, wd, self.l1)
                continue
            if self.device.type == "cpu":
                if self._scratch is None:
                    self._scratch = torch.empty(CPU_CHUNK, dtype=torch.float32)
                bufs = update_chunked_(params, grads, bufs, lr, momentum, wd, self.l1, scratch=self._scratch)
            else:
                bufs = update_foreach_(params, grads, bufs, lr, momentum, wd, self.l1)
            if momentum != 0:
                for p, b in zip(params, bufs):
                    self.opt.state[p]["momentum_buffer"] = b


def _is_plain_sgd(opt: torch.optim.Optimizer) -> bool:
    """SGD with the options this step fuses (no nesterov, dampening, maximize, differentiable, tensor lr)."""
    if type(opt) is not torch.optim.SGD:
        return False
    return all(not g.get("nesterov") and not g.get("dampening") and not g.get("maximize")
               and not g.get("differentiable") and not torch.is_tensor(g.get("lr"))
               and not torch.is_tensor(g.get("weight_decay")) for g in opt.param_groups)


def train_epoch(model: nn.Module, data: Data, opt: torch.optim.Optimizer, gen: torch.Generator,
                batch_size: int, l1: float, progress: BatchProgress, epoch: int, *, precision: str = "fp32",
                compile: bool = False, lr_scale: Callable[[int], float] | None = None) -> tuple[float, float]:
    """One pass over the training set in the order ``randperm(N, generator=gen)``; returns
    (mean cross-entropy, accuracy) over the epoch. ``lr_scale``: batch b is taken at the lr of the
    optimizer's groups times ``lr_scale(b)`` (the final anneal, events.anneal_scale); the groups' lr is
    restored after the epoch.

    Raises RunFailed at the first logging point where the running loss is NaN or Inf.
    """
    model.train()
    device = data.train_x.device
    n = len(data.train_x)
    perm = torch.randperm(n, generator=gen).to(device)
    n_batches = math.ceil(n / batch_size)
    step = TrainStep(model, opt, l1, precision=precision, compile=compile)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    progress.start_epoch(epoch, n_batches)
    t0 = time.perf_counter()
    base_lr = [group["lr"] for group in opt.param_groups]
    for b in range(n_batches):
        if lr_scale is not None:
            for group, lr in zip(opt.param_groups, base_lr):
                group["lr"] = lr * lr_scale(b)
        idx = perm[b * batch_size : (b + 1) * batch_size]
        x, y = data.train_x[idx], data.train_y[idx]
        loss, hits = step(x, y)
        loss_sum += loss.double() * len(y)
        correct += hits
        if b % LOG_EVERY == LOG_EVERY - 1 or b == n_batches - 1:
            seen = min((b + 1) * batch_size, n)
            mean = float(loss_sum) / seen
            if not math.isfinite(mean):
                raise RunFailed(f"the training loss became {mean} at epoch {epoch}, batch {b + 1}; "
                                f"try a smaller optimizer.lr")
            progress.update(b + 1, mean, float(correct) / seen, seen / max(time.perf_counter() - t0, 1e-9))
    for group, lr in zip(opt.param_groups, base_lr):
        group["lr"] = lr
    return float(loss_sum) / n, float(correct) / n
