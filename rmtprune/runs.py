"""Reading finished run folders back: summary, metrics, ledger, magnitude sweep, flat config.

Reports use only these files, never live objects, so they work on any run on any machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import outputs
from .outputs import read_json, resolve_redirect

@dataclass
class Run:
    """One run folder, read back."""

    folder: Path
    summary: dict[str, Any]
    config: dict[str, Any]          # flattened "a.b": value, identity keys only
    metrics: pd.DataFrame
    ledger: pd.DataFrame | None
    magnitude: pd.DataFrame | None

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", self.summary.get("seed", -1)))

    @property
    def spectra_path(self) -> Path | None:
        p = self.folder / "spectra.npz"
        return p if p.exists() else None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def discover(paths: list[Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Run folders under ``paths`` (a run folder, a sweep folder, or any folder above them).

    Returns the folders (redirects followed, duplicates removed) and problems: job folders of a
    sweep that never wrote a summary.
    """
    folders: dict[Path, None] = {}
    problems: list[dict[str, str]] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            problems.append({"folder": str(path), "reason": "does not exist"})
            continue
        candidates = [path] if (path / "summary.json").exists() or (path / "redirect.json").exists() else []
        candidates += sorted({p.parent for pat in ("summary.json", "redirect.json") for p in path.rglob(pat)})
        for hydra_dir in sorted(path.rglob(".hydra")) if path.is_dir() else []:
            job = hydra_dir.parent
            if not (job / "summary.json").exists() and not (job / "redirect.json").exists():
                problems.append({"folder": str(job), "reason": "no summary.json: the job failed before training "
                                 "(see its log)"})
        for c in candidates:
            folders[resolve_redirect(c).resolve()] = None
    return list(folders), problems


def load_run(folder: Path) -> Run:
    """Read one run folder; raises ValueError with the reason when it cannot be read."""
    try:
        summary = read_json(folder / "summary.json")
    except (OSError, ValueError) as exc:
        raise ValueError(f"summary.json unreadable ({type(exc).__name__})") from None
    if "config" not in summary:
        raise ValueError("summary.json has no config")
    try:
        metrics = pd.read_csv(folder / "metrics.csv") if (folder / "metrics.csv").exists() else pd.DataFrame()
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"metrics.csv unreadable ({type(exc).__name__})") from None
    ledger = _optional_csv(folder / "layers.csv")
    magnitude = _optional_csv(folder / "magnitude_sweep.csv")
    return Run(folder, summary, flatten(outputs.identity(summary["config"])), metrics, ledger, magnitude)


def _optional_csv(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def load_runs(paths: list[Path]) -> tuple[list[Run], list[dict[str, str]]]:
    """All readable runs under ``paths`` and a list of problems (folder, reason) for the rest."""
    folders, problems = discover(paths)
    runs = []
    for folder in folders:
        try:
            runs.append(load_run(folder))
        except ValueError as exc:
            problems.append({"folder": str(folder), "reason": str(exc)})
    return runs, problems
