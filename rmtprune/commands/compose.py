"""Composing the config outside a run, exactly as ``hydra.main`` will: the same search path (the
package's ``rmtprune/conf/``, ``--config-dir``, ``--config-path``, ``--config-name``), the same config groups.

The checks before any job starts (:mod:`.precheck`) and ``rmtprune inspect`` (the pruning keys of
``rmtprune/conf/pruning/*.yaml``) compose through :class:`Composer`; its errors become one line with a
did-you-mean (:func:`explain_compose_error`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any, Callable

from omegaconf import DictConfig

from rmtprune.commands.common import first_line
from rmtprune.errors import UserError

CONFIG_PATH = "pkg://rmtprune.conf"
# Hydra's flags that take no value and may stand anywhere: moved before the overrides, where argparse wants them.
_BARE_FLAGS = ("-m", "--multirun", "-r", "--run")


def flags_first(args: list[str]) -> list[str]:
    """``a=1 -m b=2`` -> ``-m a=1 b=2``: Hydra's parser takes no flag after the first override."""
    return [a for a in args if a in _BARE_FLAGS] + [a for a in args if a not in _BARE_FLAGS]


def hydra_args(args: list[str]) -> argparse.Namespace:
    """Hydra's own reading of the command line (flags, overrides); a mistake is a UserError."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str) -> None:
        raise UserError(f"{message} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(args)


class Composer:
    """``with Composer(ns, "config", task) as c: cfg = c.compose(["seed=1"])``: the config a job of
    ``hydra.main(config_path=CONFIG_PATH, config_name=...)(task)`` started with ``ns`` would get
    (with its ``hydra`` node)."""

    def __init__(self, ns: argparse.Namespace | None, config_name: str, task: Callable[..., Any] | None = None) -> None:
        self.ns = ns
        self.config_name = (ns.config_name if ns is not None and ns.config_name else None) or config_name
        self.task = task
        self.hydra: Any = None

    def __enter__(self) -> "Composer":
        from hydra._internal.hydra import Hydra
        from hydra._internal.utils import (
            create_automatic_config_search_path,
            detect_calling_file_or_module_from_task_function,
        )
        from hydra.core.config_search_path import SearchPathQuery
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.utils import setup_globals

        from rmtprune.config.schema import register_configs

        register_configs()
        setup_globals()  # the ${now:...} resolver
        config_path = (self.ns.config_path if self.ns is not None else None) or CONFIG_PATH
        calling_file, calling_module = (detect_calling_file_or_module_from_task_function(self.task)
                                        if self.task is not None else (None, None))
        search_path = create_automatic_config_search_path(calling_file, calling_module, config_path)
        config_dir = self.ns.config_dir if self.ns is not None else None
        if config_dir is not None:
            import os

            folder = os.path.abspath(config_dir)
            if not os.path.isdir(folder):
                raise UserError(f"--config-dir {config_dir}: no such folder")
            search_path.prepend(provider="command-line", path=f"file://{folder}",
                                anchor=SearchPathQuery(provider="schema"))
        GlobalHydra.instance().clear()
        try:
            self.hydra = Hydra.create_main_hydra2(task_name="rmtprune", config_search_path=search_path)
        except Exception as exc:  # noqa: BLE001  (a bad search path: Hydra raises several kinds)
            GlobalHydra.instance().clear()
            raise UserError(f"cannot read the configs: {first_line(exc)}") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()

    def compose(self, overrides: list[str]) -> DictConfig:
        """The composed config (with ``hydra``) for one job's overrides; errors as a UserError."""
        from hydra.errors import HydraException
        from hydra.types import RunMode
        from omegaconf.errors import OmegaConfBaseException

        try:
            return self.hydra.compose_config(self.config_name, list(overrides), run_mode=RunMode.RUN,
                                             with_log_configuration=False)
        except (HydraException, OmegaConfBaseException, ValueError, TypeError, KeyError) as exc:
            raise UserError(explain_compose_error(exc)) from None

    def group_options(self, group: str) -> list[str]:
        """The options of a config group (``experiment`` -> the preset names), sorted."""
        return sorted(self.hydra.config_loader.get_group_options(group))

    def is_group(self, name: str) -> bool:
        return bool(self.hydra.config_loader.repository.group_exists(name))


def explain_compose_error(exc: BaseException) -> str:
    """One line from a Hydra / OmegaConf composition error, with a did-you-mean for unknown keys."""
    from omegaconf.errors import OmegaConfBaseException

    parts = [first_line(exc)]
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(parts) < 3:
        line = first_line(cause)
        if line not in parts:
            parts.append(line)
        cause = cause.__cause__
    text = str(exc)
    if "Available options in" in text:
        opts = []
        for ln in text.splitlines()[1:]:
            if ln.startswith("Config search path"):
                break
            if ln.strip() and not ln.startswith("Available"):
                opts.append(ln.strip())
        parts.append("available: " + ", ".join(opts))
    key = getattr(exc, "full_key", None)
    for c in (exc, exc.__cause__):
        if isinstance(c, OmegaConfBaseException) and getattr(c, "full_key", None):
            key = c.full_key
    if key:
        parts.append(f"key: {key}")
        not_found = any("not in" in p for p in parts)
        owners = model_key_owners(str(key)) if not_found else []
        suggestion = did_you_mean(str(key))
        if owners:
            parts.append(f"{key} is a key of model={'/'.join(owners)}")
        elif suggestion:
            parts.append(f"did you mean {suggestion}?")
    return "; ".join(p.rstrip(".") for p in parts)


def known_keys() -> list[str]:
    """Every dotted key of the schemas: RunConfig (and the prune command's), with the keys of every
    model option (``config.MODEL_SCHEMAS``: ``RunConfig.model`` is one of them)."""
    from rmtprune.config.schema import MODEL_SCHEMAS, PruneCommandConfig

    known: list[str] = []

    def walk(cls: Any, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            known.append(prefix + f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")

    walk(PruneCommandConfig, "")
    for schema in MODEL_SCHEMAS.values():
        walk(schema, "model.")
    return sorted(set(known))


def did_you_mean(key: str) -> str | None:
    """The known key closest to ``key`` (None when none is close, or ``key`` itself is known)."""
    match = difflib.get_close_matches(key, known_keys(), n=1)
    return match[0] if match and match[0] != key else None


def model_key_owners(key: str) -> list[str]:
    """For ``model.hidden``: the model options whose schema has that key (``["cnn"]``)."""
    from rmtprune.config.schema import MODEL_SCHEMAS

    if not key.startswith("model."):
        return []
    sub = key.split(".")[1]
    return [name for name, schema in MODEL_SCHEMAS.items() if sub in {f.name for f in dataclasses.fields(schema)}]
