"""The pruning step on whole models: ranks from theory, gates, floors and the ledger."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tests_support.spikes import planted
from torch import nn

from rmtprune.config.build import make_pruner, make_schedule, optimizer_settings
from rmtprune.config.schema import PruningConfig
from rmtprune.nn.layers import LowRankLinear
from rmtprune.nn.models import MLP
from rmtprune.prune.events import LEDGER_COLUMNS
from rmtprune.prune.rmt import RMTPruner
from rmtprune.prune.schedules import exponential, linear, step, target_rank


def cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(PruningConfig), {"name": "rmt", **kw})


def pruner_with(schedule, **kw):
    return RMTPruner(schedule=schedule, **kw)


def mlp_with(weights):
    widths = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    model = MLP(widths)
    with torch.no_grad():
        for layer, w in zip(model.layers, weights):
            layer.weight.copy_(w)
    return model


def test_planted_low_rank_layer_is_cut_to_its_planted_rank():
    model = mlp_with([planted(400, 300, 7), planted(200, 400, 4, seed=1), planted(10, 200, 3, seed=2)])
    pruner = pruner_with(lambda e: 0.0, min_size=1000)
    event = pruner.step(model, epoch=1)
    by_layer = {r["layer"]: r for r in event.records}
    assert by_layer["layers.0"]["action"] == "split" and by_layer["layers.0"]["rank_after"] == 7
    # 4 planted spikes; a fifth value just above the Tracy-Widom edge is a false spike (rate about beta)
    assert by_layer["layers.1"]["action"] == "split" and by_layer["layers.1"]["rank_after"] in (4, 5)
    assert isinstance(model.layers[0], LowRankLinear) and model.layers[0].rank == 7
    # the output layer keeps at least the number of classes (the reference cut it to 9: bug)
    assert by_layer["layers.2"]["rank_after"] == 10 or by_layer["layers.2"]["action"] == "skip_small"
    assert event.changed and set(LEDGER_COLUMNS) <= set(event.records[0])


def test_keep_fraction_keeps_the_share_of_sub_edge_values():
    model = mlp_with([planted(400, 300, 5), planted(10, 400, 2, seed=1)])
    pruner = pruner_with(lambda e: 0.8, min_size=1000)
    row = pruner.step(model, 1).records[0]
    assert row["n_spikes"] == 5
    assert row["rank_after"] == 5 + math.floor((300 - 5) * 0.8)
    assert row["action"] == "truncate"  # (400 + 300) * 241 > 400 * 300: no saving, truncated in place
    # the next event censors the zeros left by the truncation and still finds the planted rank
    pruner.schedule = lambda e: 0.0
    row2 = pruner.step(model, 2).records[0]
    assert row2["n_censored"] == 300 - row["rank_after"] and row2["good_fit"]
    assert row2["action"] == "split" and row2["rank_after"] == 5


def test_bad_fit_leaves_the_layer_untouched_and_tolerance_one_always_passes():
    rng = np.random.default_rng(0)
    product = torch.from_numpy(rng.normal(size=(300, 300)) @ rng.normal(size=(300, 300)) / 300).float()
    model = mlp_with([product, planted(10, 300, 2)])
    before = model.layers[0].weight.detach().clone()
    row = pruner_with(lambda e: 0.0, min_size=1000, tolerance=0.05).step(model, 1).records[0]
    assert row["action"] == "skip_bad_fit" and not row["good_fit"]
    assert torch.equal(model.layers[0].weight, before)
    row = pruner_with(lambda e: 0.0, min_size=1000, tolerance=1.0).step(model, 1).records[0]
    assert row["action"] == "split"
    model = mlp_with([planted(300, 200, 3), planted(10, 300, 2)])
    row = pruner_with(lambda e: 0.0, min_size=1000, tolerance=0.0).step(model, 1).records[0]
    assert row["action"] == "skip_bad_fit"  # tolerance 0 never passes: the reference's control arm


def test_small_and_output_layers_follow_the_eligibility_config():
    model = mlp_with([planted(400, 300, 5), planted(10, 400, 2, seed=1)])
    rows = pruner_with(lambda e: 0.0, min_size=200_000).step(model, 1).records
    assert [r["action"] for r in rows] == ["skip_small", "skip_small"]
    rows = pruner_with(lambda e: 0.0, min_size=1000, include_output_layer=False).step(model, 1).records
    assert [r["layer"] for r in rows] == ["layers.0"]


def test_event_epochs():
    p = pruner_with(lambda e: 0.0, every=3, start_epoch=2, stop_epoch=8)
    assert [e for e in range(1, 12) if p.is_event(e)] == [2, 5, 8]
    assert not make_pruner(cfg(name="none")).is_event(1)


def test_schedules():
    assert linear(0, 300) == 1.0 and linear(150, 300) == 0.5 and linear(400, 300) == 0.0
    assert step(2, 3) == 1.0 and step(3, 3) == 0.0
    assert exponential(2, 0.5) == 0.25
    assert make_schedule(OmegaConf.create({"name": "oneshot"}))(1) == 0.0
    assert make_schedule(OmegaConf.create({"name": "constant", "value": 0.3}))(7) == 0.3
    assert target_rank(100, 5, 0.0, 1) == 5
    assert target_rank(100, 5, 1.0, 1) == 100
    assert target_rank(100, 5, 0.5, 1) == 5 + 47
    assert target_rank(100, 0, 0.0, 10) == 10


def test_optimizer_rebuilt_after_an_event_trains_the_new_factors_and_keeps_momentum_on_request():
    from rmtprune.config.schema import OptimizerConfig
    from rmtprune.prune.events import rebuild_optimizer
    from rmtprune.train.state import make_optimizer

    model = mlp_with([planted(400, 300, 5), planted(10, 400, 2, seed=1)])
    ocfg = OmegaConf.structured(OptimizerConfig)
    opt = make_optimizer(model, optimizer_settings(ocfg), 0.1)
    model(torch.randn(8, 300)).sum().backward()
    opt.step()
    untouched = model.layers[1].weight
    event = pruner_with(lambda e: 0.0, min_size=1000, include_output_layer=False).step(model, 1)
    assert event.changed and isinstance(model.layers[0], LowRankLinear)
    for policy in ("reset", "keep"):
        new = rebuild_optimizer(opt, model, event, momentum=policy, lr=0.05)
        params = [p for g in new.param_groups for p in g["params"]]
        assert {id(p) for p in params} == {id(p) for p in model.parameters()}
        assert new.param_groups[0]["lr"] == 0.05
        assert (untouched in new.state) == (policy == "keep")
        assert all(p not in new.state for p in model.layers[0].parameters())
    before = [p.detach().clone() for p in model.layers[0].parameters()]
    new.zero_grad()
    model(torch.randn(8, 300)).pow(2).sum().backward()
    new.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.layers[0].parameters()))


def test_an_svd_that_fails_skips_the_layer_with_a_ledger_entry(monkeypatch):
    import rmtprune.prune.base as base_mod
    import rmtprune.prune.rank as rank_mod  # the rank arms' loop: one SVD per layer, then the cut

    def broken(*a, **kw):
        raise torch.linalg.LinAlgError("did not converge")

    model = mlp_with([planted(400, 300, 5), planted(10, 400, 2, seed=1)])
    monkeypatch.setattr(rank_mod, "layer_svd", broken)
    rows = pruner_with(lambda e: 0.0, min_size=1000).step(model, 1).records
    assert rows[0]["action"] == "skip_bad_fit" and "did not converge" in rows[0]["note"]
    monkeypatch.undo()
    monkeypatch.setattr(base_mod, "apply_rank", broken)
    rows = pruner_with(lambda e: 0.0, min_size=1000).step(model, 1).records
    assert rows[0]["action"] == "skip_svd_failed"
    assert isinstance(model.layers[0], nn.Linear)


def test_splitting_a_layer_draws_nothing_from_the_global_rng():
    """The factors are filled by the surgery: building them must not move the RNG, or the dropout masks of
    the pruned arm would differ from the normal arm's after the first split (same seed, same data)."""
    model = mlp_with([planted(400, 300, 5), planted(10, 400, 2, seed=1)])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    event = pruner_with(lambda e: 0.0, min_size=1000).step(model, 1)
    assert event.records[0]["action"] == "split"
    assert torch.equal(torch.get_rng_state(), state)


def test_spikes_only_events_in_a_row_keep_the_rank_of_a_planted_layer():
    model = mlp_with([planted(400, 300, 6), planted(10, 400, 2, seed=1)])
    pruner = pruner_with(lambda e: 0.0, min_size=1000, include_output_layer=False)
    first = pruner.step(model, 1).records[0]
    assert first["action"] == "split" and first["rank_after"] == 6
    for epoch in (2, 3):
        row = pruner.step(model, epoch).records[0]
        assert row["action"] == "keep_no_bulk" and row["rank_after"] == row["rank_before"] == 6
        assert "no bulk" in row["note"] and row["n_known_spikes"] == 6
    assert model.layers[0].rank == 6


@pytest.mark.slow
def test_spikes_only_events_in_a_row_keep_the_rank_of_a_trained_layer():
    """A layer with the singular values of a committed trained 1000x1000 layer (MNIST, first event): cut
    to its spikes, it keeps them at the next two f = 0 events (the old code went 22 -> 10 -> 5)."""
    from pathlib import Path

    run = Path(__file__).resolve().parents[1] / "docs/results/v1/runs/mnist_fc_1000_1000_1000_500_cpu/rmt_seed0"
    with np.load(run / "spectra.npz") as spectra:
        s = torch.from_numpy(spectra["e1/layers.1"].astype(np.float64))
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(1000, 1000, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(1000, 1000, generator=g, dtype=torch.float64))[0]
    model = mlp_with([torch.randn(1000, 784), ((u * s) @ v.T).float(), torch.randn(10, 1000)])
    pruner = pruner_with(lambda e: 0.0, min_size=1000, include_output_layer=False, tolerance=1.0)
    rows = [{r["layer"]: r for r in pruner.step(model, e).records}["layers.1"] for e in (1, 2, 3)]
    assert rows[0]["action"] == "split" and 5 < rows[0]["rank_after"] < 100
    assert [r["action"] for r in rows[1:]] == ["keep_no_bulk", "keep_no_bulk"]
    assert rows[2]["rank_after"] == rows[0]["rank_after"] == model.layers[1].rank
