"""``rmtprune train [-m] key=value ...``: train (and prune) one network per job (rmtprune.train.loop.run)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rmtprune.commands.hydra_app import run_hydra

_NOT_RESUMING = ("false", "0", "none", "no", "")


def main(args: list[str]) -> int:
    from rmtprune.config.validate import custom_model_overrides

    return run_hydra(_train, "config", custom_model_overrides(args), "rmtprune train", check=check, claim=claim)


def check(cfg: DictConfig) -> None:
    """One composed config, before any job starts: the values (config.validate), the device, and whether
    the model can be built and the run fits in memory."""
    from rmtprune.config.validate import validate
    from rmtprune.runs.targets import check_target
    from rmtprune.train.loop import resolve_device
    from rmtprune.train.resources import check_fits

    validate(cfg)
    check_target(cfg)
    check_fits(cfg, resolve_device(str(cfg.device)))


def claim(cfg: DictConfig, folder: Path) -> bool:
    """A named run folder that holds another run is refused before Hydra writes into it (``resume=``
    is checked by the run itself). Returns True when the folder holds the finished run of this config:
    nothing is to be done, nor written there."""
    from rmtprune.config.identity import config_key
    from rmtprune.runs.folder import RunFolder
    from rmtprune.runs.targets import resolve_target

    resolve_target(cfg)
    key = config_key(cfg)
    run = RunFolder(folder)
    if run.finished(key):
        return True
    if str(cfg.resume).strip().lower() in _NOT_RESUMING:
        run.claim(key)
    return False


def _train(cfg: DictConfig, run_dir: Path) -> None:
    from rmtprune.train.loop import resolve_device, run
    from rmtprune.train.resources import check_fits

    check_fits(cfg, resolve_device(str(cfg.device)), in_job=True)
    run(cfg, run_dir)
