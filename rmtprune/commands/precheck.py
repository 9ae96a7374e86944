"""What a Hydra command refuses before any job starts, so that a mistake in a 20-job sweep costs one
line and no compute: every override is parsed; every group choice exists (``experiment=nope`` gets a
did-you-mean instead of silently running the default); every sweep value is composed and checked by
the command (``train``: :func:`rmtprune.config.validate`, the device, the memory it needs); a key the
chosen option does not use, given on the command line, is refused; the output folder can be made; no
two jobs of a sweep write into the same folder (``hydra.sweep.subdir`` resolved with each job's config).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from rmtprune.commands.common import first_line
from rmtprune.commands.compose import Composer
from rmtprune.errors import UserError

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@dataclass
class Plan:
    """What the checks found out: the composed configs (one per override list checked, with their
    ``hydra`` node), the output folder, and for a sweep the overrides of every job it will launch."""

    multirun: bool
    configs: list[DictConfig]
    output_key: str          # hydra.run.dir | hydra.sweep.dir
    output_dir: Path         # resolved
    clock_named: bool        # the folder's name comes from the clock (${now:...})
    jobs: list[list[str]] | None = None
    # For a sweep under the basic sweeper: each job's task config and its folder under the sweep folder
    # (hydra.sweep.subdir resolved with that job's config), in job order.
    job_configs: list[DictConfig] | None = None
    job_subdirs: list[str] | None = None


def parse_overrides(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise UserError(f"cannot parse the overrides: {first_line(exc)}") from None


def expand_sweeps(parsed: list[Any]) -> list[list[str]]:
    """Override lists to check: every sweep value once, the others at their first value."""
    base, choices = [], []
    for o in parsed:
        key = o.get_key_element()
        values = [f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        base.append(values[0])
        choices.append(values)
    combos = [base]
    for i, values in enumerate(choices):
        for v in values[1:]:
            combos.append(base[:i] + [v] + base[i + 1:])
    return combos


def _choices(o: Any) -> list[str]:
    if o.is_sweep_override():
        return list(o.sweep_string_iterator()) if o.is_discrete_sweep() else []
    value = o.value()
    return [value] if isinstance(value, str) else []


def check_group_choices(parsed: list[Any], composer: Composer) -> None:
    """``group=option`` names an existing option of every config group (optional ones included:
    ``experiment``, ``budget``); otherwise one line with a did-you-mean and the options."""
    for o in parsed:
        if o.is_delete() or o.package is not None or "." in o.key_or_group or not composer.is_group(o.key_or_group):
            continue
        group = o.key_or_group
        options = composer.group_options(group)
        for value in _choices(o):
            if value in options:
                continue
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
            hint = f"did you mean {group}={close[0]}? " if close else ""
            raise UserError(f"{group}={value}: there is no {group}/{value}.yaml; {hint}"
                            f"available: {', '.join(options) or 'none'}")


def check_unused_keys(parsed: list[Any], configs: list[DictConfig]) -> None:
    """A ``pruning.KEY`` / ``schedule.KEY`` given on the command line that no chosen option uses is
    refused (config.unused_key_error); keys that presets set are not checked. In a sweep over options
    (``pruning=none,rmt``) a key is accepted when one of them uses it."""
    from rmtprune.config.schema import PRUNING_KEYS, SCHEDULE_KEYS, USES_SCHEDULE, PruningConfig, ScheduleConfig
    from rmtprune.config.validate import unused_key_error

    prunings = list(dict.fromkeys(str(c.pruning.name) for c in configs if c.get("pruning") is not None))
    schedules = list(dict.fromkeys(str(c.schedule.name) for c in configs if c.get("schedule") is not None))
    fields = {"pruning": {f.name for f in dataclasses.fields(PruningConfig)},
              "schedule": {f.name for f in dataclasses.fields(ScheduleConfig)}}
    for o in parsed:
        parts = o.key_or_group.split(".")
        if o.is_delete() or o.package is not None or len(parts) < 2 or parts[0] not in fields:
            continue
        group, key = parts[0], parts[1]
        if key not in fields[group] or key == "name":
            continue  # an unknown key: composing has said so, with a did-you-mean
        if group == "pruning" and prunings and not any(key in PRUNING_KEYS.get(p, (key,)) for p in prunings):
            raise UserError(unused_key_error(key, prunings[0]))
        if group == "schedule" and prunings and schedules:
            if not any(p in USES_SCHEDULE for p in prunings):
                raise UserError(f"schedule.{key} is not used by pruning={'/'.join(prunings)}: only "
                                f"pruning={'/'.join(USES_SCHEDULE)} follows the schedule of keep fractions")
            if not any(key in SCHEDULE_KEYS.get(s, (key,)) for s in schedules):
                raise UserError(unused_key_error(key, schedules[0], group="schedule"))


def _in_schema(key: str) -> bool:
    """Whether the dotted ``key`` is a setting of the run schema (``model.*``: of any model option's)."""
    from rmtprune.config.schema import MODEL_SCHEMAS, RunConfig

    head, _, rest = key.partition(".")
    if head == "model":
        return not rest or any(rest in {f.name for f in dataclasses.fields(s)} for s in MODEL_SCHEMAS.values())
    missing = object()
    return OmegaConf.select(OmegaConf.structured(RunConfig), key, default=missing) is not missing


def check_structure(parsed: list[Any], composer: Composer) -> None:
    """Every setting of the schema stays: ``~KEY`` (a deletion) is refused, also of a config group that is a
    setting (``~pruning``); ``+KEY=V`` (an appended key) is refused, since no run reads it (an existing KEY:
    "drop the '+'"); ``++KEY=V`` of an existing KEY is a plain override. Allowed: Hydra's own keys, the
    other config groups (``~experiment``) and the constructor arguments of ``model=custom`` (``model.*`` but
    ``model._target_`` / ``model.name``)."""
    from rmtprune.commands.compose import did_you_mean
    from rmtprune.config.schema import RunConfig

    settings = {f.name for f in dataclasses.fields(RunConfig)}
    custom = any(o.key_or_group == "model" and "custom" in _choices(o) for o in parsed)
    for o in parsed:
        key = o.key_or_group
        if not (o.is_delete() or o.is_add() or o.is_force_add()) or o.is_hydra_override():
            continue
        if composer.is_group(key) and not (o.is_delete() and key in settings):
            continue
        if custom and key.startswith("model.") and key not in ("model._target_", "model.name"):
            continue
        if o.is_delete():
            raise UserError(f"{o.input_line}: {key} is a setting of every run and cannot be deleted; "
                            f"set it instead ({key}=VALUE)")
        if _in_schema(key):
            if o.is_force_add():
                continue
            raise UserError(f"{o.input_line}: {key} is already a setting: drop the '+' ({key}=VALUE)")
        close = did_you_mean(key)
        hint = f"did you mean {close}? " if close else ""
        raise UserError(f"{o.input_line}: {key} is not a setting, and an appended key is never read; {hint}"
                        f"set an existing key without '+' (rmtprune train --cfg job lists them)")


def _resolve(cfg: DictConfig, key: str) -> str:
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as exc:  # noqa: BLE001  (any interpolation failure: a missing key, a bad resolver)
        text = _raw(cfg, key)
        raise UserError(f"{key}={text}: cannot be resolved ({first_line(exc)}); use plain text or ${{now:...}}, "
                        f"${{output_root}}, ${{hydra.job.num}}, or the keys of the config") from None
    if value is None or not str(value).strip():
        raise UserError(f"{key} is empty: name a folder")
    return str(value)


def _raw(cfg: DictConfig, key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent)
    return str(OmegaConf.to_container(node, resolve=False).get(leaf)) if node is not None else "?"


def output_folder(cfg: DictConfig, multirun: bool) -> tuple[str, Path, bool]:
    """(key, folder, named by the clock) of the run folder (``hydra.run.dir``) or the sweep folder
    (``hydra.sweep.dir``); a folder that cannot be resolved or made is a UserError."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = Path(_resolve(cfg, key))
    probe = folder
    if multirun:  # the first job's folder: its name must resolve (it may use hydra.job.num) and fit
        job = copy.deepcopy(cfg)
        with open_dict(job):
            job.hydra.job.num = 0
            job.hydra.job.id = "0"
        probe = folder / _resolve(job, "hydra.sweep.subdir")
    check_folder(probe, f"{key} (and hydra.sweep.subdir)" if multirun else key)
    return key, folder, "${now:" in _raw(cfg, key)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a loop: it does not exist as a folder we can use
        return False


def check_folder(folder: Path, key: str) -> None:
    """``folder`` can be made: every name fits the file system, and its nearest existing parent is a
    writable folder."""
    absolute = Path(os.path.abspath(folder))
    existing = absolute
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    for part in absolute.parts:
        if len(os.fsencode(part)) > name_max:
            raise UserError(f"{key}: the folder name {part[:24]}... is {len(os.fsencode(part))} bytes long, more "
                            f"than the {name_max} a file name may have here; choose a shorter {key}")
    if len(os.fsencode(str(absolute))) + 64 > path_max:
        raise UserError(f"{key}: the path {str(folder)[:40]}... is too long for this file system ({path_max} bytes "
                        f"with the files inside); choose a shorter {key}")
    try:
        if not existing.is_dir():
            raise OSError
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".rmtprune-probe-"))
    except OSError:
        raise UserError(f"{key}={folder}: cannot create the output folder there ({existing} is not a "
                        f"writable folder); choose another with {key}=PATH") from None


def job_overrides(cfg: DictConfig, parsed: list[Any]) -> list[list[str]] | None:
    """The overrides of every job of a sweep, as Hydra's basic sweeper will launch them (None for
    another sweeper)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    sweeper = cfg.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = [o for o in parse_overrides(params) + [o for o in parsed if not o.is_hydra_override()]]
    return [job for batch in BasicSweeper.split_arguments(task, None) for job in batch]


def task_config(cfg: DictConfig) -> DictConfig:
    """A composed config without its ``hydra`` node: what a job's task receives."""
    task = copy.deepcopy(cfg)
    with open_dict(task):
        del task["hydra"]
    return task


def precheck(composer: Composer, overrides: list[str], multirun: bool,
             check: Callable[[DictConfig], None]) -> Plan:
    """Run every check of the module docstring; ``check(task config)`` is the command's own."""
    parsed = parse_overrides(overrides)
    check_group_choices(parsed, composer)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise UserError(f"{sweeps[0]} is a sweep (several values): add -m to run one job per value")
    combos = expand_sweeps(parsed)
    check_structure(parsed, composer)
    configs = [composer.compose(combo) for combo in combos]
    check_unused_keys(parsed, configs)
    key, folder, clock = output_folder(configs[0], multirun)
    for cfg in configs:
        try:
            check(task_config(cfg))
        except OmegaConfBaseException as exc:  # e.g. ~seed (a key deleted) or an unresolvable ${...}
            raise UserError(f"the overrides leave an invalid config: {first_line(str(exc))}") from None
    jobs = job_overrides(configs[0], parsed) if multirun else None
    plan = Plan(multirun, configs, key, folder, clock, jobs)
    if jobs is not None:
        hydra_overrides = [o.input_line for o in parsed if o.is_hydra_override()]
        plan.job_configs, plan.job_subdirs = job_folders(composer, hydra_overrides, jobs)
    return plan


def job_folders(composer: Composer, hydra_overrides: list[str],
                jobs: list[list[str]]) -> tuple[list[DictConfig], list[str]]:
    """(task config, subfolder) of every job, as the basic launcher composes them (the command line's
    ``hydra.*`` overrides, then the job's; ``hydra.job.num`` = ``hydra.job.id`` = its index). Two jobs
    with one subfolder would mix their files: one line naming both and the folder."""
    configs: list[DictConfig] = []
    subdirs: list[str] = []
    seen: dict[str, int] = {}
    for num, overrides in enumerate(jobs):
        cfg = composer.compose(hydra_overrides + list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = num
            cfg.hydra.job.id = str(num)
        subdir = os.path.normpath(_resolve(cfg, "hydra.sweep.subdir"))
        if subdir in seen:
            first = seen[subdir]
            raise UserError(f"two jobs of the sweep write into one folder {subdir} (hydra.sweep.subdir): "
                            f"#{first} ({' '.join(jobs[first]) or 'no overrides'}) and #{num} "
                            f"({' '.join(overrides) or 'no overrides'}); make hydra.sweep.subdir tell them "
                            f"apart (e.g. ${{hydra.job.num}} or ${{hydra.job.override_dirname}})")
        seen[subdir] = num
        configs.append(task_config(cfg))
        subdirs.append(subdir)
    return configs, subdirs
