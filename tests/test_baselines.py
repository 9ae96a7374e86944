"""The baselines matched to a parameter count: gradual magnitude pruning, low-rank cuts without RMT, and
``pruning.target_from``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, interrupted_at
from tests_support.configs import compose_config
from tests_support.runs import fake_run as write_fake_run
from tests_support.spikes import planted_exact
from torch import nn

from rmtprune.errors import UserError
from rmtprune.nn.geometry import count_parameters
from rmtprune.nn.layers import LowRankLinear
from rmtprune.nn.models import MLP
from rmtprune.train.checkpoint import load_file, rebuild_model

P0 = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10  # the dense FAST network
TARGET = 100000  # 1% of it is more than one rank step of layer 0 (784 + 256 parameters)
SMALL = ["pruning.min_size=1000"]  # every layer of the FAST network eligible, the output layer too


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def summary_of(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def cubic(j: int, n: int) -> float:
    return 1 - (1 - j / n) ** 3


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("rmtprune: error:")]


def nothing_trained(root: Path) -> bool:
    return not any(root.rglob("metrics.csv")) and not any(root.rglob("checkpoint.pt"))


def mlp(widths, seed=0):
    torch.manual_seed(seed)
    return MLP(widths)


# --- magnitude: the masks and the threshold ---------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_event_zeroes_the_smallest_weights_to_the_exact_count(scope):
    from rmtprune.prune.magnitude import MagnitudePruner

    model = mlp([60, 50, 40, 10])
    dense = sum(p.numel() for p in model.parameters())
    target = 2000
    pruner = MagnitudePruner(target, scope=scope, min_size=100)
    pruner.setup(model, epochs=2)  # one event, after epoch 1: the whole way at once
    weights = {n: m.weight.detach().abs().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    event = pruner.step(model, 1)
    assert abs(count_parameters(model) - target) <= (0 if scope == "global" else 3)
    kept = {n: m.weight_mask.bool() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if scope == "global":  # one threshold: every pruned magnitude <= every kept one, over all layers
        pruned_max = max(float(weights[n][~k].max()) for n, k in kept.items() if (~k).any())
        kept_min = min(float(weights[n][k].min()) for n, k in kept.items())
        assert pruned_max <= kept_min
    else:  # the same sparsity in every layer, and a threshold per layer
        fractions = [float(k.float().mean()) for k in kept.values()]
        assert max(fractions) - min(fractions) < 0.01
        for n, k in kept.items():
            assert float(weights[n][~k].max()) <= float(weights[n][k].min())
    weights_zeroed = dense - target
    assert sum(int((~k).sum()) for k in kept.values()) == pytest.approx(weights_zeroed, abs=3)
    assert {r["action"] for r in event.records} == {"mask"}
    assert all(np.isnan(r["rank_before"]) and np.isnan(r["rank_after"]) for r in event.records)


def test_masks_keep_pruned_weights_zero_while_training_and_finalize_makes_them_permanent():
    from rmtprune.prune.magnitude import MagnitudePruner

    model = mlp([60, 50, 40, 10])
    pruner = MagnitudePruner(3000, scope="global", min_size=100)
    pruner.setup(model, epochs=3)
    pruner.setup(model, epochs=3)  # idempotent: a second setup (a resume) attaches no second mask
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(64, 60), torch.randint(0, 10, (64,))
    pruner.step(model, 1)
    count = count_parameters(model)
    zeros = {n: m.weight_mask == 0 for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert count < sum(p.numel() for p in model.parameters())
    for _ in range(10):  # momentum from before the event would move pruned weights if the mask did not hold
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model(x)
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            assert torch.all(m.weight[zeros[n]] == 0) and (m.weight_orig[zeros[n]] != 0).any()
    assert count_parameters(model) == count
    pruner.finalize(model)
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            assert not hasattr(m, "weight_mask") and isinstance(m.weight, nn.Parameter)
            assert torch.all(m.weight[zeros[n]] == 0)
    # a plain model counts every entry, zeros included: its non-zeros are the masked count
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert sum(int(torch.count_nonzero(p)) for p in model.parameters()) <= count


# --- low rank: the rules --------------------------------------------------------------------------


def planted_model():
    model = mlp([80, 60, 50, 10])
    with torch.no_grad():
        model.layers[0].weight.copy_(planted_exact(60, 80, 6, 0))
        model.layers[1].weight.copy_(planted_exact(50, 60, 4, 1))
    return model


def test_energy_rule_cuts_planted_low_rank_layers_to_their_rank_at_the_matching_budget():
    from rmtprune.prune.lowrank import LowRankPruner

    model = planted_model()
    # ranks 6 and 4 as splits, r (in + out) + bias, and the output layer (not pruned) as it is
    target = 6 * (80 + 60) + 60 + 4 * (60 + 50) + 50 + 10 * 50 + 10
    pruner = LowRankPruner(target, rank_rule="energy", min_size=100, include_output_layer=False)
    w0 = model.layers[0].weight.detach().clone()
    pruner.setup(model, epochs=2)
    event = pruner.step(model, 1)
    assert count_parameters(model) == target
    assert isinstance(model.layers[0], LowRankLinear) and model.layers[0].rank == 6
    assert isinstance(model.layers[1], LowRankLinear) and model.layers[1].rank == 4
    # the share eta chosen is in (5/6, 1): 5 of the 6 equal values hold 5/6 of layer 0's energy
    eta = event.records[0]["keep_fraction"]
    assert 5 / 6 < eta < 1
    assert torch.allclose(model.layers[0].weight_matrix(), w0, atol=1e-3)  # rank 6 holds all but the noise
    assert [r["action"] for r in event.records] == ["split", "split"]


def test_uniform_rule_keeps_the_same_fraction_of_every_layers_full_rank():
    from rmtprune.prune.lowrank import LowRankPruner

    model = mlp([80, 60, 50, 10])
    target = 4000
    pruner = LowRankPruner(target, rank_rule="uniform", min_size=100, include_output_layer=False)
    pruner.setup(model, epochs=2)
    event = pruner.step(model, 1)
    ranks = {r["layer"]: r["rank_after"] for r in event.records}
    theta = event.records[0]["keep_fraction"]
    # r = ceil(theta p): p = 60 and 50
    assert ranks == {"layers.0": int(np.ceil(theta * 60)), "layers.1": int(np.ceil(theta * 50))}
    # no other common fraction gives a count nearer the target
    def count(r0, r1):
        return r0 * 140 + 60 + r1 * 110 + 50 + 510
    best = min(abs(count(int(np.ceil(t * 60)), int(np.ceil(t * 50))) - target) for t in np.linspace(0, 1, 20001))
    assert abs(count_parameters(model) - target) == best


# --- both arms through the CLI: the target, the cubic schedule, the ledger, model.pt ---------------


ARMS = [("magnitude", "pruning.scope=global"), ("magnitude", "pruning.scope=layer"),
        ("lowrank", "pruning.rank_rule=energy"), ("lowrank", "pruning.rank_rule=uniform")]


@pytest.mark.slow
@pytest.mark.parametrize("arm,setting", ARMS)
def test_both_arms_reach_the_target_on_the_cubic_schedule(cli, tmp_path, arm, setting):
    code, out, err = cli("train", *FAST, "epochs=4", "device=cpu", f"pruning={arm}", setting, *SMALL,
                         f"pruning.target_params={TARGET}", "hydra.run.dir=run")
    assert code == 0, err
    run = tmp_path / "run"
    summary = summary_of(run)
    assert summary["n_params_initial"] == P0
    assert abs(summary["n_params_final"] - TARGET) <= 0.01 * TARGET
    rows = read_csv(run / "metrics.csv")
    assert int(rows[0]["n_params"]) == P0
    # events after epochs 1, 2, 3 of 4: the count after event j is P0 - (P0 - T) c_j, c_j = 1 - (1 - j/3)^3
    for j in (1, 2, 3):
        expected = P0 - (P0 - TARGET) * cubic(j, 3)
        tol = 3 if arm == "magnitude" else 0.01 * expected
        assert abs(int(rows[j - 1]["n_params_after"]) - expected) <= tol, (j, rows[j - 1]["n_params_after"])
    assert int(rows[3]["n_params"]) == int(rows[3]["n_params_after"]) == summary["n_params_final"]
    ledger = read_csv(run / "layers.csv")
    actions = {r["action"] for r in ledger}
    if arm == "magnitude":
        assert actions == {"mask"} and all(r["rank_before"] == "" for r in ledger)
        by_event = {}
        for r in ledger:
            by_event.setdefault(r["epoch"], 0)
            by_event[r["epoch"]] += int(r["params_after"])
        assert by_event["3"] == summary["n_params_final"]
        model = rebuild_model(load_file(run / "model.pt"))
        assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
        nonzero_weights = sum(int(torch.count_nonzero(m.weight)) for m in model.layers)
        biases = sum(m.bias.numel() for m in model.layers)
        assert nonzero_weights + biases == summary["n_params_final"]
        # the checkpoint keeps the masks, and rebuild_model restores them
        masked = rebuild_model(load_file(run / "checkpoint.pt"))
        assert hasattr(masked.layers[0], "weight_mask") and count_parameters(masked) == summary["n_params_final"]
    else:
        assert actions <= {"split", "truncate", "keep"} and "split" in actions
        model = rebuild_model(load_file(run / "model.pt"))
        assert sum(p.numel() for p in model.parameters()) == summary["n_params_final"]


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["magnitude", "lowrank"])
def test_target_epoch_reaches_the_count_early_and_later_events_keep_it(cli, tmp_path, arm):
    code, out, err = cli("train", *FAST, "epochs=5", "device=cpu", f"pruning={arm}", *SMALL,
                         f"pruning.target_params={TARGET}", "pruning.target_epoch=2", "hydra.run.dir=run")
    assert code == 0, err
    run = tmp_path / "run"
    rows = read_csv(run / "metrics.csv")
    # events after epochs 1-4; the cubic schedule runs over the two after epochs <= 2 (J = 2)
    expected = P0 - (P0 - TARGET) * cubic(1, 2)
    assert abs(int(rows[0]["n_params_after"]) - expected) <= (3 if arm == "magnitude" else 0.01 * expected)
    counts = [int(r["n_params_after"]) for r in rows[1:]]
    assert abs(counts[0] - TARGET) <= 0.01 * TARGET and len(set(counts)) == 1
    assert summary_of(run)["n_params_final"] == counts[0]
    # the calendar goes on after the target: the lr falls by the factor at every event epoch
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([lrs[0] * 0.96 ** k for k in range(5)])
    late = [r for r in read_csv(run / "layers.csv") if int(r["epoch"]) > 2]
    assert {int(r["epoch"]) for r in late} == {3, 4} and {r["action"] for r in late} == {"keep"}


@pytest.mark.slow
def test_interrupted_magnitude_run_resumes_to_identical_metrics(cli, tmp_path, monkeypatch):
    args = [*FAST, "epochs=4", "device=cpu", "pruning=magnitude", *SMALL, f"pruning.target_params={TARGET}"]
    assert cli("train", *args, "hydra.run.dir=full")[0] == 0

    with interrupted_at(monkeypatch, 3):
        code, _, err = cli("train", *args, "output_root=part", "hydra.run.dir=part/first")
        assert code == 130
    code, _, err = cli("train", *args, "output_root=part", "resume=true", "hydra.run.dir=part/second")
    assert code == 0, err

    def without_time(folder):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(folder / "metrics.csv")]

    assert without_time(tmp_path / "part" / "first") == without_time(tmp_path / "full")
    a = load_file(tmp_path / "full" / "model.pt")["state_dict"]
    b = load_file(tmp_path / "part" / "first" / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- target_from ------------------------------------------------------------------------------------


def fake_run(source: Path | None, folder: Path, **changes) -> None:
    """A finished run folder: a real run's summary.json (or a minimal one of the FAST network), some fields changed."""
    if source is not None:
        summary = summary_of(source)
    else:
        summary = {"status": "completed", "seed": 0, "dataset": "synthetic", "model": "mlp",
                   "topology": "784-256-128-10", "pruning": "rmt", "n_params_initial": P0, "n_params_final": 70000,
                   "config": {"model": {"name": "mlp"}, "topology": "784-256-128-10", "seed": 0}}
    write_fake_run(folder, summary={**summary, **changes})


@pytest.fixture
def rmt_run(cli, tmp_path):
    code, _, err = cli("train", *FAST, "epochs=2", "device=cpu", "pruning=rmt", "schedule=oneshot", *SMALL,
                       "hydra.run.dir=rmt")
    assert code == 0, err
    summary = summary_of(tmp_path / "rmt")
    assert summary["n_params_final"] < P0
    return tmp_path / "rmt"


@pytest.mark.slow
def test_target_from_a_run_folder_and_from_a_sweep_seed_by_seed(cli, tmp_path, rmt_run):
    rmt_count = summary_of(rmt_run)["n_params_final"]
    code, _, err = cli("train", *FAST, "epochs=2", "device=cpu", "pruning=magnitude", *SMALL,
                       f"pruning.target_from={rmt_run}", "hydra.run.dir=matched")
    assert code == 0, err
    matched = summary_of(tmp_path / "matched")
    assert matched["config"]["pruning"]["target_params"] == rmt_count
    assert abs(matched["n_params_final"] - rmt_count) <= 0.01 * rmt_count

    # a sweep folder: the rmt run of each seed is matched (none / control arms of the same seed are not)
    sweep = tmp_path / "sweep"
    fake_run(rmt_run, sweep / "0", seed=0, n_params_final=80000)
    fake_run(rmt_run, sweep / "1", seed=1, n_params_final=120000)
    fake_run(rmt_run, sweep / "2", seed=0, pruning="none", n_params_final=P0)
    fake_run(rmt_run, sweep / "3", seed=1, pruning="control", n_params_final=P0)
    code, _, err = cli("train", "-m", *FAST, "epochs=2", "device=cpu", "pruning=lowrank", *SMALL, "seed=0,1",
                       f"pruning.target_from={sweep}", "hydra.sweep.dir=baselines")
    assert code == 0, err
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "baselines").rglob("summary.json")]
    found = {s["seed"]: s for s in summaries}
    assert found[0]["config"]["pruning"]["target_params"] == 80000
    assert found[1]["config"]["pruning"]["target_params"] == 120000
    for seed, target in ((0, 80000), (1, 120000)):
        assert abs(found[seed]["n_params_final"] - target) <= 0.01 * target


@pytest.mark.slow
def test_check_target_resolves_without_training_and_leaves_the_config(tmp_path):
    from rmtprune.runs.targets import check_target

    def composed(*overrides):
        return compose_config(*FAST, "epochs=2", *overrides)

    run = tmp_path / "run"
    fake_run(None, run)
    cfg = composed("pruning=magnitude", f"pruning.target_from={run}")
    check_target(cfg)
    assert cfg.pruning.target_params is None
    with pytest.raises(UserError, match="pruning.target_from"):
        check_target(composed("pruning=magnitude", f"pruning.target_from={tmp_path / 'nowhere'}"))
    with pytest.raises(UserError, match="pruning.target_from.*topology"):
        check_target(composed("pruning=lowrank", "topology=784-64-10", f"pruning.target_from={run}"))
    with pytest.raises(UserError, match="pruning.target_params=999999 is larger than the network"):
        check_target(composed("pruning=magnitude", "pruning.target_params=999999"))
    with pytest.raises(UserError, match="pruning.target_params=100 is below"):
        check_target(composed("pruning=lowrank", "pruning.target_params=100", *SMALL))


# --- bad input: one line naming the key, exit 2, nothing trained -------------------------------------


def bad_target_cases(tmp: Path) -> list[tuple[list[str], str]]:
    unfinished = tmp / "unfinished"
    fake_run(None, unfinished, status="interrupted")
    other_topology = tmp / "other_topology"
    fake_run(None, other_topology, topology="784-64-10")
    other_data = tmp / "other_data"
    fake_run(None, other_data, dataset="fashion_mnist")
    empty = tmp / "empty"
    empty.mkdir()
    ambiguous = tmp / "ambiguous"
    fake_run(None, ambiguous / "a", n_params_final=70000)
    fake_run(None, ambiguous / "b", n_params_final=90000)
    return [
        (["pruning=magnitude", f"pruning.target_params={P0 + 1}"], "pruning.target_params"),
        (["pruning=lowrank", "pruning.target_params=1000"], "pruning.target_params"),  # below the rank floors
        (["pruning=magnitude", "pruning.min_size=1000000", "pruning.target_params=50000"], "pruning.target_params"),
        (["pruning=magnitude", f"pruning.target_from={unfinished}"], "pruning.target_from"),
        (["pruning=magnitude", f"pruning.target_from={empty}"], "pruning.target_from"),
        (["pruning=lowrank", f"pruning.target_from={other_topology}"], "pruning.target_from"),
        (["pruning=lowrank", f"pruning.target_from={other_data}"], "pruning.target_from"),
        (["pruning=magnitude", f"pruning.target_from={ambiguous}"], "pruning.target_from"),
        (["pruning=magnitude", "pruning.target_params=50000", "pruning.target_epoch=0"], "pruning.target_epoch"),
        (["pruning=lowrank", "pruning.target_params=50000", "pruning.start_epoch=2", "pruning.target_epoch=1"],
         "pruning.target_epoch"),
        (["pruning=magnitude", "pruning.target_params=50000", "pruning.target_epoch=2"], "pruning.target_epoch"),
    ]


@pytest.mark.slow
def test_bad_targets_are_one_line_naming_the_key_before_any_training(cli, tmp_path):
    cases = bad_target_cases(tmp_path / "inputs")
    messages = []
    for i, (overrides, key) in enumerate(cases):
        run_dir = tmp_path / "bad" / str(i)
        code, out, err = cli("train", *FAST, "epochs=3", "device=cpu", *SMALL, *overrides, f"hydra.run.dir={run_dir}")
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1 and key in lines[0], (overrides, err)
        assert "Traceback" not in err
        assert nothing_trained(run_dir) and not (run_dir / "summary.json").exists()
        messages.append(lines[0])
    assert "larger than the network" in messages[0] and "below the smallest count" in messages[1]
    assert "below the smallest count" in messages[2]
    assert "not finished" in messages[3] and "no finished run" in messages[4]
    assert "topology=784-64-10" in messages[5] and "dataset=fashion_mnist" in messages[6]
    assert "different final counts" in messages[7]
    assert "must be a positive integer" in messages[8] and "no event of pruning=lowrank" in messages[9]
    assert "not before the last event (after epoch 2)" in messages[10]  # epochs=3: events after 1 and 2


def test_a_target_the_pruner_cannot_reach_is_refused_in_setup_before_training():
    from rmtprune.prune.lowrank import LowRankPruner
    from rmtprune.prune.magnitude import MagnitudePruner

    model = mlp([60, 50, 10])
    with pytest.raises(UserError, match="target_params=5000 is larger than the network"):
        MagnitudePruner(5000, min_size=10).setup(model, epochs=3)
    with pytest.raises(UserError, match="has no event in a run of 1 epochs"):
        MagnitudePruner(1000, min_size=10).setup(model, epochs=1)
    # floors: layer 0 at rank 5 = 5 (60 + 50) + 50, the output layer at rank 10 (no saving: kept dense)
    floor = 5 * 110 + 50 + 10 * 50 + 10
    with pytest.raises(UserError, match=f"below the smallest count lowrank pruning can reach here \\({floor:,}"):
        LowRankPruner(floor - 1, min_rank=5, min_size=10).setup(model, epochs=3)
    LowRankPruner(floor, min_rank=5, min_size=10).setup(model, epochs=3)


@pytest.mark.slow
def test_target_from_refuses_an_unpruned_run_and_another_calendar_or_length(cli, tmp_path):
    """A matched baseline must prune to a pruned count on rmt's calendar: a control / none run, a run that
    pruned nothing, or one with another event calendar or epochs is refused, naming pruning.target_from and
    the key; the same run with this calendar is matched."""
    from rmtprune.runs.targets import check_target, target_from_run

    calendar = {"name": "rmt", "every": 1, "start_epoch": 1, "stop_epoch": None, "lr_factor": 0.96, "momentum": "reset"}

    def run(name, pruning="rmt", final=70000, epochs=2, seed=0, **changes):
        config = {"model": {"name": "mlp"}, "topology": "784-256-128-10", "seed": seed, "epochs": epochs,
                  "pruning": {**calendar, "name": pruning, **changes}}
        fake_run(None, tmp_path / name, pruning=pruning, n_params_final=final, seed=seed, config=config)
        return tmp_path / name

    def composed(*overrides):
        return compose_config(*FAST, "epochs=2", "pruning=magnitude", *overrides)

    good = run("good")
    assert target_from_run(composed(f"pruning.target_from={good}")) == 70000
    refused = [
        (run("control", pruning="control", final=P0), "pruning=control"),
        (run("none", pruning="none", final=P0), "pruning=none"),
        (run("nothing", final=P0), "pruned nothing"),
        (run("every2", every=2), "pruning.every=2"),
        (run("start3", start_epoch=3), "pruning.start_epoch=3"),
        (run("stop1", stop_epoch=1), "pruning.stop_epoch=1"),
        (run("lr", lr_factor=0.9), "pruning.lr_factor=0.9"),
        (run("keep", momentum="keep"), "pruning.momentum=keep"),
        (run("longer", epochs=5), "epochs=5"),
        # a damaged summary.json: the count it records, not a generic or wrong message (20000.7 was taken)
        (run("text", final="abc"), 'n_params_final="abc"'), (run("negative", final=-5), "n_params_final=-5"),
        (run("fraction", final=20000.7), "n_params_final=20000.7"), (run("null", final=None), "n_params_final=null"),
    ]
    for folder, needle in refused:
        with pytest.raises(UserError, match="pruning.target_from") as info:
            check_target(composed(f"pruning.target_from={folder}"))
        assert needle in str(info.value), (folder, str(info.value))
    # a sweep folder whose seed-0 rmt run has another calendar: refused, naming the key
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (tmp_path / "every2").rename(sweep / "rmt_seed0")
    with pytest.raises(UserError, match="pruning.target_from.*pruning.every=2"):
        check_target(composed(f"pruning.target_from={sweep}"))
    # end to end: one line, exit 2, nothing trained
    code, _, err = cli("train", *FAST, "epochs=2", "device=cpu", "pruning=magnitude",
                       f"pruning.target_from={tmp_path / 'control'}", "hydra.run.dir=matched")
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "pruning.target_from" in lines[0] and "pruning=control" in lines[0], err
    assert not (tmp_path / "matched" / "summary.json").exists()
