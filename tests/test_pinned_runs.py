"""One short run of each arm, pinned (the same seed and one thread give the same numbers).

tests/golden/pinned_runs.json holds every number of each run's metrics.csv and of its ledger (layers.csv),
wall times left out, and the machine that wrote them (``written_on``: torch and numpy versions, the CPU and
the kernels torch dispatches to). On that machine the numbers must match bit for bit, so a move or a
refactor that changes any arithmetic of training or pruning fails here. Another CPU rounds float32 sums
differently (another MKL code path, AVX2 against AVX-512), and 4 epochs amplify that to ~1e-5 of a loss and
now and then one test image more or less: there counts, ranks, epochs and every non-numeric field must still
match exactly, and the rest to within ``RTOL`` (accuracies within ``ACC_ATOL``), which a wrong learning
rate, schedule, rank or count exceeds by orders of magnitude. After a change that is meant to change the
numbers, rewrite the file with ``RMTPRUNE_WRITE_PINNED=1 pytest tests/test_pinned_runs.py`` and say why in
the commit.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

import pytest
import torch

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


RTOL = 1e-3  # another CPU's rounding: ~3e-5 of a loss at most, measured on AVX2 against AVX-512
ACC_ATOL = 0.01  # 3 of the 300 test images, 10 of the 1000 training images
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def fingerprint() -> dict[str, str]:
    """What decides the float rounding of a one-thread CPU run: library versions and the machine as a run's
    summary records it (CPU model, the kernels torch dispatches to, BLAS)."""
    from rmtprune.train.environment import machine

    facts = machine(torch.device("cpu"))
    return {"torch": torch.__version__, "numpy": np.__version__, "machine": platform.machine(),
            **{k: str(facts[k]) for k in ("cpu", "cpu_capability", "blas")}}


def _differs(key: str, got: str, want: str) -> bool:
    """Whether one field differs by more than another CPU's rounding: integers and text exactly, the numbers
    inside a text (a ledger note) and every other number to ``RTOL``, accuracies to ``ACC_ATOL``."""
    if got == want:
        return False
    g_parts, w_parts = _NUMBER.split(got), _NUMBER.split(want)
    g_nums, w_nums = _NUMBER.findall(got), _NUMBER.findall(want)
    if g_parts != w_parts or len(g_nums) != len(w_nums):
        return True
    for g, w in zip(g_nums, w_nums):
        if re.fullmatch(r"[-+]?\d+", w) and re.fullmatch(r"[-+]?\d+", g):
            if int(g) != int(w):
                return True
        elif "acc" in key and got == g:
            if abs(float(g) - float(w)) > ACC_ATOL:
                return True
        elif not np.isclose(float(g), float(w), rtol=RTOL, atol=1e-9):
            return True
    return False


def differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Every field of ``got`` (``numbers()``) that differs from ``want`` beyond another CPU's rounding."""
    out = []
    for part in ("metrics", "ledger"):
        if len(got[part]) != len(want[part]):
            out.append(f"{part}: {len(got[part])} rows, pinned {len(want[part])}")
            continue
        for i, (g, w) in enumerate(zip(got[part], want[part])):
            for key in sorted(set(g) | set(w)):
                if _differs(key, g.get(key, "<absent>"), w.get(key, "<absent>")):
                    out.append(f"{part}[{i}].{key}: {g.get(key, '<absent>')!r}, pinned {w.get(key, '<absent>')!r}")
    return out


def test_differences_tell_rounding_from_a_change() -> None:
    row = {"epoch": "3", "n_params": "182330", "lr": "0.0192", "train_loss": "1.0595397052764892",
           "test_acc": "0.5833333333333334", "note": "energy share eta 0.923564; budget 122,309 (event 2 of 3)"}
    want = {"metrics": [row], "ledger": []}

    def changed(**fields: str) -> list[str]:
        return differences({"metrics": [{**row, **fields}], "ledger": []}, want)

    assert changed() == []
    assert changed(train_loss="1.0595397281646728", test_acc="0.58", note=row["note"].replace("564", "563")) == []
    assert changed(train_loss="1.0701") and changed(lr="0.0196") and changed(test_acc="0.6")
    assert changed(n_params="182331") and changed(epoch="4") and changed(note=row["note"].replace("event 2", "event 3"))
    assert changed(note="energy share eta 0.93; budget 122,309 (event 2 of 3)")
    assert differences({"metrics": [], "ledger": []}, want) == ["metrics: 0 rows, pinned 1"]


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_an_arm_gives_the_pinned_numbers(cli, tmp_path: Path, arm: str) -> None:
    code, _, err = cli("train", *COMMON, *ARMS[arm], f"hydra.run.dir={tmp_path / arm}")
    assert code == 0, err
    got = numbers(tmp_path / arm)
    assert got["metrics"] and (arm in ("none", "control") or got["metrics"][-1]["n_params"] != got["metrics"][0]["n_params"])
    if os.environ.get("RMTPRUNE_WRITE_PINNED"):
        pinned = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"runs": {}}
        if pinned.get("written_on") != fingerprint():
            pinned = {"written_on": fingerprint(), "runs": {}}  # one machine's numbers, never a mixture
        pinned["runs"][arm] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(GOLDEN.read_text())
    if pinned["written_on"] == fingerprint():
        assert got == pinned["runs"][arm]
    else:
        found = differences(got, pinned["runs"][arm])
        assert not found, (f"{len(found)} numbers differ from the pinned ones (written on {pinned['written_on']}) "
                           "beyond another CPU's rounding:\n" + "\n".join(found[:20]))
