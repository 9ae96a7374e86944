"""Running a Hydra command (``train``, ``prune``): the checks before any job starts, the run folder,
``hydra.main``, and the exit code.

- Folders named by the clock (the default ``outputs/DATE/HH-MM-SS``) are made unique before Hydra
  starts: the folder is created here, and when it exists already (another run started in the same
  second) ``-2``, ``-3``, ... is appended. A folder you name is yours: a single run locks it
  (runs.folder.RunLock) before Hydra writes into it, and the command refuses one that holds another run.
  A sweep checks every job's folder the same way before Hydra starts (Hydra writes ``.hydra/`` into
  each job's folder before the job runs), and refuses two jobs that resolve to one folder (:mod:`.precheck`).
- A sweep's folder is given to Hydra as an absolute path, so every launcher's processes write to the
  same place whatever their working folder; after the sweep each job's outcome is read back
  (:mod:`.outcomes`): ``N of M jobs failed`` and a non-zero exit, for every launcher.
- Ctrl-C or SIGTERM to a sweep stops its jobs wherever they run on this machine (:mod:`rmtprune.train.signals`):
  each records ``interrupted``, the job list is printed, and no process of the sweep outlives it.
- Exit codes: 0 all done, 2 bad input, 1 a run that failed while running, 130 interrupted (Ctrl-C), 143
  (SIGTERM).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from rmtprune.commands import jobs, outcomes
from rmtprune.commands.compose import Composer, flags_first, hydra_args
from rmtprune.commands.precheck import Plan, precheck, task_config
from rmtprune.errors import UserError
from rmtprune.train.signals import end_descendants, exit_code, stop_jobs_on_signal

# Flags that print something and run no job: no checks, no folders.
_NO_RUN = ("help", "hydra_help", "cfg", "info", "shell_completion")


def quote(value: str) -> str:
    """A Hydra override value that stays one string whatever characters it holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def claim_unique(folder: Path) -> Path:
    """Create ``folder``, or ``folder-2``, ``folder-3``, ... when it exists: mkdir is atomic, so two
    runs started in the same second (two processes, or one process twice) never share a folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = folder, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = folder.with_name(f"{folder.name}-{n}")


def _pin(args: list[str], key: str, value: str) -> list[str]:
    """``args`` with ``key=value`` (replacing the user's own ``key=...``)."""
    kept = [a for a in args if not a.lstrip("+").startswith(f"{key}=")]
    return kept + [f"{key}={quote(value)}"]


def run_hydra(body: Callable[[DictConfig, Path], Any], config_name: str, args: list[str], prog: str,
              check: Callable[[DictConfig], None],
              claim: Callable[[DictConfig, Path], bool] | None = None) -> int:
    """Check, then run ``body(cfg, run_dir)`` for every job of ``prog ARGS`` through ``hydra.main``.

    ``check(task config)`` is the command's check of one composed config (every sweep value);
    ``claim(task config, folder)`` refuses a named run folder that belongs to another run (a single run's
    folder, every job folder of a sweep) and says whether it holds the finished run of this config (a single
    run then writes nothing; a sweep's job does nothing).
    """
    args = flags_first(args)
    ns = hydra_args(args)
    task = jobs.job_task(body)
    if any(getattr(ns, flag, None) for flag in _NO_RUN):
        # the completion script Hydra prints is registered for its program name: `rmtprune`, not `rmtprune train`
        return _call_hydra(task, config_name, args, prog.split()[0] if ns.shell_completion else prog)
    with Composer(ns, config_name, task) as composer:
        plan = precheck(composer, list(ns.overrides), bool(ns.multirun), check)
    if plan.multirun:
        return _sweep(plan, task, config_name, args, prog, claim)
    return _single(plan, task, config_name, args, prog, claim)


def _single(plan: Plan, task: Callable[[DictConfig], None], config_name: str, args: list[str], prog: str,
            claim: Callable[[DictConfig, Path], bool] | None) -> int:
    from rmtprune.runs.folder import RunFolder

    folder = plan.output_dir
    if plan.clock_named:
        folder = claim_unique(folder)
        args = _pin(args, plan.output_key, str(folder))
    else:
        folder.mkdir(parents=True, exist_ok=True)
    jobs.FINISHED.clear()
    # Held while Hydra writes .hydra/ and the job runs (the job's own RunLock re-enters it).
    with RunFolder(folder).lock() if claim is not None else nullcontext():
        if claim is not None and claim(task_config(plan.configs[0]), folder):
            print(f"rmtprune: {folder} holds the finished run of this config: nothing to do, nothing written (to "
                  f"train it again choose another folder, hydra.run.dir=...; to train longer, resume={folder} "
                  f"epochs=N)", flush=True)
            return 0
        code = _call_hydra(task, config_name, args, prog)
    if code:
        return code
    done = jobs.FINISHED[-1] if jobs.FINISHED else None
    if done is None or done.status == outcomes.COMPLETED:
        return 0
    return 2 if done.status == outcomes.REFUSED else 1


def _sweep(plan: Plan, task: Callable[[DictConfig], None], config_name: str, args: list[str], prog: str,
           claim: Callable[[DictConfig, Path], bool] | None = None) -> int:
    import os

    from rmtprune.runs.folder import RunFolder, RunLock

    folder = Path(os.path.abspath(claim_unique(plan.output_dir) if plan.clock_named else plan.output_dir))
    folder.mkdir(parents=True, exist_ok=True)
    args = _pin(args, plan.output_key, str(folder))
    launch = outcomes.new_launch()  # every job records its outcome under this launch's name
    args = _pin(args, f"+hydra.job.env_set.{outcomes.LAUNCH_ENV}", launch)
    jobs.FINISHED.clear()
    # One sweep at a time in a sweep folder, from before its job folders are checked and Hydra writes
    # multirun.yaml and the jobs' .hydra/ until its last job ended.
    interrupted: KeyboardInterrupt | None = None
    with RunLock(folder, RunFolder.SWEEP_LOCK):
        if claim is not None and not plan.clock_named and plan.job_configs is not None and plan.job_subdirs is not None:
            for cfg, subdir in zip(plan.job_configs, plan.job_subdirs):
                claim(cfg, folder / subdir)
        try:
            with stop_jobs_on_signal(outcomes.records_dir(folder, launch), lambda: outcomes.running(folder, launch)):
                code = _call_hydra(task, config_name, args, prog)
        except KeyboardInterrupt as exc:  # every running job has recorded how it ended: end what is left
            interrupted = exc
            end_descendants()
    found = outcomes.collect(folder, launch, plan.jobs, _folder_of(plan, folder), interrupted=interrupted is not None)
    outcomes.forget(folder, launch)
    if interrupted is not None:
        outcomes.report(found)
        return exit_code(interrupted)
    if not found:
        if code:
            return code
        raise UserError(f"the sweep ran no job (see {folder})")
    status = outcomes.report(found)  # also when the launcher itself failed: the jobs it never ran are listed
    return code or status


def _folder_of(plan: Plan, folder: Path) -> Callable[[int], str]:
    """Where job ``num`` writes, for the jobs that left no record: exact for the default subfolder
    (``${hydra.job.num}``), the sweep folder otherwise."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(plan.configs[0].hydra.sweep, resolve=False).get("subdir")
    if raw == "${hydra.job.num}":
        return lambda num: str(folder / str(num))
    return lambda num: str(folder)


def _call_hydra(task: Callable[[DictConfig], None], config_name: str, args: list[str], prog: str) -> int:
    """``hydra.main`` on ``args``; Hydra's own exits (help, its errors) become the return code."""
    import hydra

    from rmtprune.commands.compose import CONFIG_PATH
    from rmtprune.config.schema import register_configs

    register_configs()
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        hydra.main(config_path=CONFIG_PATH, config_name=config_name, version_base="1.3")(task)()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return 0
