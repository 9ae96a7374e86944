"""``split=auto``: a deterministic cost model of whether a cut layer is cheaper as two thin factors.

A layer cut to rank r is either split (``LowRankLinear`` / ``LowRankConv2d``: two layers) or truncated
in place (one dense layer of the same shape). Two thin GEMMs or convolutions are not cheaper at every
shape: each call has a fixed cost, and a layer with few channels is bound by the memory traffic of its
activations, which the split adds to (its r intermediate channels are written and read back). The
cost of one call on a batch of B samples, in multiply-accumulate equivalents (MACs), for a layer that
runs at P positions per sample (1 for a Linear on a vector, the tokens for one on a sequence,
H_out W_out for a Conv2d), with in / out channels, kernel kh x kw, groups g::

    dense:  B P [out (in / g) kh kw + MU (in + out)          + NU]      + KAPPA
    split:  B P [r (in kh kw + out)  + MU (in + 2 g r + out) + 2 NU]    + 2 KAPPA

(the split's first factor is a kh x kw conv in -> g r, its second a grouped 1 x 1 conv g r -> out): the
FLOPs, the activations read and written, and a per-layer overhead of NU per position and KAPPA per call.
The constants are the non-negative least-squares fit (in relative error) of measured CPU times, one
thread, of mobilenet_v3_small's and the paper's MLP's layers at batch 64 (``benchmarks/bench_split.py``
prints its fit next to these; it gave MU 25.7, NU 3854, KAPPA 1.45e6 at about 31 GMAC/s), rounded. They
are constants, never timings taken during a run, so a run's decisions depend only on its shapes and
batch size and stay reproducible. What they say: a thin 1 x 1 conv of a depthwise-heavy block
(mobilenet's 16-144 channels) or a squeeze-excitation layer on one position per sample is memory- and
call-bound, and two of them cost more than one; a wide Linear is FLOP-bound, and its split pays off
down to a rank close to the one where it stops saving parameters.

``split=always`` splits whenever the split has fewer parameters (the rule before this option);
``never`` always truncates in place; ``auto`` splits only where the split has fewer parameters and a
lower cost. A layer already split is always re-split (its cost only falls as its rank does). A layer
whose module is never called in the forward pass (``nn.MultiheadAttention.out_proj``: the attention reads
its ``weight``) gains nothing from a split, which only adds the product of the factors: ``auto`` keeps
it dense.

The positions P come from one forward pass of ``example_input`` (one sample, batch of 1) with hooks on
the prunable layers, in eval mode with gradients on (so that no fused inference path skips a layer's
call, no BatchNorm statistic moves and no random number is drawn).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rmtprune.nn.geometry import layer_groups, layer_matrix_shape, split_weight_count, weight_count
from rmtprune.nn.layers import LOW_RANK_TYPES
from rmtprune.nn.select import prunable_layers

SPLITS = ("always", "auto", "never")


MU = 25.0          # MACs per activation element read or written


NU = 4000.0        # MACs per position per layer call


KAPPA = 1.5e6      # MACs per layer call


def layer_positions(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """{layer: positions per sample} of the prunable layers called by ``model(example_input)`` (a batch of
    one sample): output elements / output channels. Layers not called (their weight read by the parent)
    are absent. Leaves the model's mode, its buffers and the RNG as they were."""
    found: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            found[name] = found.get(name, 0) + out.numel() // layer_matrix_shape(module)[0]
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in prunable_layers(model)]
    was_training = model.training
    first = next(model.parameters())
    try:
        model.eval()
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            model(example_input.to(device=first.device, dtype=first.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found


def kernel_area(module: nn.Module) -> int:
    """kh kw of a conv (dense or split); 1 for a Linear."""
    size = getattr(module, "kernel_size", (1, 1))
    return int(size[0]) * int(size[1])


def dense_cost(module: nn.Module, positions: int, batch_size: int) -> float:
    """MACs of one call of the dense (or truncated) layer on a batch (see the module docstring)."""
    out, m = layer_matrix_shape(module)
    n_in = m * layer_groups(module) // kernel_area(module)
    return batch_size * positions * (out * m + MU * (n_in + out) + NU) + KAPPA


def split_cost(module: nn.Module, rank: int, positions: int, batch_size: int) -> float:
    """MACs of one call of the two factors at ``rank`` (per group) on a batch (see the module docstring)."""
    out, m = layer_matrix_shape(module)
    g = layer_groups(module)
    n_in = m * g // kernel_area(module)
    return (batch_size * positions * (split_weight_count(module, rank) + MU * (n_in + 2 * g * rank + out) + 2 * NU)
            + 2 * KAPPA)


class SplitRule:
    """Whether a cut may split a layer (``split=always|auto|never``, see the module docstring).

    Args:
        mode: ``"always"``, ``"auto"`` or ``"never"``.
        batch_size: the batch size the costs are compared at (``auto``; the run's training batch).
        example_input: one input sample as a batch of 1, in the model's layout (``auto``), e.g.
            ``torch.zeros(1, 3, 224, 224)``.

    Raises:
        ValueError: an unknown mode, or ``auto`` without a positive batch size and an example input.
    """

    def __init__(self, mode: str = "always", batch_size: int | None = None,
                 example_input: torch.Tensor | None = None) -> None:
        if mode not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {mode!r}")
        if mode == "auto" and (not isinstance(batch_size, int) or batch_size < 1 or example_input is None):
            raise ValueError("split='auto' compares costs at the run's batch size on its input shape: give "
                             "batch_size= (a positive integer) and example_input= (one sample as a batch of 1)")
        self.mode, self.batch_size, self.example_input = mode, batch_size, example_input
        self._positions: dict[str, int] = {}
        self._probed: set[str] = set()

    def positions(self, model: nn.Module, name: str) -> int | None:
        """Positions per sample of layer ``name`` (None: not called in the forward pass); probed once."""
        if name not in self._probed:
            self._positions = layer_positions(model, self.example_input)
            self._probed = {n for n, _ in prunable_layers(model)}
        return self._positions.get(name)

    def decide(self, model: nn.Module, name: str, module: nn.Module, rank: int) -> tuple[bool, str]:
        """(whether cutting layer ``name`` to ``rank`` may split it, the reason when it may not). A split
        that would not save parameters is not this rule's business (True, "")."""
        if self.mode == "always" or isinstance(module, LOW_RANK_TYPES) \
                or split_weight_count(module, rank) >= weight_count(module):
            return True, ""
        if self.mode == "never":
            return False, "split=never: truncated in place"
        positions = self.positions(model, name)
        if positions is None:
            return False, ("split=auto: the forward pass reads this layer's weight instead of calling it, so a "
                           "split would only add the product of its factors: truncated in place")
        dense, split = dense_cost(module, positions, self.batch_size), split_cost(module, rank, positions,
                                                                                  self.batch_size)
        if split < dense:
            return True, ""
        return False, (f"split=auto: two factors cost {split:.3g} MACs per batch of {self.batch_size} "
                       f"(x {positions} positions), the dense layer {dense:.3g}: truncated in place")
