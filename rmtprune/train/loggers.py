"""Experiment loggers people already read: ``logger=csv`` (the default), ``tensorboard``, ``mlflow``.

The run folder's CSV and JSON files (metrics.csv, layers.csv, summary.json, spectra.npz) are always
written; a logger sends the same numbers to one more place. :func:`open_logger` gives a
:class:`Logger`, which the training loop calls at three points::

    logger = open_logger(cfg, run_dir)            # before the first epoch (fresh or resumed)
    logger.log_event(epoch, event.records, event.spectra)   # after a pruning event
    logger.log_epoch(row)                         # after each epoch (the row of metrics.csv)
    logger.close(status)                          # at the end, however the run ends (completed|failed|interrupted)

What is logged, at step = epoch:

* ``<split>/<metric>`` for the columns ``<split>_<metric>`` of metrics.csv, split train, val or test
  (``train/loss``, ``test/loss``, ``test/acc``, ``test/acc_after_event``: accuracies as fractions), so the
  splits of one metric sit side by side (TensorBoard's custom-scalars tab overlays them in one chart);
  ``epoch/<column>`` for the other numeric columns (lr, seconds, pruned_layers), and ``params/n_params``,
  ``params/n_params_after``: the parameter count before and after that epoch's event;
* ``prune/<layer>/<key>`` for key in n_spikes, fit_error, rank_before, rank_after, params_after
  (the ledger's columns, per layer; NaN entries, e.g. the fit of a skipped layer, are left out, and so is
  a layer neither fitted nor changed, e.g. one below ``min_size``: its scalars would be constant);
* TensorBoard: the resolved config in the hparams plugin; MLflow: the config as parameters, and the run
  closed FINISHED, FAILED or KILLED (interrupted) as the run ended;
* the singular values of every fitted layer: a histogram ``spectrum/<layer>`` (TensorBoard), or an
  artifact ``spectra/e<epoch>.npz`` with one array per layer (MLflow, which has no histograms).

TensorBoard writes to ``<run>/tb/`` (``tensorboard --logdir outputs``); MLflow to a local file store
``mlruns/`` in ``output_root`` (``mlflow ui --backend-store-uri outputs/mlruns``), one MLflow run per
rmtprune run, named by its folder. A resumed run appends to the same TensorBoard folder (a new event
file) and to the same MLflow run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rmtprune.config.identity import config_key, flatten
from rmtprune.config.validate import check_logger
from rmtprune.runs.folder import exclusive

LEDGER_SCALARS = ("n_spikes", "fit_error", "rank_before", "rank_after", "params_after")


PARAM_COLUMNS = ("n_params", "n_params_after")


SPLITS = ("train", "val", "test")


MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (NaN, empty, text)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value)):
        return float(value)
    return None


def scalar_tag(column: str) -> str:
    """The tag of a metrics.csv column: ``train_loss`` -> ``train/loss``, ``n_params`` -> ``params/n_params``,
    ``lr`` -> ``epoch/lr``."""
    split, _, metric = column.partition("_")
    if split in SPLITS and metric:
        return f"{split}/{metric}"
    return f"params/{column}" if column in PARAM_COLUMNS else f"epoch/{column}"


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.csv row, by :func:`scalar_tag` (the epoch itself is the step)."""
    return {scalar_tag(key): number for key, value in row.items()
            if key != "epoch" and (number := _number(value)) is not None}


def event_scalars(records: list[dict[str, Any]]) -> dict[str, float]:
    """``prune/<layer>/<key>`` for the ledger columns of :data:`LEDGER_SCALARS` that are finite, for the layers
    the event fitted or changed."""
    out = {}
    for r in records:
        fitted = _number(r.get("fit_error")) is not None
        if not fitted and r.get("rank_after") == r.get("rank_before") and r.get("params_after") == r.get("params_before"):
            continue
        for key in LEDGER_SCALARS:
            number = _number(r.get(key))
            if number is not None:
                out[f"prune/{r['layer']}/{key}"] = number
    return out


class Logger:
    """``logger=csv``: the run folder's files are the log; nothing else is written."""

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One epoch's row of metrics.csv (``row["epoch"]`` is the step)."""

    def log_event(self, epoch: int, records: list[dict[str, Any]], spectra: dict[str, np.ndarray]) -> None:
        """A pruning event after ``epoch``: its ledger rows and the singular values of each fitted layer."""

    def close(self, status: str = "completed") -> None:
        """Flush and release the files (idempotent); ``status``: how the run ended (completed, failed,
        interrupted)."""

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close("completed" if exc_type is None else "failed")


class TensorBoardLogger(Logger):
    """Scalars and singular-value histograms in ``<run>/tb/`` (torch.utils.tensorboard.SummaryWriter),
    flushed after every call so that a running job can be watched."""

    def __init__(self, run_dir: Path, cfg: Any = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / "tb"
        self.writer: Any = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_custom_scalars({"metrics": {metric: ["Multiline", [f"{s}/{metric}" for s in SPLITS]]
                                                    for metric in ("loss", "acc")}})
        if cfg is not None:
            self._hparams(cfg)

    def _hparams(self, cfg: Any) -> None:
        """The resolved config in the hparams plugin (lists as text), linked to the metrics logged per epoch."""
        from omegaconf import OmegaConf
        from torch.utils.tensorboard.summary import hparams

        config = OmegaConf.to_container(cfg, resolve=True)
        values = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                  for k, v in flatten(config if isinstance(config, dict) else {}).items()}
        metrics = {f"{s}/{m}": math.nan for s in SPLITS for m in ("loss", "acc")}
        for summary in hparams(values, metrics):
            self.writer.file_writer.add_summary(summary)

    def log_epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for tag, value in epoch_scalars(row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_event(self, epoch: int, records: list[dict[str, Any]], spectra: dict[str, np.ndarray]) -> None:
        for tag, value in event_scalars(records).items():
            self.writer.add_scalar(tag, value, int(epoch))
        for layer, values in spectra.items():
            values = np.asarray(values, dtype=np.float64)
            if values.size:
                self.writer.add_histogram(f"spectrum/{layer}", values, int(epoch), bins="auto")
        self.writer.flush()

    def close(self, status: str = "completed") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowLogger(Logger):
    """Metrics, the run's config as parameters, and the spectra as ``.npz`` artifacts in a local file
    store ``<output_root>/mlruns`` (experiment ``rmtprune``; one MLflow run per run folder, reopened on
    resume through the tag ``rmtprune.run_dir``)."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        import os

        # MLflow 3 keeps the file store (mlruns/) in maintenance mode behind this opt-in; a database
        # store would need SQLAlchemy, which mlflow-skinny does not install
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        store = (Path(str(cfg.output_root)) / "mlruns").resolve()
        store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=store.as_uri())
        exp_id = self._experiment(store, "rmtprune")
        folder = str(Path(run_dir).resolve())
        found = self.client.search_runs([exp_id], filter_string=f"tags.`rmtprune.run_dir` = '{folder}'",
                                        max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            from omegaconf import OmegaConf

            run = self.client.create_run(exp_id, run_name=Path(run_dir).name,
                                         tags={"rmtprune.run_dir": folder, "rmtprune.config_key": config_key(cfg)})
            self.run_id = run.info.run_id
            config = OmegaConf.to_container(cfg, resolve=True)
            for key, value in flatten(config if isinstance(config, dict) else {}).items():
                self.client.log_param(self.run_id, key, str(value)[:500])
        self._closed = False

    def _experiment(self, store: Path, name: str) -> str:
        """The id of experiment ``name``, created by the first job of a sweep that needs it: the jobs take
        turns (a lock file in the store), and one that loses a race with another machine reads the winner's."""

        with exclusive(store / ".rmtprune-experiment.lock"):
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            try:
                return self.client.create_experiment(name)
            except Exception:  # noqa: BLE001  (MLflow's "already exists": created meanwhile elsewhere)
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                return experiment.experiment_id

    def _log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow metric names allow letters, digits, _ - . / and spaces
        metrics = [Metric(key=k, value=v, timestamp=now, step=step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._log(epoch_scalars(row), int(row["epoch"]))

    def log_event(self, epoch: int, records: list[dict[str, Any]], spectra: dict[str, np.ndarray]) -> None:
        import tempfile

        self._log(event_scalars(records), int(epoch))
        if spectra:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"e{int(epoch)}.npz"
                np.savez_compressed(path, **{k: np.asarray(v) for k, v in spectra.items()})
                self.client.log_artifact(self.run_id, str(path), artifact_path="spectra")

    def close(self, status: str = "completed") -> None:
        if not self._closed:
            self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FAILED"))
            self._closed = True


def open_logger(cfg: Any, run_dir: Path) -> Logger:
    """The logger of ``cfg.logger`` for the run in ``run_dir`` (see the module docstring).

    Raises:
        UserError: the logger's package is not installed (naming ``logger=<name>`` and the pip command).
    """
    name = str(cfg.logger)
    check_logger(name)
    if name == "tensorboard":
        return TensorBoardLogger(run_dir, cfg)
    if name == "mlflow":
        return MLflowLogger(cfg, run_dir)
    return Logger()
