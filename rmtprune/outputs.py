"""Files of a run folder: writing them atomically, and finding earlier runs.

A run folder holds ``metrics.csv`` (one row per epoch), ``layers.csv`` (the pruning ledger),
``summary.json`` (status, results, versions, the resolved config), ``checkpoint.pt`` and
``model.pt``, ``magnitude_sweep.csv``, ``spectra.npz`` (singular values of each fitted layer at
each pruning event), ``DONE`` once finished, and Hydra's ``.hydra/`` (config, overrides).
A job that continued or skipped to another folder leaves ``redirect.json`` naming it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

METRICS_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "n_params",
                   "n_params_after", "pruned_layers", "lr", "seconds"]

# Keys that do not change what a run computes (where it runs, how it reports, how it was launched).
NOT_IDENTITY = {"resume", "skip_done", "device", "progress", "output_root", "checkpoint", "eval_batch_size",
                "threads", "deterministic", "logger"}
DATASET_NOT_IDENTITY = {"root", "offline_dir", "download"}


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and os.replace: never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return "" if v is None else v


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The part of the resolved config that determines a run's results."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(data, dict)
    data = {k: v for k, v in data.items() if k not in NOT_IDENTITY and k != "hydra"}
    if isinstance(data.get("dataset"), dict):
        data["dataset"] = {k: v for k, v in data["dataset"].items() if k not in DATASET_NOT_IDENTITY}
    return data


def config_key(cfg: DictConfig) -> str:
    """A short hash of :func:`identity`: two runs with the same key compute the same thing."""
    blob = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def find_runs(root: Path, key: str, exclude: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Run folders under ``root`` whose summary.json has config ``key``, newest first."""
    found = []
    if not root.is_dir():
        return found
    for summary in root.rglob("summary.json"):
        folder = summary.parent
        if exclude is not None and folder.resolve() == exclude.resolve():
            continue
        try:
            data = read_json(summary)
        except (OSError, ValueError):
            continue
        if data.get("config_key") == key:
            found.append((folder, data))
    found.sort(key=lambda fd: fd[1].get("started_at", ""), reverse=True)
    return found


def resolve_redirect(folder: Path) -> Path:
    """The folder a job's results are in (a resumed or skipped job points to the earlier one)."""
    red = folder / "redirect.json"
    if red.exists():
        try:
            target = Path(read_json(red)["run_dir"])
            if target.is_dir():
                return target
        except (OSError, ValueError, KeyError):
            pass
    return folder


def append_spectra(path: Path, epoch: int, spectra: dict[str, Any]) -> None:
    """Add one event's singular values to ``spectra.npz`` (keys ``e{epoch}/{layer}``), atomically."""
    import numpy as np

    data: dict[str, Any] = {}
    if path.exists():
        with np.load(path) as old:
            data = {k: old[k] for k in old.files}
    data.update({f"e{epoch}/{layer}": values for layer, values in spectra.items()})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_spectra(path: Path) -> dict[int, dict[str, Any]]:
    """{epoch: {layer: singular values}} from ``spectra.npz``."""
    import numpy as np

    out: dict[int, dict[str, Any]] = {}
    with np.load(path) as data:
        for key in data.files:
            epoch, layer = key.split("/", 1)
            out.setdefault(int(epoch[1:]), {})[layer] = data[key]
    return out
