"""``pruning=neuron``: structured unit pruning of an MLP (rows of layer l and columns of layer l + 1 removed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FAST, interrupted_at

from rmtprune.errors import UserError
from rmtprune.nn.geometry import count_parameters
from rmtprune.nn.models import MLP
from rmtprune.nn.surgery import keep_units
from rmtprune.prune.neuron import NeuronPruner
from rmtprune.train.checkpoint import load_file, rebuild_model


def mlp(widths, seed=0):
    torch.manual_seed(seed)
    return MLP(widths)


def chain_count(widths):
    return sum(b * (a + 1) for a, b in zip(widths[:-1], widths[1:]))


def test_keep_units_takes_exactly_the_kept_rows_and_columns():
    layer = mlp([12, 9]).layers[0]
    rows, cols = np.array([0, 4, 8]), np.array([1, 2, 3, 11])
    new = keep_units(layer, rows, cols)
    assert new.weight.shape == (3, 4) and new.bias.shape == (3,)
    assert torch.equal(new.weight, layer.weight.detach()[rows][:, cols])
    assert torch.equal(new.bias, layer.bias.detach()[rows])
    assert torch.equal(keep_units(layer, None, cols).weight, layer.weight.detach()[:, cols])


def test_dead_units_go_first_and_removing_them_leaves_the_function_unchanged():
    """Planted dead units (zero incoming weights and bias: ReLU gives 0) have the lowest score; at the count
    without them exactly they, and only they, are removed, and the network computes the same function."""
    model = mlp([30, 40, 20, 5])
    dead = {0: [3, 7, 11], 1: [2, 5]}
    with torch.no_grad():
        for layer, units in dead.items():
            model.layers[layer].weight[units] = 0
            model.layers[layer].bias[units] = 0
    before = [m.weight.detach().clone() for m in model.layers]
    x = torch.randn(64, 30)
    expected = model(x).detach()
    target = chain_count([30, 37, 18, 5])
    pruner = NeuronPruner(target, min_size=0)
    pruner.setup(model, epochs=2)  # one event, after epoch 1: the whole way to the target
    event = pruner.step(model, 1)
    assert count_parameters(model) == target
    keep0 = [i for i in range(40) if i not in dead[0]]
    keep1 = [i for i in range(20) if i not in dead[1]]
    assert torch.equal(model.layers[0].weight, before[0][keep0])
    assert torch.equal(model.layers[1].weight, before[1][keep1][:, keep0])
    assert torch.equal(model.layers[2].weight, before[2][:, keep1])  # the output layer keeps its 5 units
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert {r["action"] for r in event.records} == {"shrink"} and len(event.added) == 6


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_the_count_follows_the_cubic_schedule_to_the_target(scope):
    widths = [100, 200, 150, 10]
    model = mlp(widths)
    p0 = chain_count(widths)
    target = int(0.4 * p0)
    pruner = NeuronPruner(target, min_size=0, scope=scope)
    pruner.setup(model, epochs=4)
    for j in (1, 2, 3):
        pruner.step(model, j)
        goal = p0 - (p0 - target) * (1 - (1 - j / 3) ** 3)
        # one unit of layer 0 costs 100 + 1 + 150 parameters, of layer 1 201 + 10; scope=layer moves both layers
        assert abs(count_parameters(model) - goal) <= (0.01 * goal if scope == "global" else 251 + 211), j
    assert model.layers[2].out_features == 10
    if scope == "layer":  # the same share of each layer's units, to one unit
        assert abs(model.layers[0].out_features / 200 - model.layers[1].out_features / 150) <= 1 / 150


def test_every_layer_keeps_one_unit_and_a_target_below_that_is_refused():
    model = mlp([50, 40, 30, 10])
    floor = chain_count([50, 1, 1, 10])
    with pytest.raises(UserError, match=f"below the smallest count neuron pruning can reach here \\({floor:,}"):
        NeuronPruner(floor - 1, min_size=0).setup(model, epochs=2)
    pruner = NeuronPruner(floor, min_size=0)
    pruner.setup(model, epochs=2)
    pruner.step(model, 1)
    assert [m.out_features for m in model.layers] == [1, 1, 10] and count_parameters(model) == floor


def test_a_model_that_is_no_linear_chain_is_refused():
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(20, 30), nn.Linear(20, 10)

    with pytest.raises(UserError, match="not a chain"):
        NeuronPruner(500, min_size=0).setup(Branchy(), epochs=2)


ARGS = [*FAST, "topology=784-64-32-10", "dataset.train_size=500", "dataset.test_size=200", "device=cpu",
        "pruning=neuron", "pruning.min_size=1000", "pruning.target_params=30000"]


@pytest.mark.slow
def test_neuron_run_resumes_bit_identical_and_its_model_reloads(cli, tmp_path, monkeypatch):
    assert cli("train", *ARGS, "epochs=3", "hydra.run.dir=full")[0] == 0
    with interrupted_at(monkeypatch, 2):
        assert cli("train", *ARGS, "epochs=3", "output_root=part", "hydra.run.dir=part/first")[0] == 130
    code, _, err = cli("train", *ARGS, "epochs=3", "output_root=part", "resume=true", "hydra.run.dir=part/second")
    assert code == 0, err

    def rows(folder):
        lines = (folder / "metrics.csv").read_text().splitlines()
        cut = lines[0].split(",").index("seconds")
        return [line.split(",")[:cut] for line in lines]

    full, part = tmp_path / "full", tmp_path / "part" / "first"
    assert rows(part) == rows(full)
    a, b = load_file(full / "model.pt")["state_dict"], load_file(part / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((full / "summary.json").read_text())
    assert abs(summary["n_params_final"] - 30000) <= 300
    model = rebuild_model(load_file(full / "model.pt"))
    widths = [model.layers[0].in_features] + [m.out_features for m in model.layers]
    assert widths[0] == 784 and widths[-1] == 10 and widths[1] < 64
    assert count_parameters(model) == chain_count(widths) == summary["n_params_final"]
    code, out, err = cli("inspect", str(full / "model.pt"), "pruning.min_size=1000")
    assert code == 0, err


def test_neuron_on_another_model_is_one_error_line_before_training(cli, tmp_path):
    code, _, err = cli("train", *ARGS, "model=cnn", "epochs=2", "hydra.run.dir=cnn")
    lines = [line for line in err.splitlines() if line.startswith("rmtprune: error:")]
    assert code == 2 and len(lines) == 1 and "pruning=neuron" in lines[0] and "model=cnn" in lines[0], err
    assert not (tmp_path / "cnn" / "metrics.csv").exists()
