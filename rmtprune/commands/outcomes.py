"""The outcome of every job of a sweep, whatever the launcher.

Each job records how it ended in ``<sweep dir>/.rmtprune-jobs/<launch>/<job number>.json`` (written by
the job itself, in whichever process or machine the launcher ran it; ``<launch>`` names one launch of a
sweep, passed to every job in the environment variable ``RMTPRUNE_LAUNCH`` through Hydra's
``hydra.job.env_set``, so that two sweeps launched into the same folder, even at the same time, never
read or remove each other's records); after the sweep the launching process reads them back, checks each against the job's ``summary.json`` and reports
``N of M jobs failed`` with the failed jobs' folders. A job that left no record, or whose results
folder has no ``summary.json`` saying ``completed``, counts as failed: it died before it could say
otherwise (killed, out of memory, refused before training).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from rmtprune.commands.common import err

RECORDS = ".rmtprune-jobs"
LAUNCH_ENV = "RMTPRUNE_LAUNCH"
COMPLETED, FAILED, REFUSED, INTERRUPTED, MISSING = "completed", "failed", "refused", "interrupted", "missing"
RUNNING = "running"  # the record a job writes when it starts (with its pid); its outcome replaces it


@dataclass
class Outcome:
    """How one job ended: ``status`` is completed | failed (while running) | refused (bad input) |
    interrupted | missing (no record: the job died or never started); ``folder`` is its run folder;
    ``pid`` the process that runs it (in its ``running`` record)."""

    num: int | None
    folder: str
    status: str
    error: str = ""
    pid: int | None = None


def new_launch() -> str:
    """A name for one launch of a sweep, unique across processes and machines."""
    import uuid

    return uuid.uuid4().hex[:16]


def records_dir(sweep_dir: Path | str, launch: str | None = None) -> Path:
    """Where the jobs of ``launch`` (default: this job's launch, ``$RMTPRUNE_LAUNCH``) record their outcomes."""
    launch = launch if launch is not None else os.environ.get(LAUNCH_ENV, "")
    return Path(sweep_dir) / RECORDS / (launch or "unnamed")


def write(outcome: Outcome, sweep_dir: Path | str) -> None:
    """Record a job's outcome (called by the job); a record that cannot be written is reported by the
    launching process as a missing one."""
    from rmtprune.files import atomic_write_text

    folder = records_dir(sweep_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{outcome.num}.json", json.dumps(asdict(outcome)) + "\n")
    except OSError as exc:
        err(f"cannot record the outcome of job {outcome.num} in {folder} ({exc.strerror})")


def forget(sweep_dir: Path | str, launch: str) -> None:
    """Remove the records of one launch (after reading them); other launches' records are theirs."""
    shutil.rmtree(records_dir(sweep_dir, launch), ignore_errors=True)
    try:
        records_dir(sweep_dir, launch).parent.rmdir()  # only when no other launch has records there
    except OSError:
        pass


def _read(path: Path) -> dict[str, Any] | None:
    from rmtprune.files import read_json

    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def summary_status(folder: Path) -> tuple[str | None, str]:
    """(status, error) of the summary.json holding a job's results (following redirect.json)."""
    from rmtprune.runs.folder import RunFolder

    summary = RunFolder(folder).resolve().read_summary()
    if summary is None:
        return None, ""
    return str(summary.get("status")), str(summary.get("error") or "")


def _records(sweep_dir: Path | str, launch: str) -> dict[int, dict[str, Any]]:
    folder = records_dir(sweep_dir, launch)
    found: dict[int, dict[str, Any]] = {}
    if folder.is_dir():
        for path in folder.glob("*.json"):
            data = _read(path)
            if data is not None and str(data.get("num")).isdigit():
                found[int(data["num"])] = data
    return found


def running(sweep_dir: Path | str, launch: str) -> dict[int, int]:
    """pid -> job number of the jobs of ``launch`` that have started and not yet recorded how they ended."""
    return {int(d["pid"]): num for num, d in _records(sweep_dir, launch).items()
            if d.get("status") == RUNNING and isinstance(d.get("pid"), int)}


def collect(sweep_dir: Path | str, launch: str, jobs: list[list[str]] | None,
            folder_of: Callable[[int], str] | None = None, interrupted: bool = False) -> list[Outcome]:
    """Every job's outcome of one launch, in job order. ``jobs``: the overrides of every job the sweep
    launched (None when unknown: then the records found are the jobs); ``folder_of(num)``: where job
    ``num`` would have written (for the jobs that left no record); ``interrupted``: the sweep was stopped
    by a signal, so a job without an outcome is ``interrupted`` (not run, or stopped) rather than missing."""
    found = {num: d for num, d in _records(sweep_dir, launch).items() if d.get("status") != RUNNING}
    nums = range(len(jobs)) if jobs is not None else sorted(found)
    out = []
    for num in nums:
        data = found.get(num)
        if data is None:
            what = " ".join(jobs[num]) if jobs is not None else ""
            where = folder_of(num) if folder_of else ""
            if interrupted:
                out.append(Outcome(num, where, INTERRUPTED, f"job #{num} ({what}): the sweep was interrupted "
                                                            f"before it ended"))
            else:
                out.append(Outcome(num, where, MISSING, f"job #{num} ({what}) left no outcome: it died or never "
                                                        f"started; see the launcher's log"))
            continue
        outcome = Outcome(num, str(data.get("folder", "")), str(data.get("status", MISSING)),
                          str(data.get("error", "")))
        if outcome.status == COMPLETED:
            status, error = summary_status(Path(outcome.folder))
            if status != COMPLETED:
                outcome.status = FAILED
                outcome.error = (f"summary.json says {status}: {error}" if status else
                                 "no summary.json in its folder")
        out.append(outcome)
    return out


def _shown(folder: str) -> str:
    if not folder:
        return "?"
    rel = os.path.relpath(folder)
    return folder if rel.startswith("..") else rel


def report(outcomes: list[Outcome]) -> int:
    """Print ``N of M jobs failed`` and one line per failed job (stderr); the exit code: 0 when all
    completed, 2 when a job was refused for bad input, else 1."""
    failed = [o for o in outcomes if o.status != COMPLETED]
    if not failed:
        return 0
    err(f"{len(failed)} of {len(outcomes)} jobs failed (folder: reason; details in each folder's summary.json "
        f"and the lines above):")
    for o in failed:
        print(f"  {_shown(o.folder)}: {o.status}: {o.error}".rstrip(": "), file=sys.stderr, flush=True)
    return 2 if any(o.status == REFUSED for o in failed) else 1
