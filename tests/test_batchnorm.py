"""BatchNorm statistics after a cut (issue 21, point 4): rmtprune.recalibrate_bn and pruning.recalibrate_bn."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from tests_support.configs import compose_config
from torch import nn

import rmtprune
from rmtprune.config.identity import config_key
from rmtprune.config.validate import custom_model_overrides


def gaussian_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 Gaussian classes in 64 dimensions around a common offset 2 (so a cut moves the pre-BN means)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 64, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, 4, (n,), generator=g)
    return 2.0 + means[y] + torch.randn(n, 64, generator=g), y


def trained_bn_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 256),
                        nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 4))
    x, y = gaussian_classes(2048, seed=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for i in range(100):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(x)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, x


def accuracy(model: nn.Module) -> float:
    x, y = gaussian_classes(1024, seed=2)
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_accuracy_right_after_a_cut_recovers_with_recalibrated_statistics():
    net, x = trained_bn_net()
    assert accuracy(net) > 0.99
    event = rmtprune.prune_model(net, keep_fraction=0.0, tolerance=1.0, min_size=1000, include_output_layer=False)
    assert {r["action"] for r in event.records} == {"split"}
    stale = accuracy(net)
    rng = torch.get_rng_state()
    used = rmtprune.recalibrate_bn(net, (x[i : i + 128] for i in range(0, len(x), 128)), 8, event)
    assert used == 8 and all(r["recalibrate_bn"] == 8 for r in event.records)
    assert torch.equal(torch.get_rng_state(), rng) and not net.training  # dropout drew from a fork; mode kept
    # the running mean is now the mean of the cut layer's outputs over the 8 x 128 samples (equal batches)
    with torch.no_grad():
        torch.testing.assert_close(net[1].running_mean, net[0](x[:1024]).mean(0), rtol=1e-5, atol=1e-5)
    recalibrated = accuracy(net)
    assert stale < 0.85 and recalibrated > 0.95, (stale, recalibrated)


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    before = copy.deepcopy(model.state_dict())
    event = rmtprune.PruneEvent(1, records=[{"layer": "0"}])
    assert rmtprune.recalibrate_bn(model, [torch.randn(4, 10)], 5, event) == 0
    assert "recalibrate_bn" not in event.records[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="batches must be a non-negative integer"):
        rmtprune.recalibrate_bn(model, [], -1)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_training_loop_recalibrates_after_each_event_and_records_it(cli, tmp_path):
    base = [a for a in TINY if not a.startswith(("topology=", "pruning="))] + [
        "model=custom", "model._target_=tests_support.nets.BNNet", "model.hidden=32", "epochs=3", "batch_size=100",
        "pruning=rmt", "pruning.tolerance=1.0", "pruning.min_size=1000", "schedule=constant", "schedule.value=0.25"]
    for folder, extra in (("on", []), ("off", ["pruning.recalibrate_bn=0"])):
        code, out, err = cli("train", *custom_model_overrides([*base, *extra, f"hydra.run.dir={folder}"]))
        assert code == 0, err
    on, off = read_csv(tmp_path / "on" / "layers.csv"), read_csv(tmp_path / "off" / "layers.csv")
    # 20 batches asked, 5 in a training set of 500 at batch 100, after the event that cut (epoch 1); the event
    # after epoch 2 (the same keep fraction) changed nothing, and nothing was recalibrated
    assert {r["recalibrate_bn"] for r in on if r["epoch"] == "1"} == {"5"} and "split" in {r["action"] for r in on}
    assert {r["recalibrate_bn"] for r in on if r["epoch"] == "2"} == {""} and {r["recalibrate_bn"] for r in off} == {""}
    m_on, m_off = read_csv(tmp_path / "on" / "metrics.csv"), read_csv(tmp_path / "off" / "metrics.csv")
    assert m_on[0]["test_acc"] == m_off[0]["test_acc"]  # the same run up to the first event
    assert m_on[0]["test_loss_after_event"] != m_off[0]["test_loss_after_event"]  # measured on recalibrated BN


@pytest.mark.slow
def test_recalibrate_bn_is_out_of_the_identity_of_mlp_runs_only():
    mlp = compose_config("pruning=rmt")
    assert config_key(mlp) == config_key(compose_config("pruning=rmt", "pruning.recalibrate_bn=0"))
    cnn = compose_config("pruning=rmt", "model=cnn")
    assert config_key(cnn) != config_key(compose_config("pruning=rmt", "model=cnn", "pruning.recalibrate_bn=0"))
