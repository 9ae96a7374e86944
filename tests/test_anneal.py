"""The final lr anneal (``optimizer.anneal``): per step, on top of the event calendar, the same in every arm,
and resumed bit for bit."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import TINY, interrupted_at

LR, FACTOR, EPOCHS, ANNEAL = 0.04, 0.96, 4, 2
N_BATCHES = math.ceil(500 / 128)  # TINY: 500 training images, batch 128
ARGS = [*TINY, "device=cpu", f"epochs={EPOCHS}", f"optimizer.lr={LR}", f"optimizer.anneal_epochs={ANNEAL}"]


def closed_form(shape: str) -> list[float]:
    """The lr of every step: lr FACTOR^(e-1) (an event after every epoch before e) times, in the last ANNEAL
    epochs, 0.5 (1 + cos(pi t / T)) or 1 - t / T at step t of their T = ANNEAL N_BATCHES steps."""
    total = ANNEAL * N_BATCHES
    out = []
    for e in range(1, EPOCHS + 1):
        for b in range(N_BATCHES):
            t = (e - (EPOCHS - ANNEAL) - 1) * N_BATCHES + b
            m = 1.0 if t < 0 else 0.5 * (1 + math.cos(math.pi * t / total)) if shape == "cosine" else 1 - t / total
            out.append(LR * FACTOR ** (e - 1) * m)
    return out


@pytest.fixture
def record_lr(monkeypatch):
    """The lr of the optimizer's group at every training step of the runs made while it is active."""
    from rmtprune.train.step import TrainStep

    seen: list[float] = []
    original = TrainStep.__call__

    def call(self, x, y):
        seen.append(self.opt.param_groups[0]["lr"])
        return original(self, x, y)

    monkeypatch.setattr(TrainStep, "__call__", call)
    return seen


def metrics(folder) -> list[dict[str, str]]:
    with open(folder / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["cosine", "linear"])
def test_every_step_lr_is_the_closed_form_and_control_gets_rmts(cli, tmp_path, record_lr, shape):
    sequences = {}
    for arm in ("control", "rmt"):
        record_lr.clear()
        code, _, err = cli("train", *ARGS, f"pruning={arm}", f"optimizer.anneal={shape}", f"hydra.run.dir={arm}")
        assert code == 0, err
        sequences[arm] = list(record_lr)
        assert sequences[arm] == pytest.approx(closed_form(shape), rel=1e-12, abs=0)
        lr_column = [float(r["lr"]) for r in metrics(tmp_path / arm)]
        assert lr_column == pytest.approx(closed_form(shape)[::N_BATCHES], rel=1e-12)  # each epoch's first step
    assert sequences["control"] == sequences["rmt"]
    assert json.loads((tmp_path / "rmt" / "summary.json").read_text())["n_params_final"] < \
        json.loads((tmp_path / "control" / "summary.json").read_text())["n_params_final"]
    last = sequences["rmt"][-1] / (LR * FACTOR ** (EPOCHS - 1))
    assert 0 < last <= 1 / (ANNEAL * N_BATCHES)  # the run ends near 0


@pytest.mark.slow
def test_without_anneal_the_calendar_is_untouched(cli, record_lr):
    assert cli("train", *ARGS, "pruning=control", "hydra.run.dir=plain")[0] == 0
    assert record_lr == pytest.approx([LR * FACTOR ** (e - 1) for e in range(1, EPOCHS + 1) for _ in range(N_BATCHES)],
                                      rel=1e-12)


@pytest.mark.slow
def test_a_run_interrupted_mid_anneal_resumes_bit_identically(cli, tmp_path, monkeypatch):
    args = [*ARGS, "epochs=5", "optimizer.anneal=cosine", "optimizer.anneal_epochs=3", "pruning=rmt"]
    assert cli("train", *args, "hydra.run.dir=full")[0] == 0
    with interrupted_at(monkeypatch, 4):  # epochs 3..5 anneal: stopped after epoch 3, inside the anneal
        code, _, _ = cli("train", *args, "output_root=part", "hydra.run.dir=part/first")
        assert code == 130
    code, _, err = cli("train", *args, "output_root=part", "resume=true", "hydra.run.dir=part/second")
    assert code == 0, err
    assert metrics(tmp_path / "part" / "first") == metrics(tmp_path / "full")
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "part" / "first" / "model.pt", weights_only=True)["state_dict"]
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.slow
def test_an_annealed_run_cannot_grow_its_epochs(cli, tmp_path):
    args = [*ARGS, "optimizer.anneal=linear", "pruning=none"]
    assert cli("train", *args, "hydra.run.dir=base")[0] == 0
    code, _, err = cli("train", *args, f"epochs={EPOCHS + 2}", "resume=base", "hydra.run.dir=more")
    assert code == 2 and "optimizer.anneal=linear" in err and err.startswith("rmtprune: error:")


@pytest.mark.slow
@pytest.mark.parametrize("over, needle", [(["optimizer.anneal=step"], "optimizer.anneal='step'"),
                                          (["optimizer.anneal=cosine", "optimizer.anneal_epochs=5"], "anneal_epochs=5"),
                                          (["optimizer.anneal=linear", "optimizer.anneal_epochs=0"], "anneal_epochs=0")])
def test_bad_anneal_settings_are_one_error_line(cli, over, needle):
    code, _, err = cli("train", *ARGS, *over, "hydra.run.dir=bad")
    assert code == 2 and err.strip().splitlines() == [err.strip()] and needle in err


def test_identity_without_anneal_is_that_of_older_runs():
    from rmtprune.config.identity import config_key

    old = {"seed": 0, "optimizer": {"name": "sgd", "lr": 0.02}, "pruning": {"name": "none"}}
    off = {**old, "optimizer": {**old["optimizer"], "anneal": "none", "anneal_epochs": 3}}
    assert config_key(off) == config_key(old)
    assert config_key({**off, "optimizer": {**off["optimizer"], "anneal_epochs": 7}}) == config_key(old)
    cosine = {**off, "optimizer": {**off["optimizer"], "anneal": "cosine"}}
    assert config_key(cosine) != config_key(old)
    assert config_key({**cosine, "optimizer": {**cosine["optimizer"], "anneal_epochs": 7}}) != config_key(cosine)
