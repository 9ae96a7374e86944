"""``rmtprune train [-m] key=value ...``: train (and prune) one network per job (rmtprune.train.loop.run).

Each job's config is turned into objects once (:func:`rmtprune.train.loop.prepare`: validated, its target
resolved, its key computed, its network built on the meta device for the checks); the check before the jobs
start, the folder claim and the job itself share them (:func:`_prepared`) wherever they run in this process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from rmtprune.commands.hydra_app import run_hydra

if TYPE_CHECKING:
    from rmtprune.config.build import Job
    from rmtprune.train.resources import Footprint

_NOT_RESUMING = ("false", "0", "none", "no", "")

# The jobs of this command prepared so far, by their config's resolved content (a job that Hydra runs in this
# process finds the one its pre-check prepared; another process prepares its own).
_PREPARED: dict[str, tuple[Job, Footprint | None]] = {}


def main(args: list[str]) -> int:
    from rmtprune.config.validate import custom_model_overrides

    _PREPARED.clear()
    try:
        return run_hydra(_train, "config", custom_model_overrides(args), "rmtprune train", check=check, claim=claim)
    finally:
        _PREPARED.clear()


def _prepared(cfg: DictConfig) -> tuple[Job, Footprint | None]:
    """The job of ``cfg`` (``train.loop.prepare``) and its model's memory footprint, made once per config."""
    from rmtprune.train.loop import prepare
    from rmtprune.train.resources import model_footprint

    content = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)
    if content not in _PREPARED:
        job, model = prepare(cfg)
        _PREPARED[content] = (job, model_footprint(model, job.spec, job.data))
    return _PREPARED[content]


def check(cfg: DictConfig) -> None:
    """One composed config, before any job starts: the values (config.validate), the target, the device, and
    whether the model can be built and the run fits in memory."""
    from rmtprune.train.loop import resolve_device
    from rmtprune.train.resources import check_fits

    job, footprint = _prepared(cfg)
    check_fits(job, footprint, resolve_device(job.run.device))


def claim(cfg: DictConfig, folder: Path) -> bool:
    """A named run folder that holds another run is refused before Hydra writes into it (``resume=``
    is checked by the run itself). Returns True when the folder holds the finished run of this config:
    nothing is to be done, nor written there."""
    from rmtprune.runs.folder import RunFolder

    job, _ = _prepared(cfg)
    run = RunFolder(folder)
    if run.finished(job.key):
        return True
    if job.run.resume.strip().lower() in _NOT_RESUMING:
        run.claim(job.key)
    return False


def _train(cfg: DictConfig, run_dir: Path) -> None:
    from rmtprune.train.loop import resolve_device, run_job
    from rmtprune.train.resources import check_fits

    job, footprint = _prepared(cfg)
    check_fits(job, footprint, resolve_device(job.run.device), in_job=True)
    run_job(job, run_dir)
