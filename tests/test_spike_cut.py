"""The spike-count cut (schedule="spikes", patience), the margin, and prune_model on a model cut before.

Planted spectra: a fixed noise matrix plus a low-rank signal whose number of directions at 5x the BBP
strength sigma (n p)^(1/4) grows over the events, then stops; each switched-on direction is one value above
the MP edge, so the spike count is known at every event.
"""

import math

import numpy as np
import pytest
import torch
from tests_support.spikes import frames
from torch import nn

from rmtprune import RMTPruner, prune_model
from rmtprune.nn.layers import LowRankLinear
from rmtprune.prune.schedules import target_rank

OUT, IN = 200, 400
COUNTS = [2, 4, 6, 6, 6, 6, 6, 6]  # spikes planted before events 1..8: growth stops after event 3


def _signal(rng, k_max=8):
    u, v = frames(rng, OUT, IN, k_max)
    theta = 5.0 * (OUT * IN) ** 0.25 * np.linspace(1.0, 1.5, k_max)
    return u, v, theta


def _planted(rng, k, noise, signal):
    u, v, theta = signal
    return noise + (u[:, :k] * theta[:k]) @ v[:, :k].T


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, OUT), nn.ReLU(), nn.Linear(OUT, 10))


def _run(pruner, counts=COUNTS, seed=0):
    """Events 1..len(counts) on a model whose first layer holds noise plus counts[e - 1] spikes while dense."""
    rng = np.random.default_rng(seed)
    noise, signal = rng.normal(size=(OUT, IN)), _signal(rng)
    model, rows = _model(seed), []
    for epoch, k in enumerate(counts, start=1):
        if isinstance(model[0], nn.Linear):
            model[0].weight.data = torch.tensor(_planted(rng, k, noise, signal), dtype=torch.float32)
        rows.append(pruner.step(model, epoch).records[0])
    return model, rows


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_the_cut_comes_after_patience_events_without_growth_and_stays(patience):
    pruner = RMTPruner(schedule="spikes", patience=patience, include_output_layer=False, beta=0.01)
    model, rows = _run(pruner)
    cut = 3 + patience  # the count last grows at event 3
    assert [r["n_spikes"] for r in rows[:cut]] == COUNTS[:cut]
    assert all(r["action"] == "keep" and r["rank_after"] == OUT and r["keep_fraction"] == 1.0 for r in rows[:cut - 1])
    assert rows[cut - 1]["action"] == "split" and rows[cut - 1]["rank_after"] == 6
    assert rows[cut - 1]["keep_fraction"] == 0.0
    assert all(r["action"] == "keep_cut" and r["rank_after"] == 6 for r in rows[cut:])
    assert isinstance(model[0], LowRankLinear) and model[0].rank == 6


def test_growth_resets_the_patience():
    # the count stalls once (event 3), grows again (event 4), then stalls: patience 2 cuts at event 6
    pruner = RMTPruner(schedule="spikes", patience=2, include_output_layer=False, beta=0.01)
    _, rows = _run(pruner, counts=[2, 4, 4, 6, 6, 6, 6])
    assert [r["action"] for r in rows] == ["keep"] * 5 + ["split", "keep_cut"]
    assert rows[5]["rank_after"] == 6


def test_a_layer_without_spikes_is_never_cut_to_the_floor():
    """Pure noise: no value above the edge at any event, so the count never 'stalls' at k = 0 and the layer
    keeps its rank (a cut to k = 0 would leave min_rank = 1)."""
    pruner = RMTPruner(schedule="spikes", patience=1, include_output_layer=False, beta=0.01)
    model, rows = _run(pruner, counts=[0] * 5)
    assert [r["n_spikes"] for r in rows] == [0] * 5
    assert all(r["action"] == "keep" and r["rank_after"] == OUT for r in rows)
    assert isinstance(model[0], nn.Linear) and not isinstance(model[0], LowRankLinear)


@pytest.mark.parametrize("margin,rank", [(None, 6), (1.0, 6), (1.5, 9), (2.0, 12), (2.3, 14)])
def test_the_margin_keeps_ceil_margin_times_the_spikes(margin, rank):
    pruner = RMTPruner(schedule="spikes", patience=2, margin=margin, include_output_layer=False, beta=0.01)
    model, rows = _run(pruner)
    assert rows[4]["action"] == "split" and rows[4]["rank_after"] == rank == math.ceil((margin or 1.0) * 6 - 1e-9)
    assert all(r["rank_after"] == rank for r in rows[5:]) and model[0].rank == rank
    # the same margin on a one-shot cut
    _, (first,) = _run(RMTPruner(schedule="oneshot", margin=margin, include_output_layer=False, beta=0.01), [6])
    assert first["rank_after"] == rank


def test_the_margin_only_changes_a_cut_to_the_spikes():
    assert target_rank(100, 10, 0.5, 1, margin=2.0) == target_rank(100, 10, 0.5, 1) == 55
    assert target_rank(100, 10, 0.0, 1, margin=2.0) == 20 and target_rank(100, 60, 0.0, 1, margin=2.0) == 100


def test_the_patience_survives_a_checkpoint():
    # stop after event 4 (one event without growth), restore into a fresh pruner: the cut still comes at 5
    first = RMTPruner(schedule="spikes", patience=2, include_output_layer=False, beta=0.01)
    _run(first, COUNTS[:4])
    state = first.state_dict()
    assert state["spike_counts"] == {"0": 6} and state["stalls"] == {"0": 1}
    resumed = RMTPruner(schedule="spikes", patience=2, include_output_layer=False, beta=0.01)
    resumed.load_state_dict(state)
    rng = np.random.default_rng(0)
    noise, signal = rng.normal(size=(OUT, IN)), _signal(rng)
    model = _model()
    model[0].weight.data = torch.tensor(_planted(rng, 6, noise, signal), dtype=torch.float32)
    assert resumed.step(model, 5).records[0]["action"] == "split"


@pytest.mark.parametrize("kwargs,match", [
    ({"schedule": "spikes", "patience": 0}, "patience"), ({"schedule": "spikes", "patience": 1.5}, "patience"),
    ({"schedule": "linear", "patience": 2}, "patience"), ({"margin": 0.9}, "margin"), ({"margin": "2"}, "margin"),
    ({"schedule": "spike"}, "schedule"),
])
def test_bad_options_are_refused_on_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RMTPruner(**kwargs)


@pytest.mark.parametrize("keep_fraction,action", [(0.0, "split"), (0.8, "truncate")])
def test_prune_model_twice_is_idempotent(keep_fraction, action):
    rng = np.random.default_rng(3)
    noise, signal = rng.normal(size=(OUT, IN)), _signal(rng)
    model = _model()
    model[0].weight.data = torch.tensor(_planted(rng, 6, noise, signal), dtype=torch.float32)
    first = prune_model(model, keep_fraction=keep_fraction, include_output_layer=False, beta=0.01).records[0]
    assert first["action"] == action and first["n_spikes"] == 6
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        again = prune_model(model, keep_fraction=keep_fraction, include_output_layer=False, beta=0.01).records[0]
        assert again["action"] == "keep_no_bulk" and again["rank_before"] == again["rank_after"] == first["rank_after"]
        assert again["n_known_spikes"] == first["rank_after"]
        state = model.state_dict()
        assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)


@pytest.mark.slow
def test_the_command_line_runs_the_spike_count_cut(cli, tmp_path):
    import csv
    import json

    from conftest import TINY

    args = [*TINY, "epochs=3", "pruning=rmt", "pruning.tolerance=1", "schedule=spikes", "schedule.patience=1",
            "pruning.margin=2"]
    code, _, err = cli("train", *args, "hydra.run.dir=run")
    assert code == 0, err
    with open(tmp_path / "run" / "layers.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["layer"] == "layers.0"]  # 32 x 784
    assert len(rows) == 2 and {r["keep_fraction"] for r in rows} <= {"0.0", "1.0"}
    for r in rows:  # a cut keeps ceil(2 k) of the 32 values, k the spikes known at that event
        k = max(int(r["n_spikes"] or 0), int(r["n_known_spikes"] or 0))
        if r["action"] == "split":
            assert r["keep_fraction"] == "0.0" and int(r["rank_after"]) == max(1, min(32, 2 * k))  # min_rank 1
        else:
            assert r["rank_after"] == r["rank_before"]
    config = json.loads((tmp_path / "run" / "summary.json").read_text())["config"]
    assert config["schedule"]["name"] == "spikes" and config["schedule"]["patience"] == 1
    assert config["pruning"]["margin"] == 2.0
    code, _, err = cli("prune", "run", *args, "hydra.run.dir=again")
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["keep_fraction"] is None
    # a plain state_dict has no spike history: one event could cut nothing, so spikes is refused there
    torch.save(torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"], tmp_path / "sd.pt")
    code, _, err = cli("prune", "sd.pt", *args, "topology=784-32-10", "hydra.run.dir=sd")
    assert code == 2 and err.count("rmtprune: error:") == 1 and "schedule=oneshot" in err
    code, _, err = cli("prune", "run", *args, "optimizer.anneal=cosine", "hydra.run.dir=annealed")
    assert code == 2 and "optimizer.anneal=cosine" in err


@pytest.mark.slow
def test_patience_and_margin_are_refused_with_options_that_do_not_use_them():
    from rmtprune.commands.compose import Composer
    from rmtprune.commands.precheck import check_unused_keys, parse_overrides
    from rmtprune.errors import UserError

    with Composer(None, "config") as composer:
        linear = composer.compose(["pruning=rmt"])
        spikes = composer.compose(["pruning=rmt", "schedule=spikes"])
        magnitude = composer.compose(["pruning=magnitude", "pruning.target_params=1000"])
    check_unused_keys(parse_overrides(["schedule=spikes", "schedule.patience=3", "pruning.margin=2"]), [spikes])
    with pytest.raises(UserError, match="schedule.patience is not used by schedule=linear"):
        check_unused_keys(parse_overrides(["pruning=rmt", "schedule.patience=3"]), [linear])
    with pytest.raises(UserError, match="pruning.margin is not used by pruning=magnitude"):
        check_unused_keys(parse_overrides(["pruning=magnitude", "pruning.margin=2"]), [magnitude])
