"""pruning.split=always|auto|never and the cost model of rmtprune/cost.py (issue 21, point 8)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import rmtprune.nn.split_cost as cost
from rmtprune.errors import UserError
from rmtprune.nn.models import MLP
from rmtprune.nn.split_cost import SplitRule, layer_positions
from rmtprune.nn.surgery import apply_rank, layer_svd
from rmtprune.prune.lowrank import LowRankPruner
from rmtprune.prune.rmt import RMTPruner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def macs(module: nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of one forward pass, counted by PyTorch (FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("layer,x", [
    (nn.Linear(60, 40), torch.randn(8, 60)),
    (nn.Linear(60, 40), torch.randn(8, 5, 60)),                         # a sequence: 5 positions per sample
    (nn.Conv2d(12, 20, 3, stride=2, padding=1), torch.randn(8, 12, 11, 11)),
    (nn.Conv2d(12, 20, 3, groups=4), torch.randn(8, 12, 9, 9)),
])
def test_the_flop_terms_are_the_multiply_accumulates_pytorch_counts(layer, x, monkeypatch):
    for name in ("MU", "NU", "KAPPA"):
        monkeypatch.setattr(cost, name, 0.0)
    positions = layer_positions(nn.Sequential(layer), x[:1])["0"]
    assert cost.dense_cost(layer, positions, len(x)) == macs(layer, x)
    factors = apply_rank(layer, 3, 12, layer_svd(layer)).module
    assert cost.split_cost(layer, 3, positions, len(x)) == macs(factors, x)


def test_auto_splits_a_wide_layer_until_close_to_where_the_split_stops_saving_parameters():
    model = MLP([1000, 1000, 10])
    rule = SplitRule("auto", 128, torch.zeros(1, 1000))
    layer = model.layers[0]
    assert rule.decide(model, "layers.0", layer, 50) == (True, "")
    ok, why = rule.decide(model, "layers.0", layer, 499)  # 499 x 2000 < 1000 x 1000 weights, but not cheaper
    assert not ok and why.startswith("split=auto: two factors cost")
    assert SplitRule("never").decide(model, "layers.0", layer, 50) == (False, "split=never: truncated in place")
    assert SplitRule("always").decide(model, "layers.0", layer, 499) == (True, "")


def test_auto_keeps_a_layer_its_parent_reads_dense():
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 256, batch_first=True), 1,
                                  enable_nested_tensor=False)
    rows = RMTPruner(tolerance=1.0, schedule=lambda e: 0.1, min_size=1000, split="auto", batch_size=32,
                     example_input=torch.zeros(1, 16, 64)).step(model, 1).records
    action = {r["layer"]: (r["action"], r["note"]) for r in rows}
    assert action["layers.0.self_attn.out_proj"][0] == "truncate"
    assert "reads this layer's weight" in action["layers.0.self_attn.out_proj"][1]
    assert action["layers.0.linear1"][0] == "split"  # called on 16 tokens per sample: FLOP-bound


def test_split_auto_needs_the_batch_size_and_an_input():
    with pytest.raises(ValueError, match="give batch_size="):
        RMTPruner(split="auto")
    with pytest.raises(ValueError, match="split must be one of always, auto, never"):
        RMTPruner(split="sometimes")


def test_a_baseline_that_may_not_split_cannot_promise_fewer_parameters():
    model = MLP([100, 200, 200, 10])
    low, dense = LowRankPruner(10**9, split="never", min_size=1000).bounds(model)
    assert low == dense
    with pytest.raises(UserError, match="below the smallest count"):
        LowRankPruner(dense - 1, split="never", min_size=1000).check(model, 3)


def test_split_auto_keeps_mobilenets_depthwise_heavy_blocks_dense():
    """The benchmark's smallest form (the cost model's decisions for mobilenet_v3_small at 224 x 224, batch 64,
    every layer with 10 singular values, at 0.25 .. 0.9 of the rank below which a split saves parameters)."""
    pytest.importorskip("torchvision")
    from bench_split import main

    rows = main(["--quick"])
    heavy = [r for r in rows if r["depthwise_heavy"]]
    assert {r["block"] for r in heavy} >= {"features.1", "features.3", "features.4", "features.8"}
    assert not [r for r in heavy if r["choice"] == "split" and r["fraction"] >= 0.5]
    assert not [r for r in heavy if r["choice"] == "split" and r["positions"] == 1]  # squeeze-excitation
    assert all(r["choice"] == "split" for r in rows if r["layer"].startswith("classifier") and r["fraction"] <= 0.75)


@pytest.mark.slow
def test_split_auto_from_the_command_line_and_its_identity(cli, tmp_path):
    from conftest import TINY
    from tests_support.configs import compose_config

    from rmtprune.config.identity import config_key

    rmt = ["pruning=rmt", "pruning.tolerance=1.0", "schedule=constant", "schedule.value=0.9"]
    code, out, err = cli("train", *TINY, *rmt, "pruning.split=sometimes", "epochs=2", "hydra.run.dir=bad")
    assert code == 2 and err.count("rmtprune: error:") == 1 and "pruning.split='sometimes' is not known" in err
    code, out, err = cli("train", *TINY, *rmt, "pruning.split=auto", "batch_size=8", "epochs=2", "hydra.run.dir=run")
    assert code == 0, err
    ledger = (tmp_path / "run" / "layers.csv").read_text()
    assert ",truncate," in ledger and "split=auto: two factors cost" in ledger  # 784 -> 32 at rank 28 of 32
    # inspect weighs a split at the run's input shape; a plain state_dict records none: one error line
    code, out, err = cli("inspect", "run", "--out", "insp", "pruning.split=auto")
    assert code == 0, err
    torch.save(torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"], tmp_path / "sd.pt")
    code, out, err = cli("inspect", "sd.pt", "--out", "insp2", "pruning.split=auto")
    assert code == 2 and err.count("rmtprune: error:") == 1 and "pruning.split=always or never" in err
    base = compose_config("pruning=rmt")
    assert config_key(base) == config_key(compose_config("pruning=rmt", "pruning.split=always",
                                                         "pruning.include=null", "pruning.exclude=null"))
    for extra in ("pruning.split=auto", "pruning.include=[layers.0]", "pruning.exclude=[layers.0]"):
        assert config_key(compose_config("pruning=rmt", extra)) != config_key(base), extra


@pytest.mark.slow
@pytest.mark.parametrize("model", ["model=mlp", "model=cnn"])
def test_a_baseline_target_is_checked_with_split_auto_before_training(model):
    """The pre-check builds the network on the meta device: the cost model's probe runs there too."""
    from tests_support.configs import compose_config

    from rmtprune.runs.targets import check_target

    overrides = ["pruning=lowrank", model, "pruning.split=auto", "epochs=3"]
    check_target(compose_config(*overrides, "pruning.target_params=100000"))
    with pytest.raises(UserError, match="below the smallest count"):
        check_target(compose_config(*overrides, "pruning.target_params=10"))
