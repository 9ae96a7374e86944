"""Inside one job of a Hydra command (``train``, ``prune``), in whichever process the launcher runs it:
its threads and GPU, and how it ends.

A job never raises into Hydra: bad input becomes one ``rmtprune: error:`` line, a run that failed
one line too, and either way the job records its outcome (:mod:`.outcomes`) and the sweep goes on.
Only Ctrl-C / SIGTERM stop it (recorded as ``interrupted``, :mod:`rmtprune.train.signals`). In a sweep a job
first records that it is running, in which process, so that the launching process can stop it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, open_dict

from rmtprune.commands import outcomes
from rmtprune.commands.common import debugging, err, unexpected
from rmtprune.commands.outcomes import Outcome
from rmtprune.errors import RunFailed, UserError
from rmtprune.runs.folder import RunFolder
from rmtprune.train.signals import Terminated, interruptible, stopped

# The outcomes of the jobs this process ran (a single run, or a sweep under the basic launcher).
FINISHED: list[Outcome] = []


def job_task(body: Callable[[DictConfig, Path], Any]) -> Callable[[DictConfig], None]:
    """Wrap ``body(cfg, run_dir)`` as a Hydra task (see the module docstring)."""

    def task(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        multirun = hc.mode == RunMode.MULTIRUN
        num = int(hc.job.num) if multirun else None
        outcome = Outcome(num, str(run_dir), outcomes.COMPLETED)
        with interruptible():  # the first Ctrl-C / SIGTERM stops the job; the outcome is still recorded
            try:
                if multirun:  # running, in this process: whom the launching process signals to stop
                    outcomes.write(Outcome(num, str(run_dir), outcomes.RUNNING, pid=os.getpid()), hc.sweep.dir)
                    if stopped(outcomes.records_dir(hc.sweep.dir)):
                        raise KeyboardInterrupt
                place_job(cfg, hc)
                body(cfg, run_dir)
            except UserError as exc:
                err(str(exc))
                outcome.status, outcome.error = outcomes.REFUSED, str(exc)
            except RunFailed as exc:
                err(f"{exc} (metrics so far are in {RunFolder(run_dir).resolve().path})")  # a resumed run: its own folder
                outcome.status, outcome.error = outcomes.FAILED, str(exc)
            except KeyboardInterrupt as exc:
                how = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
                outcome.status, outcome.error = outcomes.INTERRUPTED, f"interrupted ({how}); continue with resume=true"
                raise
            except Exception as exc:  # a full disk, a folder made read-only mid-run, a bug: one line, the run failed
                if debugging():
                    raise
                message = unexpected(exc, f"the job in {RunFolder(run_dir).resolve().path} failed")
                err(message)
                outcome.status, outcome.error = outcomes.FAILED, message
                _mark_failed(run_dir, message)
            finally:
                FINISHED.append(outcome)
                if multirun:
                    outcomes.write(outcome, hc.sweep.dir)

    return task


def _mark_failed(run_dir: Path, message: str) -> None:
    """Say ``failed`` in a summary.json the run left at ``running`` (when it can still be written)."""
    folder = RunFolder(run_dir).resolve()
    summary = folder.read_summary()
    if summary is not None and summary.get("status") == "running":
        summary.update(status="failed", error=message)
        try:
            folder.write_summary(summary)
        except OSError:
            pass


def threads_per_job(launcher: Any, cpu_count: int) -> int | None:
    """Torch threads for one job of a sweep: cores / parallel jobs under joblib (n_jobs < 0 means
    one job per core), ``cpus_per_task`` under submitit, None (torch's default) otherwise."""
    target = str(launcher.get("_target_", ""))
    if "Joblib" in target:
        n_jobs = int(launcher.get("n_jobs", 1) or 1)
        n_jobs = cpu_count if n_jobs < 0 else n_jobs
        return max(1, cpu_count // n_jobs)
    if "Submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.get("cpus_per_task"))
    return None


def place_job(cfg: DictConfig, hc: Any) -> None:
    """Threads and GPU of one job: ``threads`` if set, else cores / parallel jobs of the launcher;
    ``device=auto`` on a multi-GPU machine spreads every arm of a sweep evenly over the GPUs
    (placement.gpu_for_job: the two arms of one seed never share a GPU)."""
    import torch

    threads = cfg.get("threads")
    if threads is None:
        threads = threads_per_job(hc.launcher, os.cpu_count() or 1)
    if threads:
        torch.set_num_threads(int(threads))
    if cfg.device == "auto" and torch.cuda.device_count() > 1:
        num = hc.job.get("num")
        if num is not None:
            from rmtprune.commands.placement import gpu_for_job, sweep_overrides_of

            overrides = sweep_overrides_of(hc.sweep.dir) or list(hc.overrides.task)
            index = gpu_for_job(int(num), overrides, torch.cuda.device_count())
            with open_dict(cfg):
                cfg.device = f"cuda:{index}"
