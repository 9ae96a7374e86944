"""The final model's cost: bytes and FLOPs against closed forms, CSR bytes of a pruned layer, the latency
fields, and the cost fields from summary.json to comparison.csv, frontier.csv and the frontier figure."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import TINY
from torch import nn

from rmtprune.nn.costs import model_costs
from rmtprune.nn.geometry import csr_bytes, flops, model_bytes
from rmtprune.nn.layers import LowRankConv2d
from rmtprune.nn.models import MLP
from rmtprune.nn.surgery import layer_svd, split


def test_an_mlp_costs_its_weights_and_biases_in_bytes_and_two_flops_per_multiply_add():
    model = MLP([784, 50, 20, 10])
    weights = 784 * 50 + 50 * 20 + 20 * 10
    assert model_bytes(model) == 4 * (weights + 50 + 20 + 10)
    assert flops(model, [1, 28, 28]) == 2 * weights
    assert model_bytes(model.double()) == 8 * (weights + 50 + 20 + 10)


def test_a_split_layer_costs_its_two_factors():
    model = MLP([30, 40, 10])
    r = 3
    model.layers[0] = split(model.layers[0], layer_svd(model.layers[0]), r)
    assert model_bytes(model) == 4 * (r * 30 + r * 40 + 40 + 40 * 10 + 10)
    assert flops(model, [30]) == 2 * (r * (30 + 40) + 40 * 10)


@pytest.mark.parametrize("groups,stride,padding", [(1, 1, 0), (2, 2, 1), (4, 1, 2)])
def test_a_conv_costs_its_kernel_times_its_output_size(groups, stride, padding):
    c_in, c_out, k, h, w = 8, 12, 3, 11, 14
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups)
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    assert model_bytes(conv) == 4 * (c_out * c_in // groups * k * k + c_out)
    assert flops(conv, [c_in, h, w]) == 2 * c_out * (c_in // groups) * k * k * h_out * w_out
    r = 2
    low = split(conv, layer_svd(conv), r)
    assert isinstance(low, LowRankConv2d)
    # k x k conv to groups * r channels (each group sees in/groups inputs), then a grouped 1 x 1 conv
    assert model_bytes(low) == 4 * (groups * r * (c_in // groups) * k * k + c_out * r + c_out)
    assert flops(low, [c_in, h, w]) == 2 * (groups * r * (c_in // groups) * k * k + c_out * r) * h_out * w_out


def test_buffers_count_in_the_bytes_and_flops_leave_normalisation_out():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    # BatchNorm: weight, bias, running mean and var (float32), num_batches_tracked (int64)
    assert model_bytes(model) == 4 * (4 * 9 + 4) + 4 * 4 * 4 + 8
    assert flops(model, [1, 5, 5]) == 2 * 4 * 9 * 3 * 3
    assert model.training  # measured in eval mode, the model's mode is given back


def test_a_pruned_layer_in_csr_takes_values_column_indices_and_row_pointers():
    torch.manual_seed(0)
    model = MLP([20, 30, 10])
    w = model.layers[0].weight.data
    w[torch.rand_like(w) < 0.8] = 0.0
    nnz, rows = int(torch.count_nonzero(w)), 30
    rest = 4 * (30 + 30 * 10 + 10)  # the first bias and the dense output layer
    assert csr_bytes(model, ["layers.0"]) == 4 * nnz + 4 * nnz + 4 * (rows + 1) + rest
    assert csr_bytes(model, []) == model_bytes(model)


@pytest.mark.slow
def test_the_dense_model_against_itself_has_a_latency_ratio_near_one(monkeypatch):
    """Not a speed test: the same architecture timed twice should take about the same time (loose bound)."""
    import rmtprune.nn.costs

    monkeypatch.setattr(rmtprune.nn.costs, "MIN_RUN_TIME", 0.1)  # longer than conftest's brief timing
    monkeypatch.setattr(rmtprune.nn.costs, "ROUNDS", 3)
    model = MLP([784, 64, 10])
    rng = torch.get_rng_state()
    costs = model_costs(model, {"kind": "mlp", "widths": [784, 64, 10]}, [1, 28, 28])
    assert torch.equal(torch.get_rng_state(), rng)  # building the dense model drew nothing from the run's RNG
    assert costs["latency_threads"] == torch.get_num_threads()
    for b in (1, 256):
        assert costs[f"latency_b{b}_s"] > 0 and costs[f"dense_latency_b{b}_s"] > 0
        assert costs[f"latency_b{b}_ratio"] == pytest.approx(costs[f"latency_b{b}_s"] / costs[f"dense_latency_b{b}_s"])
        assert 0.4 < costs[f"latency_b{b}_ratio"] < 2.5
    assert "model_bytes_csr" not in costs


def _state_dict_of(run) -> dict[str, torch.Tensor]:
    from rmtprune.train.checkpoint import load_file

    return load_file(run / "model.pt")["state_dict"]


@pytest.mark.slow
def test_a_magnitude_run_records_bytes_csr_bytes_flops_and_latency(cli, tmp_path):
    code, _, err = cli("train", *TINY, "pruning=magnitude", "pruning.target_params=5000", "pruning.min_size=1000",
                       "epochs=2", "cost.latency=true", "hydra.run.dir=run")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    state = _state_dict_of(tmp_path / "run")
    assert summary["model_bytes"] == sum(4 * t.numel() for t in state.values()) == 4 * (784 * 32 + 32 + 32 * 10 + 10)
    w0, w1 = state["layers.0.weight"], state["layers.1.weight"]
    nnz0, nnz1 = int(torch.count_nonzero(w0)), int(torch.count_nonzero(w1))
    assert nnz0 < w0.numel() / 2
    assert nnz1 == w1.numel()  # the output layer (320 weights < min_size) is not pruned: it stays dense
    assert summary["model_bytes_csr"] == 8 * nnz0 + 4 * (32 + 1) + 4 * (32 + 32 * 10 + 10)
    assert summary["flops"] == 2 * (784 * 32 + 32 * 10)
    for b in (1, 256):
        assert summary[f"latency_b{b}_ratio"] == pytest.approx(summary[f"latency_b{b}_s"] /
                                                               summary[f"dense_latency_b{b}_s"])
    assert list(summary)[-1] == "config"


@pytest.mark.slow
def test_an_rmt_run_records_its_split_layers_cost_and_no_latency_when_switched_off(cli, tmp_path):
    from rmtprune.config.identity import config_key

    code, _, err = cli("train", *TINY, "topology=784-64-64-10", "pruning=rmt", "schedule=oneshot", "epochs=2",
                       "pruning.min_size=1000", "hydra.run.dir=run")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    ranks = summary["ranks"]
    assert ranks, "the one-shot cut split no layer"
    widths = [784, 64, 64, 10]
    weights = sum(ranks[f"layers.{i}"] * (a + b) if f"layers.{i}" in ranks else a * b
                  for i, (a, b) in enumerate(zip(widths, widths[1:])))
    assert summary["flops"] == 2 * weights
    assert summary["model_bytes"] == 4 * (weights + 64 + 64 + 10)
    assert not any(k.startswith("latency") or k.startswith("dense_latency") for k in summary)
    assert "model_bytes_csr" not in summary
    cfg = dict(summary["config"], cost={"latency": True})
    assert config_key(cfg) == summary["config_key"]  # measuring latency is not part of the run's identity


def test_a_latency_switch_that_is_not_a_boolean_is_one_error_line(cli):
    code, _, err = cli("train", *TINY, "cost.latency=sometimes")
    assert code == 2 and "cost.latency" in err and "Traceback" not in err


def _runs_with_costs(tmp_path):
    from test_compare_arms import RMT, write_run

    costs = {"none": {"model_bytes": 4000, "flops": 2000, "latency_b1_ratio": 1.0, "latency_b256_ratio": 1.0},
             "rmt": {"model_bytes": 1000, "flops": 500, "latency_b1_ratio": 0.8, "latency_b256_ratio": 0.3},
             "magnitude": {"model_bytes": 4000, "model_bytes_csr": 2500, "flops": 2000, "latency_b1_ratio": 1.0,
                           "latency_b256_ratio": 1.1}}
    for seed in range(2):
        for name, cost in costs.items():
            scaled = {k: v * (1 + 0.1 * seed) for k, v in cost.items()}
            write_run(tmp_path / f"{name}{seed}", seed, name, 0.9, params=100_000 if name == "none" else 30_000,
                      pruning_cfg=RMT if name != "none" else {}, summary=scaled)
    write_run(tmp_path / "old_rmt2", 2, "rmt", 0.9, params=30_000, pruning_cfg=RMT)  # made before costs
    return costs


def test_compare_carries_the_mean_cost_per_arm_and_reads_runs_without_costs(tmp_path, cli):
    costs = _runs_with_costs(tmp_path)
    code, _, err = cli("compare", str(tmp_path), "--no-plots", "--out", str(tmp_path / "out"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "comparison.csv").set_index("arm")
    front = pd.read_csv(tmp_path / "out" / "frontier.csv").set_index("arm")
    assert table.loc["rmt", "n_seeds"] == 3  # the old run is read, and counted
    for arm, cost in costs.items():
        for k, v in cost.items():
            assert table.loc[arm, f"{k}_mean"] == pytest.approx(v * 1.05)  # mean over the runs that record it
            assert front.loc[arm, f"{k}_mean"] == pytest.approx(v * 1.05)
    assert math.isnan(table.loc["rmt", "model_bytes_csr_mean"]) and math.isnan(table.loc["none", "latency_b1_s_mean"])
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "| 4,200 (CSR 2,625); 2,100; ×1.05 / ×1.16 |" in md  # magnitude: 4000, 2500, 2000, 1.0, 1.1 (x 1.05)
    assert "| 1,050; 525; ×0.84 / ×0.32 |" in md  # rmt


def test_comparison_md_has_no_cost_column_for_runs_made_before_costs(tmp_path):
    from test_compare_arms import RMT, write_run

    from rmtprune.report.compare import compare, markdown

    for seed in range(2):
        write_run(tmp_path / f"none{seed}", seed, "none", 0.9)
        write_run(tmp_path / f"rmt{seed}", seed, "rmt", 0.9, params=30_000, pruning_cfg=RMT)
    assert "FLOPs" not in markdown(compare([tmp_path]))


@pytest.mark.slow
def test_the_frontier_is_drawn_against_parameters_bytes_and_latency(tmp_path):
    from rmtprune.report.compare import compare
    from rmtprune.report.plots import frontier_figure, frontier_panels

    _runs_with_costs(tmp_path)
    front = compare([tmp_path]).frontier.set_index("arm", drop=False)
    panels = frontier_panels(front)
    assert [label.split(" ")[0] for label, _, _ in panels] == ["final", "final", "CPU"]
    assert "parameter" in panels[0][0] and "bytes" in panels[1][0] and "latency" in panels[2][0]
    # magnitude's bytes: its CSR size, smaller than its dense size here
    assert panels[1][1]["magnitude"] == pytest.approx(2500 * 1.05)
    assert panels[1][1]["rmt"] == pytest.approx(1000 * 1.05)
    assert panels[2][1]["rmt"] == pytest.approx(0.3 * 1.05)
    old = front.drop(columns=[c for c in front if c.startswith(("model_bytes", "latency", "flops"))])
    assert len(frontier_panels(old)) == 1  # runs made before costs: parameters only
    for rows, name in ((front, "costs.png"), (old, "old.png")):
        assert frontier_figure(rows.reset_index(drop=True), "g", tmp_path / name).stat().st_size > 5000


@pytest.mark.slow
def test_rmtprune_prune_records_the_pruned_models_cost(cli, tmp_path):
    from rmtprune.nn.layers import LowRankLinear
    from rmtprune.nn.models import build_model
    from rmtprune.nn.select import prunable_layers
    from rmtprune.train.loading import load_model

    torch.save(build_model({"kind": "mlp", "widths": [784, 64, 10]}).state_dict(), tmp_path / "sd.pt")
    code, _, err = cli("prune", "sd.pt", *TINY, "pruning=rmt", "topology=784-64-10", "pruning.min_size=100",
                       "hydra.run.dir=p")
    assert code == 0, err
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    model, _ = load_model(tmp_path / "p")
    macs = sum(m.rank * (m.in_features + m.out_features) if isinstance(m, LowRankLinear) else m.in_features * m.out_features
               for _, m in prunable_layers(model))
    assert summary["flops"] == 2 * macs
    assert summary["model_bytes"] == 4 * summary["n_params_after"]  # float32, no buffers
