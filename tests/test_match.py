"""``pruning.match=trajectory``: a matched baseline holds the matched run's count after every event."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from conftest import FAST
from tests_support.configs import compose_config

from rmtprune.config.identity import config_key

SMALL = [*FAST, "dataset.train_size=500", "dataset.test_size=200", "device=cpu", "epochs=4",
         "pruning.min_size=1000"]
ARMS = [["pruning=magnitude"], ["pruning=lowrank", "pruning.rank_rule=uniform"], ["pruning=neuron"]]


def counts_after(folder):
    with open(folder / "metrics.csv") as f:
        return {int(r["epoch"]): int(r["n_params_after"]) for r in csv.DictReader(f)}


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("rmtprune: error:")]


@pytest.fixture
def rmt_run(cli, tmp_path):
    code, _, err = cli("train", *SMALL, "pruning=rmt", "schedule.horizon=4", "hydra.run.dir=rmt")
    assert code == 0, err
    return tmp_path / "rmt"


@pytest.mark.slow
def test_trajectory_baselines_hold_the_rmt_count_after_every_event(cli, tmp_path, rmt_run):
    rmt = counts_after(rmt_run)
    events = [1, 2, 3]
    assert rmt[3] < rmt[2] < rmt[1]  # the linear schedule cuts at every event
    for arm in ARMS:
        folder = tmp_path / arm[0].split("=")[1]
        code, _, err = cli("train", *SMALL, *arm, f"pruning.target_from={rmt_run}", "pruning.match=trajectory",
                           f"hydra.run.dir={folder}")
        assert code == 0, (arm, err)
        ours = counts_after(folder)
        for e in events:
            assert abs(ours[e] - rmt[e]) <= 0.01 * rmt[e], (arm, e, ours[e], rmt[e])
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["config"]["pruning"]["target_trajectory"] == [rmt[e] for e in events]
        with open(folder / "layers.csv") as f:
            notes = {int(r["epoch"]): r["note"] for r in csv.DictReader(f)}
        assert all(f"budget {rmt[e]:,}" in notes[e] for e in events), arm


def test_final_is_the_default_and_leaves_the_identity_of_earlier_configs():
    cfg = compose_config(*SMALL, "pruning=magnitude", "pruning.target_params=9000")
    assert cfg.pruning.match == "final" and cfg.pruning.target_trajectory is None
    plain = json.loads(json.dumps(dict(cfg_container(cfg))))
    for key in ("match", "target_trajectory"):
        del plain["pruning"][key]
    assert config_key(cfg) == config_key(plain)
    plain["pruning"]["match"] = "trajectory"
    assert config_key(plain) != config_key(cfg)


def cfg_container(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.slow
def test_bad_match_combinations_are_one_error_line_before_training(cli, tmp_path, rmt_run):
    gap = tmp_path / "gap"
    shutil.copytree(rmt_run, gap)
    lines = (gap / "metrics.csv").read_text().splitlines()
    (gap / "metrics.csv").write_text("\n".join(line for line in lines if not line.startswith("2,")) + "\n")
    cases = [
        (["pruning=magnitude", "pruning.target_params=90000", "pruning.match=trajectory"], "pruning.match=trajectory"),
        (["pruning=lowrank", f"pruning.target_from={rmt_run}", "pruning.match=trajectory", "pruning.target_epoch=2"],
         "pruning.target_epoch=2"),
        (["pruning=neuron", f"pruning.target_from={gap}", "pruning.match=trajectory"], "after epoch 2"),
        (["pruning=magnitude", f"pruning.target_from={rmt_run}", "pruning.match=exact"], "pruning.match"),
        (["pruning=magnitude", f"pruning.target_from={rmt_run}", "pruning.target_trajectory=[1,2,3]"],
         "pruning.target_trajectory"),
    ]
    for i, (overrides, needle) in enumerate(cases):
        run_dir = tmp_path / "bad" / str(i)
        code, _, err = cli("train", *SMALL, *overrides, f"hydra.run.dir={run_dir}")
        found = error_lines(err)
        assert code == 2 and len(found) == 1 and needle in found[0], (overrides, err)
        assert "Traceback" not in err and not (run_dir / "metrics.csv").exists()


@pytest.mark.slow
def test_a_sweep_with_two_trajectories_to_one_final_count_is_ambiguous(cli, tmp_path, rmt_run):
    """Two finished rmt runs of the seed in one sweep folder, with the same final count but other counts after
    an event: match=trajectory cannot choose (match=final still can: the counts it needs agree)."""
    sweep = tmp_path / "sweep"
    shutil.copytree(rmt_run, sweep / "a")
    shutil.copytree(rmt_run, sweep / "b")
    rows = list(csv.DictReader(open(sweep / "b" / "metrics.csv", newline="")))
    rows[1]["n_params_after"] = str(int(rows[1]["n_params_after"]) + 1000)  # after event 2, not the final count
    with open(sweep / "b" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, _, err = cli("train", *SMALL, "pruning=magnitude", f"pruning.target_from={sweep}", "pruning.match=trajectory",
                       "hydra.run.dir=amb")
    found = error_lines(err)
    assert code == 2 and len(found) == 1 and "different counts after the events" in found[0], err
    code, _, err = cli("train", *SMALL, "pruning=magnitude", f"pruning.target_from={sweep}", "epochs=4",
                       "hydra.run.dir=final")
    assert code == 0, err
