"""One short run of each arm, pinned bit for bit (the same seed and one thread give the same numbers).

tests/golden/pinned_runs.json holds every number of each run's metrics.csv and of its
ledger (layers.csv), wall times left out, written by the code before the package was reorganised into subpackages (commit 7fa1b83),
so a move or a refactor that changes any arithmetic of training or pruning fails here. After a change
that is meant to change the numbers, rewrite the file with ``RMTPRUNE_WRITE_PINNED=1 pytest
tests/test_pinned_runs.py`` and say why in the commit.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "pinned_runs.json"
COMMON = ["dataset=synthetic", "dataset.train_size=1000", "dataset.test_size=300", "topology=784-200-120-10",
          "epochs=4", "seed=3", "threads=1", "device=cpu", "progress=none", "magnitude_sweep.enabled=false",
          "cost.latency=false"]
ARMS = {
    "rmt": ["pruning=rmt", "schedule.horizon=8"],
    "control": ["pruning=control"],
    "none": ["pruning=none"],
    "magnitude": ["pruning=magnitude", "pruning.target_params=60000"],
    "lowrank": ["pruning=lowrank", "pruning.target_params=120000"],
    "neuron": ["pruning=neuron", "pruning.target_params=90000"],
    "spikes": ["pruning=rmt", "schedule=spikes", "schedule.patience=1"],
}
TIMES = {"seconds"}


def numbers(folder: Path) -> dict:
    """Every number a run wrote that does not depend on the clock: metrics.csv and the ledger."""
    with open(folder / "metrics.csv", newline="") as fh:
        metrics = [{k: v for k, v in row.items() if k not in TIMES} for row in csv.DictReader(fh)]
    ledger = []
    if (folder / "layers.csv").exists():
        with open(folder / "layers.csv", newline="") as fh:
            ledger = [{k: v for k, v in row.items() if k not in TIMES} for row in csv.DictReader(fh)]
    return {"metrics": metrics, "ledger": ledger}


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_an_arm_gives_the_pinned_numbers(cli, tmp_path: Path, arm: str) -> None:
    code, _, err = cli("train", *COMMON, *ARMS[arm], f"hydra.run.dir={tmp_path / arm}")
    assert code == 0, err
    got = numbers(tmp_path / arm)
    assert got["metrics"] and (arm in ("none", "control") or got["metrics"][-1]["n_params"] != got["metrics"][0]["n_params"])
    if os.environ.get("RMTPRUNE_WRITE_PINNED"):
        pinned = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        pinned[arm] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text())[arm]
