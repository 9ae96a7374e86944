"""The event calendar: the lr factor and momentum policy at every event epoch, the control arm, and the
model evaluated right after each event."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import FAST
from torch import nn

from rmtprune.config.build import data_settings
from rmtprune.prune.calendar import EventCalendar
from rmtprune.prune.control import ControlPruner
from rmtprune.prune.events import PruneEvent, rebuild_optimizer


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_calendar_epochs_and_no_event_after_the_last_epoch():
    cal = EventCalendar(every=3, start_epoch=2, stop_epoch=8)
    assert [e for e in range(1, 12) if cal.is_event(e)] == [2, 5, 8]
    assert EventCalendar().events(5) == [1, 2, 3, 4]
    pruner = ControlPruner(every=2)
    pruner.setup(nn.Linear(2, 2), epochs=5)
    assert [e for e in range(1, 7) if pruner.is_event(e)] == [1, 3]  # 5 is the last epoch: no event after it
    with pytest.raises(ValueError, match="stop_epoch"):
        EventCalendar(start_epoch=3, stop_epoch=2)
    with pytest.raises(ValueError, match="every"):
        EventCalendar(every=0)


def test_rebuild_resets_momentum_of_every_parameter_or_keeps_the_untouched():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    event = PruneEvent(1, replaced=[model[0].weight])
    reset = rebuild_optimizer(opt, model, event, momentum="reset", lr=0.05)
    assert len(reset.state) == 0 and reset.param_groups[0]["lr"] == 0.05
    assert reset.param_groups[0]["weight_decay"] == 0.01 and reset.param_groups[0]["momentum"] == 0.9
    keep = rebuild_optimizer(opt, model, event, momentum="keep")
    assert model[0].weight not in keep.state and model[1].weight in keep.state
    assert keep.param_groups[0]["lr"] == 0.1
    assert keep.state[model[1].weight]["momentum_buffer"] is not opt.state[model[1].weight]["momentum_buffer"]


def _run(cli, tmp_path, name, *args):
    code, _, err = cli("train", *FAST, "device=cpu", "topology=784-128-128-10", "epochs=5", "optimizer.lr=0.05",
                       f"hydra.run.dir={name}", *args)
    assert code == 0, err
    return read_csv(tmp_path / name / "metrics.csv")


@pytest.mark.slow
def test_the_control_arm_has_the_lr_calendar_of_the_rmt_arm_and_the_normal_arm_a_constant_lr(cli, tmp_path):
    calendar = ["pruning.every=2", "pruning.start_epoch=1", "pruning.lr_factor=0.5"]
    rmt = _run(cli, tmp_path, "rmt", "pruning=rmt", "pruning.min_size=100", "schedule=oneshot", *calendar)
    control = _run(cli, tmp_path, "control", "pruning=control", *calendar)
    normal = _run(cli, tmp_path, "none", "pruning=none")
    assert [r["lr"] for r in control] == [r["lr"] for r in rmt]
    # events after epochs 1 and 3 (every 2), each x0.5, whether or not the rmt event changed the model
    assert [float(r["lr"]) for r in rmt] == pytest.approx([0.05, 0.025, 0.025, 0.0125, 0.0125])
    assert {float(r["lr"]) for r in normal} == {0.05}
    # the control arm trains the same network as the normal arm until its first momentum reset
    assert control[0]["test_acc"] == normal[0]["test_acc"] and control[0]["train_loss"] == normal[0]["train_loss"]
    assert control[2]["test_acc"] != normal[2]["test_acc"] or control[2]["train_loss"] != normal[2]["train_loss"]
    assert all(int(r["n_params_after"]) == int(normal[0]["n_params"]) for r in control)


@pytest.mark.slow
def test_the_lr_factor_applies_at_event_epochs_where_nothing_changed(cli, tmp_path):
    # tolerance 0: every fit is "bad", no layer changes, yet the calendar still decays the lr
    rows = _run(cli, tmp_path, "tol0", "pruning=rmt", "pruning.tolerance=0", "pruning.min_size=100",
                "pruning.lr_factor=0.5")
    ledger = read_csv(tmp_path / "tol0" / "layers.csv")
    assert {r["action"] for r in ledger} == {"skip_bad_fit"}
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.025, 0.0125, 0.00625, 0.003125])


@pytest.mark.slow
def test_accuracy_right_after_each_event_is_that_of_the_cut_model(cli, tmp_path):
    from omegaconf import OmegaConf

    from rmtprune.data import load_data
    from rmtprune.nn.evaluate import evaluate
    from rmtprune.prune.rmt import prune_model
    from rmtprune.train.checkpoint import load_file, rebuild_model

    cut = ["pruning=rmt", "pruning.min_size=100", "schedule=oneshot", "pruning.start_epoch=2"]
    rows = _run(cli, tmp_path, "three", *cut, "epochs=3")
    assert rows[0]["test_acc_after_event"] == ""  # no event after epoch 1
    assert rows[2]["test_acc_after_event"] == ""  # never an event after the last epoch
    assert int(rows[1]["n_params_after"]) < int(rows[1]["n_params"])  # the event after epoch 2 cut the model
    # independently: the same seed for 2 epochs (no event), then the same cut by the Python API, evaluated
    _run(cli, tmp_path, "two", *cut, "epochs=2")
    model = rebuild_model(load_file(tmp_path / "two" / "model.pt"))
    prune_model(model, keep_fraction=0.0, min_size=100)
    config = json.loads((tmp_path / "two" / "summary.json").read_text())["config"]
    data = load_data(data_settings(OmegaConf.create(config["dataset"])), torch.device("cpu"))
    loss, acc = evaluate(model, data.test_x, data.test_y)
    assert float(rows[1]["test_acc_after_event"]) == pytest.approx(acc, abs=1e-12)
    assert float(rows[1]["test_loss_after_event"]) == pytest.approx(loss, rel=1e-6)
    assert sum(p.numel() for p in model.parameters()) == int(rows[1]["n_params_after"])
