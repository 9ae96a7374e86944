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


class Encoder(nn.Module):
    """A transformer classifier: the image rows are the tokens (28 tokens of 28 features), PyTorch's own
    ``nn.TransformerEncoder`` (whose attention reads ``out_proj.weight``), a mean over tokens, a Linear head."""

    def __init__(self, d_model: int = 32, layers: int = 2, batch_first: bool = True, side: int = 28,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(side, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.1, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(1, 2))                   # (N, side, d): one token per image row
        if not self.batch_first:
            return self.head(self.encoder(tokens.transpose(0, 1)).mean(0))
        return self.head(self.encoder(tokens).mean(1))


class BNNet(Net):
    """Net with BatchNorm after the conv and the first hidden layer (as the reference CNN has)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__(hidden=hidden)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(8 * 13 * 13, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.relu(self.norm(self.conv(x)))))
