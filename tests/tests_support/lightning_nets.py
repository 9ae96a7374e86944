"""A user's LightningModule for the checkpoint tests (tests/test_lightning_load.py), importable in a fresh
process: 256 -> 200 -> 10, the hidden layer holding 6 planted spikes."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from test_api import planted  # tests/ on sys.path, as pytest and the fresh processes of the tests have it
from torch import nn

import rmtprune


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(256, 200), nn.ReLU(), nn.Linear(200, 10))
        with torch.no_grad():
            self.net[0].weight.copy_(planted(200, 256, 6, seed=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3, momentum=0.9)


class LoadableClassifier(Classifier):
    """Classifier with the README's one line for ``load_from_checkpoint``."""

    def on_load_checkpoint(self, checkpoint):
        rmtprune.factorise_to_match(self, checkpoint["state_dict"])


def loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=16)


def trainer(epochs: int, callbacks: list, root: str) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, default_root_dir=root)
