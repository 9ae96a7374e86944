"""logger=tensorboard / mlflow: the numbers of metrics.csv and layers.csv, and the spectra, written and read back."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from rmtprune.config.validate import check_logger
from rmtprune.errors import UserError
from rmtprune.train.loggers import Logger, open_logger

ROWS = [
    {"epoch": 1, "train_loss": 0.9, "train_acc": 0.7, "test_loss": 1.0, "test_acc": 0.68, "n_params": 5000,
     "n_params_after": 3000, "pruned_layers": 1, "lr": 0.02, "test_loss_after_event": 1.2,
     "test_acc_after_event": 0.61, "seconds": 1.5},
    {"epoch": 2, "train_loss": 0.5, "train_acc": 0.8, "test_loss": 0.6, "test_acc": 0.79, "n_params": 3000,
     "n_params_after": 3000, "pruned_layers": 0, "lr": 0.0192, "test_loss_after_event": math.nan,
     "test_acc_after_event": math.nan, "seconds": 1.4},
]
RECORDS = [
    {"layer": "layers.0", "n_spikes": 4, "fit_error": 0.012, "rank_before": 100, "rank_after": 40,
     "params_before": 5000, "params_after": 2000, "action": "split"},
    {"layer": "layers.1", "n_spikes": math.nan, "fit_error": math.nan, "rank_before": 10, "rank_after": 10,
     "params_before": 1000, "params_after": 1000, "action": "skip_small"},
    {"layer": "layers.2", "n_spikes": 3, "fit_error": 0.2, "rank_before": 10, "rank_after": 10,
     "params_before": 900, "params_after": 900, "action": "skip_bad_fit"},
]


def spectrum(seed: int = 0) -> np.ndarray:
    """Singular values of a 200 x 100 Gaussian matrix, descending."""
    return np.linalg.svd(np.random.default_rng(seed).normal(size=(200, 100)), compute_uv=False)


def cfg(logger: str, root) -> object:
    return OmegaConf.create({"logger": logger, "output_root": str(root), "seed": 0, "topology": [784, 10],
                             "pruning": {"name": "rmt", "tolerance": 0.05, "stop_epoch": None}})


def test_csv_logger_writes_nothing(tmp_path):
    logger = open_logger(cfg("csv", tmp_path), tmp_path / "run")
    assert type(logger) is Logger
    logger.log_epoch(ROWS[0])
    logger.log_event(1, RECORDS, {"layers.0": spectrum()})
    logger.close()
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tensorboard_event_file_holds_the_scalars_and_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = spectrum()
    run = tmp_path / "run"
    with open_logger(cfg("tensorboard", tmp_path), run) as logger:
        logger.log_epoch(ROWS[0])
        logger.log_event(1, RECORDS, {"layers.0": values})
        logger.log_epoch(ROWS[1])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()

    def series(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert series("test/acc") == [(1, pytest.approx(0.68)), (2, pytest.approx(0.79))]
    assert series("train/loss") == [(1, pytest.approx(0.9)), (2, pytest.approx(0.5))]
    assert series("test/loss") == [(1, pytest.approx(1.0)), (2, pytest.approx(0.6))]
    assert series("epoch/lr") == [(1, pytest.approx(0.02)), (2, pytest.approx(0.0192))]
    assert series("params/n_params") == [(1, 5000), (2, 3000)]
    assert series("params/n_params_after") == [(1, 3000), (2, 3000)]
    assert series("test/acc_after_event") == [(1, pytest.approx(0.61))]  # NaN of epoch 2 left out
    assert series("prune/layers.0/n_spikes") == [(1, 4)]
    assert series("prune/layers.0/fit_error") == [(1, pytest.approx(0.012))]
    assert series("prune/layers.0/rank_after") == [(1, 40)]
    # a layer too small to be looked at has no scalars (they would be constant); a bad fit still shows its fit
    assert not [t for t in tags["scalars"] if t.startswith("prune/layers.1/")]
    assert series("prune/layers.2/fit_error") == [(1, pytest.approx(0.2))]
    assert not [t for t in tags["scalars"] if t.startswith("epoch/") and t[6:].startswith(("train", "test", "val"))]
    assert "epoch/epoch" not in tags["scalars"]
    assert tags["histograms"] == ["spectrum/layers.0"]
    (event,) = acc.Histograms("spectrum/layers.0")
    h = event.histogram_value
    assert event.step == 1 and h.num == values.size
    assert h.min == pytest.approx(values.min()) and h.max == pytest.approx(values.max())
    assert h.sum == pytest.approx(values.sum()) and h.sum_squares == pytest.approx((values ** 2).sum())
    assert sum(h.bucket) == values.size


@pytest.mark.slow
def test_mlflow_run_holds_metrics_params_and_spectra(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "out" / "run"
    config = cfg("mlflow", tmp_path / "out")
    logger = open_logger(config, run)
    logger.log_epoch(ROWS[0])
    logger.log_event(1, RECORDS, {"layers.0": spectrum()})
    logger.close()
    client = MlflowClient(tracking_uri=(tmp_path / "out" / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("rmtprune").experiment_id])
    assert found.data.metrics["test/acc"] == pytest.approx(0.68)
    assert found.data.metrics["prune/layers.0/rank_after"] == 40 and found.data.params["seed"] == "0"
    local = client.download_artifacts(found.info.run_id, "spectra/e1.npz", str(tmp_path))
    with np.load(local) as data:
        np.testing.assert_allclose(data["layers.0"], spectrum())
    # a resumed run logs into the same MLflow run
    again = open_logger(config, run)
    again.log_epoch(ROWS[1])
    again.close()
    (found,) = client.search_runs([client.get_experiment_by_name("rmtprune").experiment_id])
    assert [m.step for m in client.get_metric_history(found.info.run_id, "test/acc")] == [1, 2]
    assert found.info.status == "FINISHED"


def test_tensorboard_shows_the_resolved_config_and_overlays_the_splits(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    with open_logger(cfg("tensorboard", tmp_path), run) as logger:
        logger.log_epoch(ROWS[0])
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hp = {k: (v.string_value or v.number_value or v.bool_value) for k, v in start.hparams.items()}
    assert hp["logger"] == "tensorboard" and hp["pruning.tolerance"] == pytest.approx(0.05)
    assert hp["topology"] == "[784, 10]" and hp["pruning.stop_epoch"] == "None"
    (config,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["loss"] == ["train/loss", "val/loss", "test/loss"]


@pytest.mark.slow
@pytest.mark.parametrize("status, mlflow_status", [("failed", "FAILED"), ("interrupted", "KILLED")])
def test_mlflow_closes_a_run_that_did_not_complete_as_failed_or_killed(tmp_path, status, mlflow_status):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    logger = open_logger(cfg("mlflow", tmp_path), tmp_path / "run")
    logger.log_epoch(ROWS[0])
    logger.close(status)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("rmtprune").experiment_id])
    assert found.info.status == mlflow_status


def test_a_missing_logger_package_is_one_line_naming_the_logger_and_pip(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match=r"logger=tensorboard .*pip install tensorboard"):
        check_logger("tensorboard")
    with pytest.raises(UserError, match="logger=tensorboard"):
        open_logger(cfg("tensorboard", tmp_path), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_logger_without_its_package_is_refused_before_any_run(cli, monkeypatch, tmp_path):
    import importlib.util

    from conftest import FAST

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code, _, err = cli("train", *FAST, "logger=mlflow", "hydra.run.dir=run")
    assert code == 2 and err.count("rmtprune: error:") == 1
    assert "logger=mlflow needs the mlflow package" in err and "pip install mlflow-skinny" in err
    assert not (tmp_path / "run").exists()
