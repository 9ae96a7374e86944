"""Layer geometry and parameter counting, the one home of both.

A prunable layer is read as a matrix ``W`` of shape ``(out, m)``: a Linear's ``(out_features, in_features)``,
a Conv2d's ``(out_channels, in_channels / groups * kh * kw)``; a factorised layer ``W = W2 @ W1`` of inner
rank ``r`` stores ``r (out + m)`` weights instead of ``out * m``. Everything that counts parameters, bytes or
FLOPs reads these shapes here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rmtprune.nn.layers import LOW_RANK_TYPES, LowRankConv2d, LowRankLinear

if TYPE_CHECKING:  # importing rmtprune (the Python API) must not import the config machinery
    pass


def count_parameters(model: nn.Module) -> int:
    """The model's parameter count: every entry of every parameter, less the entries a pruning mask zeroes.

    A parameter under a ``torch.nn.utils.prune`` mask (stored as ``<name>_orig`` with a buffer
    ``<name>_mask``, as ``pruning=magnitude`` keeps its layers while training) counts the entries its
    mask keeps (the non-zero parameters); every other parameter counts all its entries, zeros
    included, so a dense or split model's count does not depend on its values.
    """
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            mask = getattr(module, name[: -len("_orig")] + "_mask", None) if name.endswith("_orig") else None
            total += int(torch.count_nonzero(mask)) if isinstance(mask, torch.Tensor) else p.numel()
    return total


def is_conv(module: nn.Module) -> bool:
    """Whether a prunable layer is a convolution (dense or split)."""
    return isinstance(module, (nn.Conv2d, LowRankConv2d))


def layer_groups(module: nn.Module) -> int:
    return int(getattr(module, "groups", 1))


def weight_count(module: nn.Module) -> int:
    """Weight entries of the layer (biases excluded)."""
    if isinstance(module, LOW_RANK_TYPES):
        return module.first.weight.numel() + module.second.weight.numel()
    return module.weight.numel()


def param_count(module: nn.Module) -> int:
    """The layer's parameter count (models.count_parameters, the one home of parameter counting)."""
    return count_parameters(module)


def split_weight_count(module: nn.Module, rank: int) -> int:
    """Weights of the split form at ``rank``: r (groups * m + out)."""
    out, m = layer_matrix_shape(module)
    return split_params(out, m, rank, layer_groups(module))


def split_params(out: int, m: int, rank: int, groups: int = 1, bias: int = 0) -> int:
    """Parameters of a layer (out, m) split at ``rank``, from its shape alone: r (groups m + out) + bias."""
    return rank * (groups * m + out) + bias


def layer_matrix_shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, LowRankLinear):
        return module.out_features, module.in_features
    if isinstance(module, LowRankConv2d):
        kh, kw = module.kernel_size
        return module.out_channels, module.in_channels // module.groups * kh * kw
    w = module.weight
    return int(w.shape[0]), int(w[0].numel())


def planned_params(module: nn.Module, rank: int, action: str) -> int:
    """The layer's parameter count after :func:`apply_rank` took ``action`` at ``rank`` (without doing it):
    r (groups m + out) + bias for a split, unchanged otherwise."""
    if action != "split":
        return param_count(module)
    return split_weight_count(module, rank) + (module.bias.numel() if module.bias is not None else 0)


# Costs of a whole model, from its tensors and layer geometry (what ``summary.json`` records).
INDEX_BYTES = 4  # CSR column indices and row pointers as int32


def model_bytes(model: nn.Module) -> int:
    """Dense storage of the model as saved: sum of numel * element size over its state_dict (parameters
    and persistent buffers; a split layer holds its two factors)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def csr_bytes(model: nn.Module, layers: list[str]) -> int:
    """Storage with the weights of ``layers`` in CSR and the rest dense: a weight viewed as its (rows, m)
    matrix (:func:`layer_matrix`) with nnz non-zeros takes nnz * element size (values) + 4 nnz (int32
    column indices) + 4 (rows + 1) (int32 row pointers) bytes instead of rows * m * element size."""
    total = model_bytes(model)
    for name in layers:
        w = model.get_submodule(name).weight.detach()
        rows, nnz = w.shape[0], int(torch.count_nonzero(w))
        total += nnz * (w.element_size() + INDEX_BYTES) + INDEX_BYTES * (rows + 1) - w.numel() * w.element_size()
    return total


@torch.no_grad()
def flops(model: nn.Module, input_shape: list[int]) -> int:
    """Dense FLOPs per sample, 2 x the multiply-adds of every Linear and Conv2d (the factors of a split
    layer included): 2 * weight[0].numel() * output.numel() for one input of ``input_shape`` (Linear:
    2 in out per position; Conv2d: 2 (in / groups) kh kw * out H_out W_out). Biases, normalisation and
    activations are not counted. The output sizes come from one forward pass in eval mode."""
    total = 0

    def count(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * module.weight[0].numel() * output.numel()

    device = next(model.parameters()).device
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, device=device, dtype=_dtype(model)))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
