"""Baselines at the same size as the RMT arm: gradual magnitude pruning and a low-rank cut without RMT.

(Being written: see issue #12.)
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from .events import Pruner


def resolve_target(cfg: DictConfig) -> None:
    """Resolve ``pruning.target_from`` into ``pruning.target_params`` (a no-op for other prunings)."""
    if cfg.pruning.name not in ("magnitude", "lowrank"):
        return
    raise NotImplementedError


def baseline_from_config(pruning: Any) -> Pruner:
    raise NotImplementedError
