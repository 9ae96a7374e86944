"""Split layers inside PyTorch's attention (issue 21, point 2), and include / exclude patterns.

``nn.MultiheadAttention`` reads ``out_proj.weight`` instead of calling ``out_proj``, and the fast path of
``nn.TransformerEncoderLayer`` (eval mode, no gradients) reads ``linear1.weight`` / ``linear2.weight``:
a split layer must expose the weight of its product, in train and eval mode, for both layouts.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from tests_support.nets import Encoder
from torch import nn

from rmtprune.config.validate import custom_model_overrides
from rmtprune.nn.layers import LowRankLinear
from rmtprune.nn.models import factorise_to_match
from rmtprune.prune.lowrank import LowRankPruner
from rmtprune.prune.magnitude import MagnitudePruner
from rmtprune.prune.rmt import RMTPruner

ENCODER_LINEARS = [f"encoder.layers.{i}.{n}" for i in (0, 1) for n in ("self_attn.out_proj", "linear1", "linear2")]


def planted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 8, 8) inputs: noise plus one of 4 fixed patterns (the class), scaled to be learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, 4, (n,), generator=g)
    return patterns[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g), y


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Adam steps on batches of 64 in train mode; returns the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for i in range(steps):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(x)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def pruner(**kwargs) -> RMTPruner:
    return RMTPruner(tolerance=1.0, schedule=lambda e: 0.25, min_size=1000, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("batch_first", [True, False])
def test_a_transformer_encoder_trains_prunes_and_evaluates(batch_first):
    torch.manual_seed(0)
    model = Encoder(d_model=32, side=8, num_classes=4, batch_first=batch_first)
    x, y = planted(512, seed=1)
    xt, yt = planted(256, seed=2)
    train_steps(model, x, y, 60)
    assert accuracy(model, xt, yt) > 0.9
    truncated = copy.deepcopy(model)
    event = pruner().step(model, 1)
    actions = {r["layer"]: r["action"] for r in event.records}
    assert all(actions[n] == "split" for n in ENCODER_LINEARS), actions
    assert all(isinstance(model.get_submodule(n), LowRankLinear) for n in ENCODER_LINEARS)
    # the same cut kept dense (split=never: truncated in place) computes the same function, through the fused
    # inference path (eval, no gradients) and the plain one (eval, gradients on)
    never = pruner(split="never").step(truncated, 1)
    assert {r["action"] for r in never.records if r["layer"] in ENCODER_LINEARS} == {"truncate"}
    model.eval(), truncated.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(xt), truncated(xt), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model(xt), truncated(xt), rtol=1e-4, atol=1e-4)
    # train mode: the gradient of the loss reaches the factors of the layer the attention reads
    model.train()
    F.cross_entropy(model(x[:64]), y[:64]).backward()
    out_proj = model.encoder.layers[0].self_attn.out_proj
    assert out_proj.first.weight.grad is not None and out_proj.first.weight.grad.abs().sum() > 0
    # and training goes on to a model that classifies again
    train_steps(model, x, y, 40)
    assert accuracy(model, xt, yt) > 0.9


def test_a_split_layer_keeps_its_state_dict_keys_and_reloads_into_a_dense_instance():
    """``weight`` is a property, not a parameter: the state_dict (the checkpoints written before) and the
    parameter count are those of the two factors."""
    torch.manual_seed(0)
    model = Encoder(d_model=32, side=8, num_classes=4)
    pruner().step(model, 1)
    keys = {k for k in model.state_dict() if k.startswith("encoder.layers.0.self_attn.out_proj.")}
    prefix = "encoder.layers.0.self_attn.out_proj."
    assert keys == {prefix + k for k in ("first.weight", "second.weight", "second.bias")}
    out_proj = model.encoder.layers[0].self_attn.out_proj
    assert sum(p.numel() for p in out_proj.parameters()) == 8 * (32 + 32) + 32
    fresh = Encoder(d_model=32, side=8, num_classes=4)
    assert set(factorise_to_match(fresh, model.state_dict())) == set(ENCODER_LINEARS)
    fresh.load_state_dict(model.state_dict())
    x, _ = planted(16, seed=3)
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_include_and_exclude_choose_the_layers_by_module_name():
    torch.manual_seed(0)
    model = Encoder(d_model=32, side=8, num_classes=4)
    rows = pruner(exclude=["*.out_proj"]).step(model, 1).records
    assert {r["layer"] for r in rows} == {"embed", "head", *(n for n in ENCODER_LINEARS if "out_proj" not in n)}
    assert type(model.encoder.layers[0].self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    model = Encoder(d_model=32, side=8, num_classes=4)
    rows = pruner(include=["encoder.layers.0.*"]).step(model, 1).records
    assert sorted(r["layer"] for r in rows) == sorted(n for n in ENCODER_LINEARS if ".0." in n)
    assert {r["action"] for r in rows} == {"split"}
    assert isinstance(model.encoder.layers[1].linear1, nn.Linear)
    with pytest.raises(ValueError, match="include must be a list of module-name patterns"):
        pruner(include=[3])


def test_the_baselines_take_include_and_exclude():
    torch.manual_seed(0)
    model = Encoder(d_model=32, side=8, num_classes=4)
    low, dense = LowRankPruner(10**9, include=["encoder.*"], min_size=1000).bounds(model)
    assert low < dense
    lowrank = LowRankPruner((low + dense) // 2, include=["encoder.*"], min_size=1000, every=1)
    lowrank.setup(model, 3)
    rows = lowrank.step(model, 2).records
    assert rows and all(r["layer"].startswith("encoder.") for r in rows)
    model = Encoder(d_model=32, side=8, num_classes=4)
    magnitude = MagnitudePruner(dense - 100, exclude=["encoder.*"], min_size=100)
    magnitude.setup(model, 3)
    rows = magnitude.step(model, 2).records
    assert {r["layer"] for r in rows} == {"embed", "head"}
    assert not hasattr(model.encoder.layers[0].linear1, "weight_mask")


@pytest.mark.slow
def test_a_custom_transformer_trains_and_prunes_from_the_command_line(cli, tmp_path):
    args = [a for a in TINY if not a.startswith(("topology=", "pruning="))] + [
        "model=custom", "model._target_=tests_support.nets.Encoder", "model.d_model=32", "epochs=2",
        "pruning=rmt", "pruning.tolerance=1.0", "pruning.min_size=1000", "schedule=constant", "schedule.value=0.25",
        "pruning.exclude=[encoder.layers.1.*]", "hydra.run.dir=run"]
    code, out, err = cli("train", *custom_model_overrides(args))
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["n_params_final"] < summary["n_params_initial"]
    ledger = (tmp_path / "run" / "layers.csv").read_text()
    assert "encoder.layers.0.self_attn.out_proj" in ledger and "encoder.layers.1." not in ledger


def test_a_split_conv_exposes_its_product_as_a_conv_weight():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2).double()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    from rmtprune.nn.surgery import apply_rank, layer_svd

    split = apply_rank(conv, 3, 12, layer_svd(conv)).module
    assert split.weight.shape == conv.weight.shape
    torch.testing.assert_close(F.conv2d(x, split.weight, split.bias, stride=2, padding=1, groups=2), split(x))


def test_a_pattern_that_matches_no_layer_is_warned_about():
    from tests_support.configs import compose_config

    from rmtprune.config.validate import model_warnings

    cfg = compose_config(*custom_model_overrides(["model=custom", "model._target_=tests_support.nets.Encoder", "pruning=rmt",
                                                  "pruning.min_size=1000", "pruning.exclude=[encoder.layer.*]"]))
    warnings = model_warnings(Encoder(), cfg)
    assert len(warnings) == 1 and "pruning.exclude: the pattern 'encoder.layer.*' matches no Linear" in warnings[0]
