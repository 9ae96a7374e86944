"""The run config as ``rmtprune train OVERRIDES`` composes it, without running anything."""

from __future__ import annotations

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from rmtprune.config.schema import register_configs


def compose_config(*overrides: str, name: str = "config", hydra: bool = False) -> DictConfig:
    """Compose ``rmtprune/conf/<name>.yaml`` with Hydra overrides; ``hydra=True`` keeps the ``hydra`` node."""
    register_configs()
    with initialize_config_module("rmtprune.conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)
