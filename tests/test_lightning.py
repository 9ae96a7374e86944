"""The optional Lightning callback (runs when lightning is installed: pip install -e ".[lightning]")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from tests_support import lightning_nets  # noqa: E402

from rmtprune.integrations.lightning import RMTPruning  # noqa: E402
from rmtprune.nn.layers import LowRankLinear  # noqa: E402


class Classifier(lightning_nets.Classifier):
    """The user's LightningModule of tests_support (256 -> 200 -> 10, 6 planted spikes), with SGD in two
    parameter groups (no weight decay on biases) and a step lr scheduler."""

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if n.endswith("weight")]
        no_decay = [p for n, p in self.named_parameters() if n.endswith("bias")]
        opt = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=1e-3, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=100)}


class Snapshot(pl.Callback):
    """The hidden layer's first factor right after the event of each epoch (runs after RMTPruning)."""

    def __init__(self) -> None:
        self.after = {}

    def on_train_epoch_end(self, trainer, pl_module):
        layer = pl_module.net[0]
        if isinstance(layer, LowRankLinear):
            self.after[trainer.current_epoch + 1] = layer.first.weight.detach().clone()


def loader():
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=16)


def trainer(epochs: int, callbacks: list, tmp_path) -> "pl.Trainer":
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                      default_root_dir=str(tmp_path))


def test_callback_prunes_between_epochs_and_rebuilds_the_optimizer_groups_and_scheduler(tmp_path):
    module, snapshot = Classifier(), Snapshot()
    callback = RMTPruning(schedule="oneshot", min_size=1000, lr_factor=0.5)
    t = trainer(3, [callback, snapshot], tmp_path)
    t.fit(module, loader())
    assert [e.epoch for e in callback.events] == [1, 2]  # never after the last epoch
    assert isinstance(module.net[0], LowRankLinear) and module.net[0].rank == 6
    (opt,) = t.optimizers
    weights, biases = opt.param_groups
    assert {id(p) for p in weights["params"]} == {id(p) for n, p in module.named_parameters() if n.endswith("weight")}
    assert {id(p) for p in biases["params"]} == {id(p) for n, p in module.named_parameters() if n.endswith("bias")}
    assert weights["weight_decay"] == 1e-4 and biases["weight_decay"] == 0.0
    assert weights["lr"] == pytest.approx(1e-3 * 0.5 ** 2) and biases["lr"] == pytest.approx(1e-3 * 0.5 ** 2)
    assert t.lr_scheduler_configs[0].scheduler.optimizer is opt
    # the new factors were trained in epoch 3
    assert not torch.equal(snapshot.after[2], module.net[0].first.weight)
    assert callback.state_dict()["ranks"] == {"net.0": 6}


def test_callback_recalibrates_batchnorm_after_an_event(tmp_path):
    """A module with BatchNorm after the pruned layer: its running statistics are recomputed on the cut
    network (recalibrate_bn batches of the training loader) and the ledger records the batch count."""

    class WithBN(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(self.net[0], nn.BatchNorm1d(200), nn.ReLU(), self.net[2])

    x = torch.cat([b[0] for b, _ in zip(loader(), range(2))])  # the first 2 training batches (16 images each)
    seen = {}

    class AfterEvent(pl.Callback):  # runs after RMTPruning's event: the statistics and the cut layer then
        def on_train_epoch_end(self, trainer, pl_module):
            with torch.no_grad():
                seen[trainer.current_epoch + 1] = (pl_module.net[1].running_mean.clone(), pl_module.net[0](x).mean(0))

    module = WithBN()
    callback = RMTPruning(schedule="oneshot", min_size=1000, recalibrate_bn=2)
    trainer(2, [callback, AfterEvent()], tmp_path).fit(module, loader())
    (event,) = callback.events
    assert isinstance(module.net[0], LowRankLinear)
    assert [r["recalibrate_bn"] for r in event.records if r["layer"] == "net.0"] == [2]
    running_mean, cut_mean = seen[1]
    assert torch.allclose(running_mean, cut_mean, atol=1e-5)


def test_a_lightning_checkpoint_of_a_pruned_module_resumes(tmp_path):
    first = RMTPruning(schedule="oneshot", min_size=1000)
    t = trainer(2, [first], tmp_path)
    t.fit(Classifier(), loader())
    path = tmp_path / "pruned.ckpt"
    t.save_checkpoint(path)
    module = Classifier()  # dense again: the callback factorises it before Lightning loads the weights
    resumed = RMTPruning(schedule="oneshot", min_size=1000)
    t2 = trainer(4, [resumed], tmp_path)
    t2.fit(module, loader(), ckpt_path=str(path))
    assert isinstance(module.net[0], LowRankLinear) and module.net[0].rank == 6
    assert [e.epoch for e in resumed.events] == [3]  # epochs 1-2 were done; epoch 4 is the last
    row = {r["layer"]: r for r in resumed.events[0].records}["net.0"]
    # the pruner's state came back from the checkpoint: the spikes found at epoch 1 are known
    assert row["rank_before"] == 6 and row["n_known_spikes"] == 6 == first.pruner.state_dict()["known_spikes"]["net.0"]


def test_pruner_and_keywords_are_exclusive_and_checked():
    from rmtprune import RMTPruner

    with pytest.raises(ValueError, match="either pruner= or"):
        RMTPruning(RMTPruner(), tolerance=0.1)
    with pytest.raises(ValueError, match="tolerance"):
        RMTPruning(tolerance=2.0)
