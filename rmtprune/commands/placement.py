"""Which GPU a job of a sweep runs on, so that the arms of a comparison share the GPUs evenly.

Hydra numbers the jobs of ``-m seed=0,1,2,3,4 pruning=none,rmt`` in the order of the Cartesian
product of the override lists (the last override varies fastest): job k has seed k // 2 and arm
k mod 2. Placing job k on GPU k mod (GPU count) therefore puts every ``rmt`` job on one GPU of two.
Instead, each arm goes round-robin over the GPUs from its own starting GPU::

    gpu = (rank of the job among the jobs of its arm + offset of its arm) mod n_gpus
    offset of arm a = sum over the arms b before a of (jobs of b mod n_gpus),  or a when every arm's
                      job count is a multiple of n_gpus

With these offsets the arms' leftover jobs fill the GPUs one after another, so every arm and the
sweep as a whole are spread evenly (GPU counts differ by at most one), and two arms of one seed
never share a GPU (2 GPUs, arms none, rmt: seed s runs none on GPU s mod 2, rmt on (s + 1) mod 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

ARM_KEY = "pruning"  # the override that chooses the arm (pruning=none,control,rmt)


def sweep_jobs(sweep_overrides: Sequence[str]) -> list[list[str]]:
    """The override lists of all jobs of a sweep, in Hydra's job order (its BasicSweeper's
    Cartesian product; a key given twice keeps its first position and its last value)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
    return BasicSweeper.split_arguments(parsed, None)[0]


def gpu_for_job(job_num: int, sweep_overrides: Sequence[str], n_gpus: int, arm_key: str = ARM_KEY) -> int:
    """The GPU (0 .. n_gpus - 1) of job ``job_num`` of the sweep given by its command-line overrides
    (e.g. ``["seed=0,1,2", "pruning=none,rmt"]``; see the module doc). Without a swept arm this is
    round-robin (job_num mod n_gpus); so is any job the overrides do not describe (a number past the
    sweep's last job, or overrides Hydra cannot parse)."""
    if n_gpus <= 1:
        return 0
    try:
        jobs = sweep_jobs(sweep_overrides)
    except Exception:  # Hydra's parser raises several types; any of them means "not a sweep we can read"
        return job_num % n_gpus
    if not 0 <= job_num < len(jobs):
        return job_num % n_gpus
    arms = [_value(job, arm_key) for job in jobs]
    arm = arms[job_num]
    order = list(dict.fromkeys(arms))  # arms in the order the sweep gives them
    leftover = [arms.count(a) % n_gpus for a in order]
    index = order.index(arm)
    offset = sum(leftover[:index]) if any(leftover) else index
    rank = sum(1 for a in arms[:job_num] if a == arm)
    return (rank + offset) % n_gpus


def sweep_overrides_of(sweep_dir: str | Path) -> list[str] | None:
    """The command-line overrides of a running sweep, read from the ``multirun.yaml`` Hydra writes
    into the sweep folder before launching (so worker processes of any launcher can read them);
    None if the file is not there."""
    from omegaconf import OmegaConf

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    task = OmegaConf.select(cfg, "hydra.overrides.task")
    return [str(t) for t in task] if task is not None else None


def _value(job: Sequence[str], key: str) -> str | None:
    for item in job:
        k, _, v = item.partition("=")
        if k.lstrip("+~") == key:
            return v
    return None
