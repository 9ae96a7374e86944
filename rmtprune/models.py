"""The networks: an MLP from a topology and the reference CNN; their specs and rebuilding.

A model is described by a plain-data *spec* (stored in checkpoints) plus the ranks of the layers
that pruning split; :func:`build_model` turns both back into a module.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from .config import parse_topology
from .lowrank import LOW_RANK_TYPES, PRUNABLE_TYPES, LowRankConv2d, LowRankLinear

ModelSpec = dict[str, Any]


def init_paper_(module: nn.Module) -> None:
    """Weights N(0, 1 / fan_in), biases 0 (fan_in = in for Linear, in/groups * k * k for Conv2d)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MLP(nn.Module):
    """Linear layers of ``widths`` with ReLU between them and none on the logits. Input (N, ...) is flattened."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.widths = list(widths)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x


class CNN(nn.Module):
    """The reference CNN: [conv k x k -> ReLU -> BatchNorm -> (max-pool 2) -> dropout] per channel
    width, then Linear -> BatchNorm -> ReLU -> dropout -> Linear to the classes."""

    def __init__(self, input_shape: list[int], num_classes: int, channels: list[int], kernel_size: int,
                 pool_after: list[int], hidden: int, conv_dropout: float, fc_dropout: float) -> None:
        super().__init__()
        c, h, w = input_shape
        blocks: list[nn.Module] = []
        for i, width in enumerate(channels, start=1):
            blocks += [nn.Conv2d(c, width, kernel_size), nn.ReLU(), nn.BatchNorm2d(width)]
            h, w = h - kernel_size + 1, w - kernel_size + 1
            if i in pool_after:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            blocks.append(nn.Dropout(conv_dropout))
            c = width
            if h <= 0 or w <= 0:
                raise ValueError(f"the input {input_shape} is too small for {len(channels)} convs")
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Dropout(fc_dropout), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def model_spec(cfg: DictConfig) -> ModelSpec:
    """Plain-data description of the dense model the config asks for."""
    ds = cfg.dataset
    if cfg.model.name == "mlp":
        return {"kind": "mlp", "widths": parse_topology(cfg.topology)}
    m = cfg.model
    return {
        "kind": "cnn", "input_shape": list(ds.input_shape), "num_classes": int(ds.num_classes),
        "channels": list(m.channels), "kernel_size": int(m.kernel_size), "pool_after": list(m.pool_after),
        "hidden": int(m.hidden), "conv_dropout": float(m.conv_dropout), "fc_dropout": float(m.fc_dropout),
    }


def build_model(spec: ModelSpec, ranks: dict[str, int] | None = None) -> nn.Module:
    """Dense model from ``spec`` with the paper's init; layers named in ``ranks`` become factorised
    (uninitialised shells of that rank, to be filled by ``load_state_dict``)."""
    if spec["kind"] == "mlp":
        model: nn.Module = MLP(spec["widths"])
    elif spec["kind"] == "cnn":
        model = CNN(spec["input_shape"], spec["num_classes"], spec["channels"], spec["kernel_size"],
                    spec["pool_after"], spec["hidden"], spec["conv_dropout"], spec["fc_dropout"])
    else:
        raise ValueError(f"unknown model kind {spec['kind']!r}")
    init_paper_(model)
    for name, rank in (ranks or {}).items():
        model.set_submodule(name, factorised_like(model.get_submodule(name), int(rank)))
    return model


def factorised_like(dense: nn.Module, rank: int) -> nn.Module:
    """An empty LowRankLinear / LowRankConv2d with the dense layer's shape and the given rank."""
    if isinstance(dense, nn.Linear):
        return LowRankLinear(dense.in_features, dense.out_features, rank, bias=dense.bias is not None)
    if isinstance(dense, nn.Conv2d):
        return LowRankConv2d(dense.in_channels, dense.out_channels, dense.kernel_size, rank, stride=dense.stride,
                             padding=dense.padding, dilation=dense.dilation, groups=dense.groups,
                             bias=dense.bias is not None, padding_mode=dense.padding_mode)
    raise ValueError(f"cannot factorise a {type(dense).__name__}")


def factorised_ranks(model: nn.Module) -> dict[str, int]:
    """{layer name: rank} of the split layers, the part of the architecture pruning changed."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, LOW_RANK_TYPES)}


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear / Conv2d layers (dense or split), in forward order, factors not listed separately."""
    out: list[tuple[str, nn.Module]] = []
    skip: set[str] = set()
    for name, m in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(m, PRUNABLE_TYPES):
            out.append((name, m))
            if isinstance(m, LOW_RANK_TYPES):
                skip.add(name)
    return out


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
