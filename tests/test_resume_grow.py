"""A finished run continued with more epochs is the run of the new length (the event after its old last
epoch happens when it continues), or is refused where that cannot hold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import FAST

BASE = [a for a in FAST if not a.startswith("pruning=")] + ["device=cpu", "topology=784-64-64-10"]


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("arm", [["pruning=control"], ["pruning=rmt", "pruning.min_size=100", "schedule.horizon=6"]])
def test_growing_a_finished_run_equals_a_fresh_run_of_the_new_length(cli, tmp_path, arm):
    assert cli("train", *BASE, *arm, "epochs=3", "hydra.run.dir=fresh")[0] == 0
    assert cli("train", *BASE, *arm, "epochs=2", "hydra.run.dir=grown")[0] == 0
    code, _, err = cli("train", *BASE, *arm, "epochs=3", "resume=grown", "hydra.run.dir=x")
    assert code == 0, err
    assert rows(tmp_path / "grown") == rows(tmp_path / "fresh")  # the lr after epoch 2 got the event's factor too
    summary = json.loads((tmp_path / "grown" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    if "pruning=rmt" in arm:
        with open(tmp_path / "grown" / "layers.csv") as a, open(tmp_path / "fresh" / "layers.csv") as b:
            drop = ("seconds",)
            assert [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(a)] == \
                   [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(b)]


@pytest.mark.slow
def test_a_matched_baseline_cannot_grow(cli, tmp_path):
    arm = ["pruning=magnitude", "pruning.min_size=100", "pruning.target_params=30000"]
    assert cli("train", *BASE, *arm, "epochs=2", "hydra.run.dir=m")[0] == 0
    code, _, err = cli("train", *BASE, *arm, "epochs=3", "resume=m", "hydra.run.dir=x")
    assert code == 2 and err.count("rmtprune: error:") == 1 and "epochs=3" in err
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["status"] == "completed"


def test_a_run_stopped_before_its_first_checkpoint_starts_again_in_its_folder(cli, tmp_path):
    args = [*BASE, "pruning=none", "epochs=1"]
    assert cli("train", *args, "hydra.run.dir=a")[0] == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    # as left by a job killed during its first epoch: the same config, running, no checkpoint yet
    (tmp_path / "a" / "checkpoint.pt").unlink()
    (tmp_path / "a" / "DONE").unlink()
    (tmp_path / "a" / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    code, _, err = cli("train", *args, "hydra.run.dir=a")
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["status"] == "completed"
    # with a checkpoint the same folder is refused without resume= (its epochs would be lost)
    (tmp_path / "a" / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    code, _, err = cli("train", *args, "hydra.run.dir=a")
    assert code == 2 and "resume=true" in err
