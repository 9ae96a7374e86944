"""Fake run folders, written by the package's own :class:`rmtprune.runs.folder.RunFolder`: the files, names, CSV
format and run record (:func:`rmtprune.runs.folder.summarise`) of a real run, with every number chosen by the
test. Tests of compare, matching and the sweep's outcomes use them instead of training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from rmtprune.files import write_csv
from rmtprune.runs.folder import METRICS_COLUMNS, RunFolder, summarise


def fake_run(folder: Path, config: dict[str, Any] | None = None, metrics: list[dict[str, Any]] | None = None,
             summary: dict[str, Any] | None = None, columns: list[str] = METRICS_COLUMNS,
             n_params_initial: int | None = None) -> RunFolder:
    """A run folder at ``folder`` (made with its parents): ``metrics.csv`` of the epoch rows ``metrics`` (None:
    no metrics.csv) with the header ``columns`` (an older run's, say), and a summary.json holding ``config``:
    with metrics, the record ``rmtprune train`` writes (``summarise``: final and best accuracies, final count,
    epochs completed) of a ``completed`` run starting at ``n_params_initial`` (default: the first row's
    ``n_params``); then the fields of ``summary`` over it (a hand-made summary alone without metrics)."""
    run = RunFolder(folder)
    run.path.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {}
    if metrics is not None:
        write_csv(run.metrics_csv, metrics, columns)
        initial = n_params_initial if n_params_initial is not None else metrics[0]["n_params"] if metrics else 0
        record = summarise({"status": "completed", "n_params_initial": initial, "config": {}}, metrics, 1.0)
    record.update(summary or {})
    if config is not None:
        record["config"] = config
    record["config"] = record.pop("config", {})  # last, as the package writes it
    run.write_summary(record)
    return run


def edit_summary(folder: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Rewrite ``folder``'s summary.json as ``edit(its content)`` returns it (any JSON value: a damaged one too)."""
    run = RunFolder(folder)
    run.summary_json.write_text(json.dumps(edit(json.loads(run.summary_json.read_text()))))
