"""Stage 5 of benchmarks/gpu_check.sh: the paper's protocol on the GPU with the minutes left.

784-1000-1000-1000-500-10 on MNIST (experiment=mnist_fc_1000_1000_1000_500), seeds x arms
{none, control, rmt} (control: rmt's calendar without pruning; where this version of rmtprune has
no pruning=control, {none, rmt}), all jobs at once on the one GPU (hydra/launcher=local_parallel,
one job per process). The schedule length comes from the time left:

  1. a probe: every job for 2 epochs, side by side -> the seconds of one concurrent epoch (the
     slowest job's second epoch) and the fixed cost (start-up, data, writing);
  2. epochs = floor((seconds left - fixed cost - margin) / (1.15 * concurrent epoch)), at most the
     preset's 100, with the linear schedule's horizon = epochs (the whole schedule within the run,
     as the CPU presets do);
  3. the sweep itself, stopped at the deadline if it runs late (each job keeps the epochs it
     finished: metrics.csv and checkpoint.pt are written after every epoch).

Too little time for 2 epochs: the stage skips itself (exit 75, which gpu_check.sh records as
"skipped"). ``--dry-run`` checks the script, not the time: the deadline stops nothing and the sweep
runs at least 2 epochs.

The raw files of every job (not the checkpoints) go into --tar for docs/results.md, with
protocol.json (epochs, arms, timings).

    python benchmarks/gpu_protocol.py --work DIR --deadline UNIX_SECONDS --tar OUT.tar.gz [--dry-run]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

RAW = ("summary.json", "metrics.csv", "layers.csv", "magnitude_sweep.csv", "spectra.npz", "DONE", "train.log")
MARGIN_S = 20.0  # magnitude sweep, final writes, packing
SLACK = 1.15  # concurrent epochs vary; plan for the slow ones
MAX_EPOCHS = 100  # the preset's length


def has_control() -> bool:
    """Whether this version of rmtprune knows pruning=control."""
    res = subprocess.run([sys.executable, "-m", "rmtprune", "train", "pruning=control", "--cfg", "job"],
                         capture_output=True, text=True, timeout=120)
    return res.returncode == 0


def sweep(work: Path, name: str, args: list[str], n_jobs: int, deadline: float) -> tuple[int, float]:
    """Run one multirun, killed (SIGINT, then SIGKILL) at ``deadline`` (inf: never); (exit code, seconds)."""
    cmd = [sys.executable, "-m", "rmtprune", "train", "-m", "hydra/launcher=local_parallel",
           f"hydra.launcher.n_jobs={n_jobs}", "threads=1", *args, f"hydra.sweep.dir={work / name}",
           "hydra.sweep.subdir=${pruning.name}_seed${seed}"]
    t = time.time()
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=None if deadline == math.inf else max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    return rc, time.time() - t


def epoch_seconds(folder: Path, epoch: int) -> list[float]:
    out = []
    for path in folder.glob("*/metrics.csv"):
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) == epoch]
        out += [float(r["seconds"]) for r in rows]
    return out


def pack(work: Path, tar: Path, info: dict[str, Any]) -> None:
    (work / "protocol.json").write_text(json.dumps(info, indent=1) + "\n")
    with tarfile.open(tar, "w:gz") as t:
        t.add(work / "protocol.json", arcname="protocol/protocol.json")
        for job in sorted((work / "protocol").glob("*/")):
            for f in RAW:
                if (job / f).exists():
                    t.add(job / f, arcname=f"protocol/runs/{job.name}/{f}")
            if (job / ".hydra").is_dir():
                t.add(job / ".hydra", arcname=f"protocol/runs/{job.name}/.hydra")
        for f in ("probe.log", "protocol.log"):
            if (work / f).exists():
                t.add(work / f, arcname=f"protocol/{f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--deadline", type=float, required=True, help="unix time by which the sweep must end")
    ap.add_argument("--tar", required=True, help="the raw runs, packed")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--dry-run", action="store_true", help="CPU, a tiny network and data, 1 seed, <= 3 epochs")
    args = ap.parse_args()
    deadline = math.inf if args.dry_run else args.deadline
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    arms = "none,control,rmt" if has_control() else "none,rmt"
    seeds = "0" if args.dry_run else args.seeds
    n_jobs = len(arms.split(",")) * len(seeds.split(","))
    if args.dry_run:
        base = ["dataset=synthetic", "dataset.train_size=512", "dataset.test_size=256", "topology=784-64-32-10",
                "pruning.min_size=1000", "device=cpu", "optimizer.lr=0.02", "magnitude_sweep.n_thresholds=5",
                "cost.latency=false"]
        max_epochs = 3
    else:
        base = ["experiment=mnist_fc_1000_1000_1000_500", "device=cuda"]
        max_epochs = MAX_EPOCHS
    base += ["progress=plain", f"seed={seeds}", f"pruning={arms}"]
    info: dict[str, Any] = {"arms": arms, "seeds": seeds, "jobs": n_jobs, "dry_run": args.dry_run}
    print(f"protocol: arms {arms}, seeds {seeds}: {n_jobs} jobs side by side", flush=True)

    rc, probe_s = sweep(work, "probe", [*base, "epochs=2", "schedule.horizon=2", "checkpoint=false",
                                        "magnitude_sweep.enabled=false", "output_root=probe_root"],
                        n_jobs, deadline)
    second = epoch_seconds(work / "probe", 2)
    info.update(probe_exit=rc, probe_s=round(probe_s, 1), probe_epoch2_s=second)
    if rc != 0 or len(second) < n_jobs:
        info["outcome"] = f"probe failed (exit {rc}, {len(second)}/{n_jobs} jobs finished 2 epochs)"
        print(f"protocol: {info['outcome']}", flush=True)
        pack(work, Path(args.tar), info)
        sys.exit(1)
    epoch_s = max(second)
    fixed_s = max(0.0, probe_s - 2 * epoch_s)
    left = args.deadline - time.time()
    epochs = min(max_epochs, math.floor((left - fixed_s - MARGIN_S) / (SLACK * epoch_s)))
    if args.dry_run:
        epochs = max(2, epochs)
    info.update(concurrent_epoch_s=round(epoch_s, 2), fixed_s=round(fixed_s, 1), seconds_left=round(left, 1),
                epochs=epochs)
    print(f"protocol: probe {probe_s:.1f} s, concurrent epoch {epoch_s:.2f} s, fixed {fixed_s:.1f} s, "
          f"{left:.0f} s left -> {epochs} epochs", flush=True)
    if epochs < 2:
        info["outcome"] = "skipped: too little time for 2 epochs"
        print(f"protocol: {info['outcome']}", flush=True)
        pack(work, Path(args.tar), info)
        sys.exit(75)
    rc, run_s = sweep(work, "protocol", [*base, f"epochs={epochs}", f"schedule.horizon={epochs}",
                                         "output_root=protocol_root"], n_jobs, deadline)
    done = sorted(p.parent.name for p in (work / "protocol").glob("*/DONE"))
    finals = {}
    for p in (work / "protocol").glob("*/summary.json"):
        s = json.loads(p.read_text())
        finals[p.parent.name] = {k: s.get(k) for k in ("status", "epochs_completed", "final_test_acc",
                                                       "n_params_final", "wall_time_s")}
    info.update(exit=rc, seconds=round(run_s, 1), completed=done, runs=finals,
                outcome=f"{len(done)}/{n_jobs} jobs completed {epochs} epochs")
    print(f"protocol: exit {rc}, {info['outcome']} in {run_s:.0f} s", flush=True)
    for name, s in sorted(finals.items()):
        print(f"protocol {name}: {s}", flush=True)
    pack(work, Path(args.tar), info)
    sys.exit(0 if rc == 0 and len(done) == n_jobs else 1)


if __name__ == "__main__":
    main()
