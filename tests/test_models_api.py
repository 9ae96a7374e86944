"""The API on the models people prune (issue 21): parameter groups and lr schedulers across events, the
README's loop as written, an event's summary, the RMT view of a model as a DataFrame."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import REPO
from test_api import users_net
from torch import nn

import rmtprune
from rmtprune.nn.layers import LowRankLinear


def grouped_sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.SGD:
    """SGD with weight decay on weights only (no-decay group for biases), as most recipes do."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    return torch.optim.SGD([{"params": decay, "weight_decay": 1e-3}, {"params": no_decay, "weight_decay": 0.0,
                                                                      "lr": lr / 10}], lr=lr, momentum=0.9)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 2) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 16, 4, 4, generator=g), torch.randint(0, 10, (16,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_rebuild_keeps_parameter_groups_and_leaves_frozen_parameters_out():
    model = users_net()
    model[5].weight.requires_grad_(False)  # frozen: no optimizer holds it
    optimizer = grouped_sgd(model)
    train_steps(model, optimizer)
    event = rmtprune.prune_model(model, keep_fraction=0.0)
    assert isinstance(model[0], nn.Module) and isinstance(model[3], LowRankLinear)
    new = rmtprune.rebuild_optimizer(optimizer, model, event, lr=0.05)
    decay, no_decay = new.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        n for n, p in model.named_parameters() if not n.endswith("bias") and n != "5.weight")
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        n for n, _ in model.named_parameters() if n.endswith("bias"))
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    # lr= sets the first group's rate; the other keeps its ratio to it (1/10)
    assert decay["lr"] == 0.05 and no_decay["lr"] == pytest.approx(0.005)
    assert all(id(p) != id(model[5].weight) for g in new.param_groups for p in g["params"])
    # a no-decay parameter really gets no decay: with a zero gradient, SGD leaves a bias where it is
    bias = model[3].bias
    before = bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    new.step()
    assert torch.equal(bias, before)
    with pytest.raises(ValueError, match="not both"):
        rmtprune.rebuild_optimizer(optimizer, model, event, lr=0.1, lr_factor=0.5)


def test_a_cosine_schedule_keeps_its_curve_across_events():
    """CosineAnnealingLR (eta_min = 0) re-pointed at every event: the lr ends at 0 after T_max steps, and
    between events it follows the closed form lr_t = lr_0 prod(factors) (1 + cos(pi t / T)) / 2."""
    model = users_net()
    epochs, lr0, factor = 6, 0.1, 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    pruner = rmtprune.RMTPruner(schedule="linear", horizon=epochs, lr_factor=factor, every=2)
    pruner.setup(model, epochs)
    n_events = 0
    for epoch in range(1, epochs + 1):
        train_steps(model, optimizer, 1)
        scheduler.step()
        if pruner.is_event(epoch):
            event = pruner.step(model, epoch)
            n_events += 1
            optimizer = rmtprune.rebuild_optimizer(optimizer, model, event, momentum=pruner.momentum,
                                                   lr_factor=pruner.lr_factor, schedulers=[scheduler])
            assert scheduler.optimizer is optimizer
        expected = lr0 * factor ** n_events * (1 + math.cos(math.pi * epoch / epochs)) / 2
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
    assert n_events == 3 and isinstance(model[3], LowRankLinear)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def readme_loop() -> str:
    """The first python block of the README section 'In your own training loop'."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### In your own training loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_loop_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 16, 4, 4, generator=g), torch.randint(0, 10, (32,), generator=g)

    def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    namespace = {"MyNet": users_net, "train_one_epoch": train_one_epoch, "trained_model": users_net(),
                 "train_loader": [(x, y)]}
    exec(compile(readme_loop(), "README.md", "exec"), namespace)
    model, optimizer, scheduler = namespace["model"], namespace["optimizer"], namespace["scheduler"]
    assert isinstance(model[3], LowRankLinear) and scheduler.optimizer is optimizer
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine reached its end
    no_decay = optimizer.param_groups[1]
    assert no_decay["weight_decay"] == 0.0 and id(model[3].bias) in map(id, no_decay["params"])
    assert "PruneEvent(epoch=1," in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "pruned.pt", weights_only=True)
    assert set(ckpt) == {"model", "pruner"}


def test_event_summary_counts_actions_and_parameters_and_its_repr_is_short():
    model = users_net()
    dense_total = sum(p.numel() for p in model.parameters())
    event = rmtprune.prune_model(model, keep_fraction=0.0)
    s = event.summary()
    assert s["actions"] == {"split": 2, "skip_small": 1} and s["layers"] == 3
    # conv 96x144 at rank 5 and linear 200x384 at rank 6 (biases kept), the 10x200 layer untouched
    after = 5 * (144 + 96) + 96 + 6 * (384 + 200) + 200 + 10 * 200 + 10
    assert s["params_before"] == dense_total and s["params_after"] == after
    assert s["params_removed"] == dense_total - sum(p.numel() for p in model.parameters())
    assert repr(event) == f"PruneEvent(epoch=0, layers=3, split=2, skip_small=1, params {dense_total:,} -> {after:,})"


def split_sequential(rank: int) -> nn.Sequential:
    """users_net with its 200x384 layer written by hand as two Linears (Sequential children 0 and 1, the first
    without bias): the rank-``rank`` truncated SVD of the planted weight, 6 spikes above an MP bulk."""
    net = users_net()
    w = net[3].weight.detach()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    pair = nn.Sequential(nn.Linear(384, rank, bias=False), nn.Linear(rank, 200))
    with torch.no_grad():
        pair[0].weight.copy_(s[:rank, None].sqrt() * vh[:rank])
        pair[1].weight.copy_(u[:, :rank] * s[:rank].sqrt())
        pair[1].bias.copy_(net[3].bias)
    net[3] = pair
    return net


def test_inspect_model_gives_one_row_per_layer_and_one_per_split_layer():
    """On users_net the fit finds the planted spikes (5 in the conv, 6 in the linear); a state_dict whose
    linear layer is split (rmtprune's .first/.second factors, or a user's .0/.1 pair) gives ONE row for it,
    of its rank, fitted on the product: the one-shot cut to the 6 spikes then saves (r - 6)(384 + 200)."""
    table = rmtprune.inspect_model(users_net())
    assert list(table["layer"]) == ["0", "3", "5"] and list(table["n_spikes"].iloc[:2]) == [5, 6]
    assert list(table["action"]) == ["split", "split", "skip_small"] and (table["keep_fraction"] == 0).all()
    assert table.loc[1, "rank_after_prune"] == 6 and table.loc[1, "params_now"] == 200 * 384 + 200
    half = users_net()
    rmtprune.prune_model(half, keep_fraction=0.5, min_size=50000)  # only layer 3: rank 6 + floor(194 / 2) = 103
    for state in (half.state_dict(), split_sequential(103).state_dict()):
        table = rmtprune.inspect_model(state, tolerance=0.1).set_index("layer")
        assert list(table.index) == ["0", "3", "5"]
        row = table.loc["3"]
        assert (row["kind"], row["out"], row["in"], row["rank_now"]) == ("linear", 200, 384, 103)
        assert row["n_spikes"] == 6 and row["rank_after_prune"] == 6 and row["action"] == "split"
        assert row["params_now"] - row["params_after"] == (103 - 6) * (384 + 200)
    # a pair that does not chain through a smaller rank is two layers (here 16 -> 40 -> 30 has rank 40 > 30)
    two = nn.Sequential(nn.Linear(16, 40, bias=False), nn.Linear(40, 30))
    assert list(rmtprune.inspect_model(two.state_dict(), min_size=0)["layer"]) == ["0", "1"]
    with pytest.raises(ValueError, match="alpha"):
        rmtprune.inspect_model(users_net(), alpha=0.9)


@pytest.mark.parametrize("form", ["readme", "state_dict"])
def test_inspect_command_reads_the_readme_format_and_a_bare_pruned_state_dict(cli, tmp_path, form):
    model = users_net()
    pruner = rmtprune.RMTPruner(schedule=lambda e: 0.5, min_size=50000)
    pruner.step(model, 1)  # layer 3 split at rank 103, its 6 spikes known to the pruner
    path = tmp_path / "pruned.pt"
    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()} if form == "readme"
               else model.state_dict(), path)
    code, out, err = cli("inspect", str(path), "--tolerance", "0.1", "--format", "csv")
    assert code == 0, err
    import pandas as pd

    rows = pd.read_csv(tmp_path / "inspect.csv").set_index("layer")
    assert list(rows.index) == ["0", "3", "5", "total"]
    assert rows.loc["3", "rank_now"] == 103 and rows.loc["3", "rank_after_prune"] == 6
    assert rows.loc["3", "n_known_spikes"] == (6 if form == "readme" else 0)  # the saved pruner state is used
    saved = rows.loc["3", "params_now"] - rows.loc["3", "params_after"]
    layer0 = rows.loc["0", "params_now"] - rows.loc["0", "params_after"]
    assert rows.loc["total", "params_now"] == sum(p.numel() for p in model.parameters())
    assert rows.loc["total", "params_now"] - rows.loc["total", "params_after"] == saved + layer0
    assert saved == (103 - 6) * (384 + 200)


def test_a_bias_free_pair_is_one_layer_only_when_it_is_a_whole_sequential():
    """X.0 / X.1 chained through rank 8 < 30: one split layer of rank 8 (a 30 x 40 matrix); with a third
    module X.2 in the same Sequential the two stay two layers, and X.2 is reported too."""
    pair = nn.Sequential(nn.Linear(40, 8, bias=False), nn.Linear(8, 30))
    table = rmtprune.inspect_model({f"body.{k}": v for k, v in pair.state_dict().items()}, min_size=0)
    assert list(table["layer"]) == ["body"] and (table.loc[0, "out"], table.loc[0, "in"]) == (30, 40)
    assert table.loc[0, "rank_now"] == 8 and table.loc[0, "params_now"] == 8 * 40 + 30 * 8 + 30
    three = nn.Sequential(nn.Linear(40, 8, bias=False), nn.Linear(8, 30), nn.Linear(30, 5))
    assert list(rmtprune.inspect_model(three.state_dict(), min_size=0)["layer"]) == ["0", "1", "2"]


def test_a_users_split_conv_is_fitted_on_the_product_of_its_factors():
    """users_net's 96 x (16 * 3 * 3) conv (5 planted spikes) written as a 3x3 conv to 20 channels and a 1x1
    conv back to 96: one conv layer of rank 20 whose fit still finds the 5 spikes."""
    w = users_net()[0].weight.detach().reshape(96, -1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    state = {"stem.0.weight": (s[:20, None].sqrt() * vh[:20]).reshape(20, 16, 3, 3),
             "stem.1.weight": (u[:, :20] * s[:20].sqrt()).reshape(96, 20, 1, 1), "stem.1.bias": torch.zeros(96)}
    row = rmtprune.inspect_model(state, min_size=0, output_min_rank=1).iloc[0]  # the only layer is the output one
    assert (row["layer"], row["kind"], row["out"], row["in"], row["rank_now"]) == ("stem", "conv", 96, 144, 20)
    assert row["n_spikes"] == 5 and row["rank_after_prune"] == 5


def test_a_warmup_then_cosine_sequence_and_a_plateau_scheduler_are_re_pointed():
    """SequentialLR(LinearLR warm-up, CosineAnnealingLR): the wrapped schedulers follow the new optimizer,
    and after the warm-up the lr is lr_0 * factor * (1 + cos(pi t / T)) / 2 (t steps into the cosine)."""
    model = users_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    sequence = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[2])
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    sequence.step()
    event = rmtprune.prune_model(model, keep_fraction=0.0)
    new = rmtprune.rebuild_optimizer(optimizer, model, event, lr_factor=0.5, schedulers=[sequence, plateau])
    assert all(s.optimizer is new for s in (sequence, warmup, cosine, plateau))
    for t in range(1, 4):
        sequence.step()
        assert new.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (t - 1) / 4)) / 2)
