"""``rmtprune prune MODEL [key=value ...]``: one RMT pruning event on a saved model (rmtprune.train.prune_saved)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rmtprune.commands.hydra_app import quote, run_hydra
from rmtprune.errors import UserError

# Flags after which no model path is needed (they print and run nothing).
_NO_MODEL = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc", "--version"}


def main(args: list[str]) -> int:
    from rmtprune.config.validate import custom_model_overrides

    return run_hydra(_prune, "prune", custom_model_overrides(model_path_override(args)), "rmtprune prune",
                     check=check, claim=claim)


def model_path_override(rest: list[str]) -> list[str]:
    """``rmtprune prune PATH k=v ...``: the first argument that is no override names the model."""
    out, named = [], False
    for a in rest:
        if not named and "=" not in a and not a.startswith("-"):
            out.append("model_path=" + quote(a))
            named = True
        else:
            out.append(a)
    if not named and not any(a.startswith("model_path=") for a in rest) and not set(rest) & _NO_MODEL:
        raise UserError("rmtprune prune MODEL [key=value ...]: name a run folder, model.pt or state_dict file")
    return out


def check(cfg: DictConfig) -> None:
    from rmtprune.config.validate import validate
    from rmtprune.train.loop import resolve_device

    if not Path(str(cfg.model_path)).exists():
        raise UserError(f"{cfg.model_path}: no such file or folder")
    validate(cfg)
    if cfg.pruning.name != "rmt":
        raise UserError(f"pruning={cfg.pruning.name}: rmtprune prune makes one RMT event; use pruning=rmt")
    if cfg.finetune_epochs < 0:
        raise UserError(f"finetune_epochs={cfg.finetune_epochs} must be >= 0")
    resolve_device(str(cfg.device))


def claim(cfg: DictConfig, folder: Path) -> bool:
    """A named folder that holds results already is refused: a run folder belongs to one run (so it is
    never "the finished run of this config": returns False)."""
    from rmtprune.runs.folder import RunFolder

    RunFolder(folder).claim(None)
    return False


def _prune(cfg: DictConfig, run_dir: Path) -> None:
    from hydra.core.hydra_config import HydraConfig

    from rmtprune.train.prune_saved import prune_saved

    given = [str(o).split("=", 1)[0].lstrip("+") for o in HydraConfig.get().overrides.task]
    # validated by check(), before the job: the same composed config
    prune_saved(cfg, run_dir, finetune_lr=float(cfg.optimizer.lr) if "optimizer.lr" in given else None, given=given,
                validated=True)
