"""A user's own networks, as ``rmtprune train model=custom model._target_=tests_support.nets.Net`` builds them.

They are written the way a user would write them: their own layers, their own (PyTorch default) init,
no rmtprune import.
"""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """A small conv + MLP classifier for (N, C, H, W) inputs: a 3x3 conv (stride 2), then Linear layers."""

    def __init__(self, hidden: int = 64, in_channels: int = 1, side: int = 28, num_classes: int = 10,
                 conv_channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, conv_channels, 3, stride=2)
        flat = conv_channels * ((side - 3) // 2 + 1) ** 2
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                  nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.relu(self.conv(x))))


class HeadFirst(Net):
    """Net with its output layer registered before the others (pruning would take the wrong layer for it)."""

    def __init__(self, hidden: int = 64) -> None:
        nn.Module.__init__(self)
        self.head = nn.Linear(hidden, 10)
        self.conv = nn.Conv2d(1, 8, 3, stride=2)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(8 * 13 * 13, hidden), nn.ReLU())


def not_a_module(hidden: int = 3) -> dict:
    return {"hidden": hidden}
