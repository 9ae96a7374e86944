"""Stage 2 of benchmarks/gpu_check.sh: ``rmtprune`` end to end on the GPU, as a user runs it.

Each check runs the real command line in its own process and records ok / FAILED, its seconds and
what it compared; independent runs go side by side. Checks:

  determinism        the same seed twice (deterministic=true): identical metrics.csv
  arms_epoch1        pruning=none and pruning=rmt: identical epoch 1 (same init, same data order)
  interrupt_resume   a GPU run stopped by Ctrl-C (SIGINT) after epoch 1, then resume=true: the
                     metrics of the uninterrupted run
  resume_cpu_to_gpu  started on the CPU, interrupted, resumed on the GPU (and gpu_to_cpu): its first
                     epochs kept, the end within 1 point of test accuracy of the uninterrupted run
  checkpoint_no_cuda a GPU run's checkpoint.pt under CUDA_VISIBLE_DEVICES= : plain
                     torch.load(weights_only=True), every tensor on the CPU, the model rebuilt
  prune              rmtprune prune of the GPU run, on the GPU, with one fine-tuning epoch
  cnn                the reference CNN (half width) on the GPU, deterministic=true
  launchers          a 2-job sweep through submitit_local and local_parallel with device=auto: each
                     job runs on the GPU

    python benchmarks/gpu_smoke.py --work DIR --json RESULT.json [--dry-run]

--dry-run: on the CPU ("cuda" becomes "cpu"), tiny data (a 512-sample MNIST subset when the files
are there, else synthetic data) and a tiny network, without the CPU latency timing of the final model
(cost.latency=false), so the script is exercised without a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc")


class Smoke:
    def __init__(self, work: Path, dry_run: bool) -> None:
        self.work = work
        self.dry = dry_run
        self.gpu = "cpu" if dry_run else "cuda"
        self.results: dict[str, dict[str, Any]] = {}
        self.run_seconds: dict[str, float] = {}  # wall time of every run (the checks only compare files)
        mnist = os.environ.get("RMTPRUNE_OFFLINE_DATA")
        has_mnist = bool(mnist) and (Path(mnist) / "mnist" / "train-images-idx3-ubyte.gz").exists()
        if dry_run:
            data = "mnist" if has_mnist else "synthetic"
            self.data = [f"dataset={data}", "dataset.train_size=512", "dataset.test_size=256"]
            self.net = ["topology=784-64-32-10", "pruning.min_size=1000"]
            self.small = self.data
            self.cnn = ["model.channels=[4,8,8,8,8]", "model.hidden=16"]
        else:
            self.data = ["dataset=mnist"]
            self.net = []  # the default 784-1000-1000-500-10
            self.small = ["dataset=mnist", "dataset.train_size=10000"]
            self.cnn = ["model.channels=[16,32,64,128,256]", "model.hidden=500"]  # the reference CNN at half width
        self.common = ["progress=plain", "magnitude_sweep.enabled=false"]
        if dry_run:  # timing a tiny model on the CPU checks nothing here and was half of each run's time
            self.common.append("cost.latency=false")

    # --- running the CLI ---------------------------------------------------------------------------
    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "rmtprune", *args]

    def train_args(self, folder: str, *extra: str, device: str | None = None) -> list[str]:
        net = [a for a in self.net if "pruning=none" not in extra or not a.startswith("pruning.")]  # none has no keys
        return ["train", *self.data, *net, *self.common, "epochs=3",
                f"device={device or self.gpu}", *extra, f"hydra.run.dir={self.work / folder}"]

    def run(self, args: list[str], log: str, env: dict[str, str] | None = None, timeout: float = 600) -> int:
        with open(self.work / f"{log}.log", "w") as f:
            res = subprocess.run(self.cmd(*args), cwd=self.work, stdout=f, stderr=subprocess.STDOUT,
                                 env={**self.env, **(env or {})}, timeout=timeout)
        return res.returncode

    def interrupted(self, args: list[str], folder: Path, log: str) -> str:
        """Start a run, send SIGINT as soon as its first epoch's checkpoint is written; returns what happened."""
        with open(self.work / f"{log}.log", "w") as f:
            proc = subprocess.Popen(self.cmd(*args), cwd=self.work, stdout=f, stderr=subprocess.STDOUT, env=self.env)
            metrics = folder / "metrics.csv"
            while proc.poll() is None:
                if (folder / "checkpoint.pt").exists():  # written atomically after metrics.csv
                    proc.send_signal(signal.SIGINT)
                    break
                time.sleep(0.05)
            rc = proc.wait(timeout=600)
        status = json.loads((folder / "summary.json").read_text()).get("status") if (folder / "summary.json").exists() else None
        return f"exit {rc}, status {status}, {len(read_metrics(metrics)) if metrics.exists() else 0} epochs saved"

    def check(self, name: str, fn: Callable[[], tuple[bool, str]]) -> None:
        t = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as exc:  # a check that crashes is a failed check, and the others go on
            ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        seconds = time.perf_counter() - t
        self.results[name] = {"ok": bool(ok), "seconds": round(seconds, 1), "detail": detail}
        print(f"smoke {name}: {'ok' if ok else 'FAILED'} ({detail})", flush=True)

    # --- the checks ----------------------------------------------------------------------------------
    def main(self, workers: int) -> None:
        w = self.work
        # the runs side by side share the cores: torch threads per run = cores / runs
        self.env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
        det = ["deterministic=true", "pruning=rmt"]
        first = {
            "A": lambda: self.run(self.train_args("A", *det), "A"),
            "B": lambda: self.run(self.train_args("B", *det), "B"),
            "C": lambda: self.run(self.train_args("C", "deterministic=true", "pruning=none"), "C"),
            "int_gpu": lambda: self.interrupted(self.train_args("int/first", *det, "output_root=int"), w / "int/first", "int_gpu"),
            "int_cpu": lambda: self.interrupted(self.train_args("c2g/first", *det, "output_root=c2g", device="cpu"),
                                                w / "c2g/first", "int_cpu"),
            "int_g2c": lambda: self.interrupted(self.train_args("g2c/first", *det, "output_root=g2c"), w / "g2c/first",
                                                "int_g2c"),
            "cnn": lambda: self.run(["train", *self.small, *self.common, "model=cnn", *self.cnn, "epochs=1", f"device={self.gpu}", "deterministic=true",
                                     f"hydra.run.dir={w / 'cnn'}"], "cnn"),
            "submitit": lambda: self.launcher("submitit_local", ["hydra.launcher.timeout_min=10"]),
            "joblib": lambda: self.launcher("local_parallel", ["hydra.launcher.n_jobs=2"]),
        }
        out1 = self.parallel(first, workers)
        second = {
            "int_gpu": lambda: self.run(self.train_args("int/second", *det, "output_root=int", "resume=true"), "int_gpu2"),
            "c2g": lambda: self.run(self.train_args("c2g/second", *det, "output_root=c2g", "resume=true"), "c2g2"),
            "g2c": lambda: self.run(self.train_args("g2c/second", *det, "output_root=g2c", "resume=true", device="cpu"),
                                    "g2c2"),
            "prune": lambda: self.run(["prune", str(w / "A"), *self.data, *self.common, f"device={self.gpu}",
                                       "schedule=oneshot", "finetune_epochs=1", f"hydra.run.dir={w / 'pruned'}",
                                       *[a for a in self.net if a.startswith("pruning.")]], "prune"),
            "no_cuda": lambda: self.load_without_cuda(w / "A" / "checkpoint.pt"),
        }
        # the CPU part of c2g must have been saved before resuming on the GPU (and vice versa)
        c2g_first = read_metrics(w / "c2g/first/metrics.csv") if (w / "c2g/first/metrics.csv").exists() else []
        g2c_first = read_metrics(w / "g2c/first/metrics.csv") if (w / "g2c/first/metrics.csv").exists() else []
        out2 = self.parallel(second, workers)

        A = lambda: read_metrics(w / "A/metrics.csv")
        self.check("determinism", lambda: (out1["A"] == 0 and out1["B"] == 0 and A() == read_metrics(w / "B/metrics.csv"),
                                           f"exit {out1['A']}/{out1['B']}, {len(A())} epochs compared, device "
                                           f"{summary(w / 'A').get('device')}"))
        self.check("arms_epoch1", lambda: (out1["C"] == 0 and pick(A()[0]) == pick(read_metrics(w / "C/metrics.csv")[0]),
                                           f"epoch 1 test_acc {A()[0]['test_acc']} / {read_metrics(w / 'C/metrics.csv')[0]['test_acc']}"))
        self.check("interrupt_resume", lambda: (out2["int_gpu"] == 0 and read_metrics(w / "int/first/metrics.csv") == A(),
                                                f"first part: {out1['int_gpu']}; resumed exit {out2['int_gpu']}"))
        for key, name, part in (("c2g", "resume_cpu_to_gpu", c2g_first), ("g2c", "resume_gpu_to_cpu", g2c_first)):
            self.check(name, lambda key=key, part=part: self.cross_device(key, part, out1[f"int_{'cpu' if key == 'c2g' else 'g2c'}"],
                                                                          out2[key], A()))
        self.check("checkpoint_no_cuda", lambda: out2["no_cuda"])
        self.check("prune", lambda: self.pruned(out2["prune"]))
        self.check("cnn", lambda: (out1["cnn"] == 0 and summary(w / "cnn").get("status") == "completed",
                                   f"exit {out1['cnn']}, test_acc {summary(w / 'cnn').get('final_test_acc')}, "
                                   f"device {summary(w / 'cnn').get('device')}, {summary(w / 'cnn').get('wall_time_s')} s"))
        self.check("launchers", lambda: (out1["submitit"][0] and out1["joblib"][0],
                                         f"submitit_local: {out1['submitit'][1]}; local_parallel: {out1['joblib'][1]}"))

    def parallel(self, jobs: dict[str, Callable[[], Any]], workers: int) -> dict[str, Any]:
        def guarded(key: str, fn: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            try:
                return fn()
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            finally:
                self.run_seconds[f"{key}{'_2' if key in self.run_seconds else ''}"] = round(time.perf_counter() - t, 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {k: pool.submit(guarded, k, fn) for k, fn in jobs.items()}
            return {k: f.result() for k, f in futures.items()}

    def launcher(self, name: str, extra: list[str]) -> tuple[bool, str]:
        folder = self.work / f"sweep_{name}"
        rc = self.run(["train", "-m", f"hydra/launcher={name}", *extra, *self.small, *self.common,
                       "topology=784-64-10", "pruning=none", "epochs=1", "device=auto", "seed=0,1",
                       f"hydra.sweep.dir={folder}"], f"sweep_{name}")
        devices = sorted(summary(p.parent).get("device", "?") for p in folder.glob("*/summary.json"))
        want = "cpu" if self.dry else "cuda"
        return rc == 0 and len(devices) == 2 and all(d.startswith(want) for d in devices), \
            f"exit {rc}, devices {devices}"

    def cross_device(self, key: str, part: list[dict[str, str]], first: str, rc: int,
                     reference: list[dict[str, str]]) -> tuple[bool, str]:
        rows = read_metrics(self.work / key / "first" / "metrics.csv")
        kept = bool(part) and rows[: len(part)] == part
        delta = abs(float(rows[-1]["test_acc"]) - float(reference[-1]["test_acc"])) if rows and reference else 1.0
        ok = rc == 0 and len(rows) == 3 and kept and delta < 0.01
        return ok, (f"first part: {first}; resumed exit {rc}, {len(rows)} epochs, first {len(part)} kept: {kept}, "
                    f"final test_acc {rows[-1]['test_acc'] if rows else '?'} vs {reference[-1]['test_acc']} uninterrupted, "
                    f"device now {summary(self.work / key / 'first').get('device')}")

    def load_without_cuda(self, ckpt: Path) -> tuple[bool, str]:
        script = ("import sys, torch\n"
                  "from rmtprune.train.checkpoint import rebuild_model\n"
                  "assert not torch.cuda.is_available(), 'CUDA is visible'\n"
                  "c = torch.load(sys.argv[1], weights_only=True)\n"
                  "seen = []\n"
                  "def walk(o):\n"
                  "    if torch.is_tensor(o): seen.append(o.device.type)\n"
                  "    elif isinstance(o, dict): [walk(v) for v in o.values()]\n"
                  "    elif isinstance(o, (list, tuple)): [walk(v) for v in o]\n"
                  "walk(c)\n"
                  "assert seen and set(seen) == {'cpu'}, set(seen)\n"
                  "assert c['optimizer']['state'], 'no optimizer state'\n"
                  "m = rebuild_model(c)\n"
                  "print(f'{len(seen)} tensors, all on the cpu; model with {sum(p.numel() for p in m.parameters())} parameters')\n")
        res = subprocess.run([sys.executable, "-c", script, str(ckpt)], env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                             capture_output=True, text=True, timeout=300)
        lines = (res.stdout if res.returncode == 0 else res.stderr).strip().splitlines() or ["?"]
        return res.returncode == 0, lines[-1][:300]

    def pruned(self, rc: int) -> tuple[bool, str]:
        s = summary(self.work / "pruned")
        ok = rc == 0 and s.get("status") == "completed" and s.get("n_params_after", 1) < s.get("n_params_before", 0)
        return ok, (f"exit {rc}, params {s.get('n_params_before')} -> {s.get('n_params_after')}, test_acc "
                    f"{s.get('test_acc_before')} -> {s.get('test_acc_after')} -> fine-tuned {s.get('test_acc_finetuned')}")


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def pick(row: dict[str, str]) -> dict[str, str]:
    return {k: row[k] for k in FIELDS}


def summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="folder for the runs")
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--workers", type=int, default=0, help="runs side by side (default: min(8, cores))")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    smoke = Smoke(work, args.dry_run)
    smoke.main(args.workers or min(8, os.cpu_count() or 1))
    Path(args.json).write_text(json.dumps({**smoke.results, "run_seconds": smoke.run_seconds}, indent=1) + "\n")
    print("smoke run seconds: " + ", ".join(f"{k} {v}" for k, v in smoke.run_seconds.items()), flush=True)
    failed = [k for k, v in smoke.results.items() if not v["ok"]]
    print(f"smoke: {len(smoke.results) - len(failed)}/{len(smoke.results)} checks ok"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
