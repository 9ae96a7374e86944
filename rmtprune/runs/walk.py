"""Reading finished run folders back: summary, metrics, ledger, magnitude sweep, flat config.

Reports use only these files, never live objects, so they work on any run on any machine.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rmtprune.config.identity import flatten, identity
from rmtprune.files import read_json
from rmtprune.runs.folder import RunFolder, walk


@dataclass
class Run:
    """One run folder, read back."""

    folder: Path
    summary: dict[str, Any]
    config: dict[str, Any]          # flattened "a.b": value, identity keys only
    metrics: pd.DataFrame
    ledger: pd.DataFrame | None
    magnitude: pd.DataFrame | None
    spectra_problem: str | None = None  # why spectra.npz cannot be read: the run counts, its figures are skipped

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", self.summary.get("seed", -1)))

    @property
    def spectra_path(self) -> Path | None:
        p = RunFolder(self.folder).spectra_npz
        return p if p.exists() and self.spectra_problem is None else None

    @property
    def device_type(self) -> str | None:
        """``cpu``, ``cuda``, ... from summary.json's ``device`` (the device used), else the config's
        ``device`` when it names one; None when unknown (old runs, ``device=auto`` without a record)."""
        raw = self.summary.get("device")
        if not isinstance(raw, str) or not raw:
            cfg = self.summary.get("config")
            raw = cfg.get("device") if isinstance(cfg, dict) else None
        if not isinstance(raw, str) or not raw or raw == "auto":
            return None
        return raw.split(":", 1)[0]

    def machine(self) -> dict[str, str | None]:
        """What floating-point results depend on beyond the config: device type, torch threads, CPU
        model and the kernels torch dispatches to on it, BLAS and GPU model, as recorded in summary.json (None: not recorded, an older run)."""
        out: dict[str, str | None] = {"device": self.device_type}
        for key in MACHINE_KEYS:
            v = self.summary.get(key)
            out[key] = None if v is None else (v if isinstance(v, str) else json.dumps(v, sort_keys=True))
        return out

    @property
    def finished_at(self) -> str:
        """When the run finished (else started): ISO-8601 UTC text, so newer sorts later; '' if unknown."""
        for key in ("finished_at", "started_at"):
            v = self.summary.get(key)
            if isinstance(v, str) and v:
                return v
        return ""


# summary.json keys naming the machine a run ran on (besides ``device``); absent in older runs
MACHINE_KEYS = ("threads", "cpu", "cpu_capability", "blas", "gpu")


def run_config(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened identity of a summary's config (outputs.identity), as compare groups runs by it.

    A baseline matched to another run (``pruning.target_from``) is named by the folder it was matched to,
    not by its target count (or counts, ``match=trajectory``): the seeds of one matched arm have different counts and are still one arm.
    """
    flat = flatten(identity(config))
    target_from = (config.get("pruning") or {}).get("target_from") if isinstance(config.get("pruning"), dict) else None
    if target_from:
        flat.pop("pruning.target_params", None)
        flat.pop("pruning.target_trajectory", None)
        flat["pruning.target_from"] = Path(str(target_from).rstrip("/")).name
    return flat


def grouping_config(summary: dict[str, Any]) -> dict[str, Any]:
    """The config compare groups a run by: its own; for a model pruned after training (``rmtprune prune``: its
    config has ``model_path``) the config of the run that trained it (summary.json's ``source_config``, when
    recorded) with prune's ``pruning``, ``schedule`` and ``finetune_epochs``, so that the pruned models of a
    sweep's seeds are one arm beside the runs that trained them, paired by seed. ``model_path`` names a file,
    not a setting: it is left out."""
    config = summary["config"]
    if "model_path" not in config:
        return config
    source = summary.get("source_config")
    base = dict(source) if isinstance(source, dict) else {k: v for k, v in config.items() if k != "model_path"}
    base.update({k: config.get(k) for k in ("pruning", "schedule", "finetune_epochs")})
    return base


def _follow_redirect(folder: RunFolder) -> tuple[RunFolder | None, str | None]:
    """The folder holding the results of ``folder`` and a problem, if any.

    A job that resumed or skipped to an earlier run leaves ``redirect.json`` ({"run_dir": path}).
    A redirect that cannot be read or names no folder is a problem; the folder's own summary.json
    is then read if it has one, else the job is left out.
    """
    target, reason = folder.redirect()
    if target is not None:
        return RunFolder(target), None
    if reason is None:
        return folder, None
    return (folder if folder.summary_json.exists() else None), reason


def discover(paths: list[Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Run folders under ``paths`` (a run folder, a sweep folder, or any folder above them).

    Returns the folders (redirects followed, duplicates removed) and problems: job folders of a
    sweep that never wrote a summary, and redirects that lead nowhere.
    """
    folders: dict[Path, None] = {}
    problems: list[dict[str, str]] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            problems.append({"folder": str(path), "reason": "does not exist"})
            continue
        for hydra_dir in sorted(path.rglob(RunFolder.HYDRA)) if path.is_dir() else []:
            job = RunFolder(hydra_dir.parent)
            if not job.summary_json.exists() and not job.redirect_json.exists():
                problems.append({"folder": str(job.path), "reason": "no summary.json: the job failed before training "
                                 "(see its log)"})
        for candidate in walk(path):
            target, reason = _follow_redirect(candidate)
            if reason:
                problems.append({"folder": str(candidate.path), "reason": reason})
            if target is not None:
                folders[target.path.resolve()] = None
    return list(folders), problems


# metrics.csv columns that every finished epoch fills; the others may be empty (e.g. no event)
METRICS_REQUIRED = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


# summary.json fields that are numbers when present
SUMMARY_NUMBERS = ("n_params_initial", "n_params_final", "final_test_acc", "best_test_acc", "final_test_loss",
                   "wall_time_s", "epochs_completed")


def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.csv as numbers; raises ValueError naming the damage.

    Damaged means: the last line has no line end (the file was cut mid-row; rmtprune writes every
    line whole), a row with another number of fields than the header, a cell that is not a
    number, or an empty cell in a column every epoch fills (:data:`METRICS_REQUIRED`).
    """
    if not path.exists():
        return pd.DataFrame()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise ValueError(f"metrics.csv unreadable ({type(exc).__name__})") from None
    if not text.strip():
        return pd.DataFrame()
    if not text.endswith("\n"):
        raise ValueError("metrics.csv was cut mid-row (its last line has no line end)")
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    absent = [c for c in METRICS_REQUIRED if c not in header]
    if absent and len(rows) > 1:
        raise ValueError(f"metrics.csv has no column {', '.join(absent)}")
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"metrics.csv line {i} has {len(row)} fields, the header {len(header)}")
    raw = pd.DataFrame(rows[1:], columns=header, dtype=str)
    out = pd.DataFrame(index=raw.index)
    for col in header:
        cells = raw[col].str.strip()
        values = pd.to_numeric(cells, errors="coerce")
        bad = values.isna() & (cells != "") & (cells.str.lower() != "nan")
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise ValueError(f"metrics.csv line {i + 2}: {col}={raw[col].iloc[i]!r} is not a number")
        if col in METRICS_REQUIRED and values.isna().any():
            i = int(values.isna().to_numpy().argmax())
            raise ValueError(f"metrics.csv line {i + 2}: {col} is empty")
        out[col] = values
    if "epoch" in out and len(out):
        if not (out["epoch"] == out["epoch"].round()).all():
            raise ValueError("metrics.csv: an epoch is not a whole number")
        out["epoch"] = out["epoch"].astype(int)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_summary(summary: Any) -> dict[str, Any]:
    """summary.json's content if it has the shape compare relies on; raises ValueError otherwise."""
    if not isinstance(summary, dict):
        kind = "null" if summary is None else f"a {type(summary).__name__}"
        raise ValueError(f"summary.json holds {kind}, not an object")
    if "config" not in summary:
        raise ValueError("summary.json has no config")
    if not isinstance(summary["config"], dict):
        raise ValueError(f"summary.json: config is a {type(summary['config']).__name__}, not a mapping")
    for key in SUMMARY_NUMBERS:
        if summary.get(key) is not None and not _is_number(summary[key]):
            raise ValueError(f"summary.json: {key}={summary[key]!r} is not a number")
    if summary.get("status") == "completed":
        missing = [k for k in ("n_params_initial", "n_params_final") if summary.get(k) is None]
        if missing:
            raise ValueError(f"summary.json says completed but has no {', '.join(missing)}")
        for key in ("n_params_initial", "n_params_final", "epochs_completed"):
            if summary.get(key) is not None and not math.isfinite(summary[key]):
                raise ValueError(f"summary.json: {key}={summary[key]!r} is not a finite number")
    seed = summary["config"].get("seed", summary.get("seed"))
    if seed is not None and not (_is_number(seed) and float(seed) == int(seed)):
        raise ValueError(f"summary.json: seed={seed!r} is not a whole number")
    return summary


def check_spectra(path: Path) -> None:
    """Read every array of spectra.npz once (zip CRCs checked); raises ValueError when damaged."""
    if not path.exists():
        return
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                epoch, _, layer = key.partition("/")
                if not (epoch[:1] == "e" and epoch[1:].isdigit() and layer):
                    raise ValueError(f"key {key!r} is not e<epoch>/<layer>")
                data[key]
    except Exception as exc:  # a damaged zip can raise nearly anything: all mean "unreadable"
        detail = str(exc) if isinstance(exc, ValueError) and str(exc).startswith("key ") else type(exc).__name__
        raise ValueError(f"spectra.npz unreadable ({detail})") from None


def load_run(folder: Path) -> Run:
    """Read one run folder; raises ValueError with the reason when it cannot be read or is damaged.

    A damaged spectra.npz only feeds figures: the run is read, with the damage in ``spectra_problem``."""
    files = RunFolder(folder)
    try:
        summary = read_json(files.summary_json)
    except (OSError, ValueError) as exc:
        raise ValueError(f"summary.json unreadable ({type(exc).__name__})") from None
    summary = check_summary(summary)
    metrics = read_metrics(files.metrics_csv)
    done = summary.get("epochs_completed")
    if summary.get("status") == "completed" and done is not None and len(metrics) != int(done):
        raise ValueError(f"metrics.csv has {len(metrics)} epoch rows, summary.json says {int(done)} completed")
    if metrics.empty and summary.get("status") == "completed" and done == 0 and "prune_epoch" in summary:
        metrics = _not_finetuned(summary)
    try:
        check_spectra(files.spectra_npz)
        spectra_problem = None
    except ValueError as exc:
        spectra_problem = str(exc)
    ledger = _optional_csv(files.layers_csv)
    magnitude = _optional_csv(files.magnitude_csv, ("n_nonzero", "test_acc", "test_loss"))
    return Run(folder, summary, run_config(grouping_config(summary)), metrics, ledger, magnitude, spectra_problem)


def _not_finetuned(summary: dict[str, Any]) -> pd.DataFrame:
    """The one row of a model ``rmtprune prune`` left without fine-tuning (``finetune_epochs=0``): epoch 0,
    the pruned model's test loss and accuracy and its parameter count, as its summary records them."""
    return pd.DataFrame([{"epoch": 0, "test_loss": summary["final_test_loss"], "test_acc": summary["final_test_acc"],
                          "n_params": summary["n_params_final"]}])


def _optional_csv(path: Path, numeric: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """A side table, or None when absent, unreadable, or lacking numeric ``numeric`` columns."""
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    for col in numeric:
        if col not in df or not pd.api.types.is_numeric_dtype(df[col]):
            return None
    return df


def load_runs(paths: list[Path]) -> tuple[list[Run], list[dict[str, str]]]:
    """All readable runs under ``paths`` and a list of problems (folder, reason) for the rest."""
    folders, problems = discover(paths)
    runs = []
    for folder in folders:
        try:
            runs.append(load_run(folder))
        except ValueError as exc:
            problems.append({"folder": str(folder), "reason": f"damaged, left out: {exc}"})
    return runs, problems
