"""The run loop's loggers and model warnings (rmtprune train logger=tensorboard; model warnings in summary.json)."""

import json

import pytest
from conftest import FAST

from rmtprune.config.validate import custom_model_overrides


@pytest.mark.slow
def test_logger_tensorboard_writes_the_run_to_tb(cli, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [a for a in FAST if a != "pruning=none"] + ["pruning=rmt", "pruning.tolerance=1.0", "schedule=oneshot",
                                                        "epochs=2", "logger=tensorboard", "hydra.run.dir=run"]
    code, _, err = cli("train", *args)
    assert code == 0, err
    acc = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("test/acc")] == [1, 2]
    assert [e.step for e in acc.Scalars("params/n_params_after")] == [1, 2]
    assert [e.step for e in acc.Scalars("prune/layers.0/rank_after")] == [1]
    assert "spectrum/layers.0" in acc.Tags()["histograms"]


def test_no_eligible_layer_is_a_warning_in_the_log_and_the_summary(cli, tmp_path):
    args = custom_model_overrides([*(a for a in FAST if not a.startswith(("topology=", "pruning="))), "model=custom",
                                   "model._target_=tests_support.nets.Net", "model.hidden=32", "pruning=rmt",
                                   "pruning.min_size=100000000", "epochs=1", "dataset.train_size=200",
                                   "hydra.run.dir=run"])
    code, _, err = cli("train", *args)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    (warning,) = summary["warnings"]
    assert "no layer of model=custom is eligible" in warning
