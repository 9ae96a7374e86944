"""Issue 22, points 2-8: no finished result is overwritten or half-lost, an early-killed run continues in
its folder, a damaged spectra.npz costs only figures, and sweeps obey locks and signals."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
from conftest import TINY, interrupted_at


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def status(folder: Path) -> str:
    return json.loads((folder / "summary.json").read_text())["status"]


def metrics_without_time(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


# --- 3. a finished folder is never written again ------------------------------------------------------

@pytest.mark.slow
def test_rerunning_a_finished_run_into_its_folder_writes_nothing(cli, tmp_path):
    args = ("train", *TINY, "epochs=2", "hydra.run.dir=a")
    assert cli(*args)[0] == 0
    before = snapshot(tmp_path / "a")
    assert {"summary.json", "metrics.csv", "model.pt", "DONE", ".hydra/config.yaml"} <= set(before)
    code, out, err = cli(*args)
    assert code == 0, err
    assert "finished run of this config" in out and "hydra.run.dir" in out
    assert snapshot(tmp_path / "a") == before


@pytest.mark.slow
def test_rerunning_a_finished_sweep_into_its_folders_keeps_the_results(cli, tmp_path):
    args = ("train", "-m", *TINY, "epochs=1", "seed=0,1", "hydra.sweep.dir=sw")
    assert cli(*args)[0] == 0
    results = ("summary.json", "metrics.csv", "model.pt", "DONE")
    before = {job: {n: (tmp_path / "sw" / job / n).read_bytes() for n in results} for job in ("0", "1")}
    code, _, err = cli(*args)
    assert code == 0, err
    assert {job: {n: (tmp_path / "sw" / job / n).read_bytes() for n in results} for job in ("0", "1")} == before


# --- 4. a run killed before its first checkpoint is continued in its folder ----------------------------

@pytest.mark.slow
def test_resume_true_restarts_a_run_killed_in_epoch_1_in_its_own_folder(cli, tmp_path, monkeypatch):
    args = [*TINY, "epochs=2", "output_root=part"]
    with interrupted_at(monkeypatch, 1):
        assert cli("train", *args, "hydra.run.dir=part/first")[0] == 130
    first = tmp_path / "part" / "first"
    assert status(first) == "interrupted" and not (first / "checkpoint.pt").exists()
    code, _, err = cli("train", *args, "resume=true", "hydra.run.dir=part/second")
    assert code == 0, err
    assert status(first) == "completed"
    assert Path(json.loads((tmp_path / "part" / "second" / "redirect.json").read_text())["run_dir"]) == first.resolve()
    assert not (tmp_path / "part" / "second" / "summary.json").exists()


@pytest.mark.slow
def test_resume_true_into_a_folder_holding_the_unfinished_run_continues_it_there(cli, tmp_path, monkeypatch):
    args = [*TINY, "device=cpu", "epochs=3", "output_root=elsewhere"]
    assert cli("train", *args, "hydra.run.dir=full")[0] == 0
    for stop, folder in ((1, "x1"), (3, "x3")):  # killed before its first checkpoint, and after two
        with interrupted_at(monkeypatch, stop):
            assert cli("train", *args, f"hydra.run.dir={folder}")[0] == 130
        code, _, err = cli("train", *args, "resume=true", f"hydra.run.dir={folder}")
        assert code == 0, err
        assert status(tmp_path / folder) == "completed"
        assert metrics_without_time(tmp_path / folder) == metrics_without_time(tmp_path / "full")


# --- 2. a kill inside the spectra write loses nothing ------------------------------------------------

def _append_killed_at(path: Path, limit: int, epoch: int, values: dict) -> None:
    """append_spectra in a child process that the kernel kills (SIGXFSZ) when a file it writes reaches
    ``limit`` bytes: a kill at that byte of the write, with no Python cleanup."""
    import resource

    from rmtprune.runs.folder import append_spectra

    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the default kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        append_spectra(path, epoch, values)
        os._exit(0)
    os.waitpid(pid, 0)


@pytest.mark.slow
def test_a_kill_at_any_byte_of_the_spectra_write_keeps_every_earlier_event(tmp_path):
    import numpy as np

    from rmtprune.runs.folder import append_spectra, read_spectra

    rng = np.random.default_rng(0)
    events = {e: {"layers.0": rng.random(300).astype(np.float32), "layers.1": rng.random(40).astype(np.float32)}
              for e in (1, 2, 3)}
    done = tmp_path / "done.npz"
    for e in (1, 2, 3):
        append_spectra(done, e, events[e])
    full = done.stat().st_size
    for limit in [*range(0, full, max(1, full // 30)), 2 * full]:
        path = tmp_path / f"s{limit}" / "spectra.npz"
        path.parent.mkdir()
        append_spectra(path, 1, events[1])
        append_spectra(path, 2, events[2])
        _append_killed_at(path, limit, 3, events[3])
        got = read_spectra(path)  # whole, whatever the byte the kill came at
        assert set(got) in ({1, 2}, {1, 2, 3}), limit
        for e in got:
            assert all(np.array_equal(got[e][k], events[e][k]) for k in events[e]), (limit, e)
    assert set(read_spectra(path)) == {1, 2, 3}  # the last limit lets the write finish


RMT = [*TINY, "pruning=rmt", "pruning.min_size=100", "schedule.horizon=6", "epochs=4"]


@pytest.mark.slow
def test_a_run_stopped_inside_the_spectra_write_resumes_to_the_same_spectra(cli, tmp_path, monkeypatch):
    import numpy as np

    from rmtprune.runs import folder as outputs
    from rmtprune.runs.folder import read_spectra

    assert cli("train", *RMT, "hydra.run.dir=full")[0] == 0
    original, calls = np.lib.format.write_array, {"n": 0}

    def stopped(*a, **kw):  # Ctrl-C in the middle of the second event's write
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", stopped)
    assert cli("train", *RMT, "hydra.run.dir=part")[0] == 130
    monkeypatch.setattr(np.lib.format, "write_array", original)
    assert set(read_spectra(tmp_path / "part" / "spectra.npz")) == {1}
    assert not list((tmp_path / "part").glob(".*.tmp*"))
    code, _, err = cli("train", *RMT, "resume=part", "hydra.run.dir=x")
    assert code == 0, err
    full, part = read_spectra(tmp_path / "full" / "spectra.npz"), read_spectra(tmp_path / "part" / "spectra.npz")
    assert set(full) == set(part) == {1, 2, 3}
    assert all(np.array_equal(full[e][k], part[e][k]) for e in full for k in full[e])
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["warnings"] == []
    assert outputs.repair_spectra(tmp_path / "part" / "spectra.npz") is None


@pytest.mark.slow
def test_a_damaged_spectra_file_found_on_resume_is_a_summary_warning(cli, tmp_path, monkeypatch):
    with interrupted_at(monkeypatch, 3):
        assert cli("train", *RMT, "hydra.run.dir=r")[0] == 130
    spectra = tmp_path / "r" / "spectra.npz"
    spectra.write_bytes(spectra.read_bytes()[:-30])  # as an older rmtprune's kill mid-append left it
    code, _, err = cli("train", *RMT, "resume=r", "hydra.run.dir=x")
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert len(summary["warnings"]) == 1 and "spectra.npz was damaged" in summary["warnings"][0]
    assert (tmp_path / "r" / "spectra.npz.damaged").exists()


# --- 8. logger=mlflow in a parallel sweep on a new store ---------------------------------------------

@pytest.mark.slow
def test_mlflow_jobs_starting_together_share_one_experiment(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from rmtprune.train.loggers import open_logger

    cfg = OmegaConf.create({"logger": "mlflow", "output_root": str(tmp_path), "seed": 0, "pruning": {"name": "rmt"}})
    go = tmp_path / "go"
    children = []
    for job in range(4):  # four jobs of a parallel sweep, released at the same moment
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                while not go.exists():
                    pass
                open_logger(cfg, tmp_path / f"job{job}").close()
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    go.touch()
    assert all(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 for pid in children)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "rmtprune"]
    assert len(client.search_runs([experiment.experiment_id])) == 4

    # the race lost to a process the lock does not reach (another machine): the winner's experiment is used
    real = MlflowClient.get_experiment_by_name
    calls = {"n": 0}

    def not_yet(self, name):
        calls["n"] += 1
        return None if calls["n"] == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_yet)
    open_logger(cfg, tmp_path / "late").close()
    assert len(client.search_runs([experiment.experiment_id])) == 5


# --- 7. two sweeps into one sweep folder -------------------------------------------------------------

@pytest.mark.slow
def test_a_sweep_into_a_sweep_folder_in_use_is_refused_before_hydra_writes(cli, tmp_path):
    import fcntl

    sweep = tmp_path / "sw"
    sweep.mkdir()
    fd = os.open(sweep / ".sweep.lock", os.O_RDWR | os.O_CREAT)  # another sweep (its own open file) holds it
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    args = ("train", "-m", *TINY, "epochs=1", "seed=0,1", "hydra.sweep.dir=sw")
    try:
        code, _, err = cli(*args)
    finally:
        os.close(fd)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "in use" in lines[0] and "4242" in lines[0], err
    assert sorted(p.name for p in sweep.iterdir()) == [".sweep.lock"]  # no multirun.yaml, no job folder
    code, _, err = cli(*args)  # once the other sweep has ended
    assert code == 0, err
    assert (sweep / "multirun.yaml").exists() and not (sweep / ".sweep.lock").exists()


# --- 6. a parallel sweep stops on SIGTERM / SIGINT ----------------------------------------------------

def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            children.setdefault(int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass
    return _walk(children, pid)


def _walk(children: dict[int, list[int]], pid: int) -> list[int]:
    return [c for child in children.get(pid, []) for c in (child, *_walk(children, child))]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_to_a_parallel_sweep_stops_every_job_and_leaves_no_process(tmp_path, signum):
    import subprocess
    import time

    from conftest import rmtprune_command

    sig = getattr(signal, signum)
    cmd = [*rmtprune_command(), "train", "-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
           *TINY, "epochs=100000", "seed=0,1,2", "hydra.sweep.dir=sw"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while sum(1 for _ in (tmp_path / "sw").glob("*/metrics.csv")) < 2:  # two jobs are training
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        tree = _descendants(proc.pid)
        assert tree  # the launcher's workers
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:  # whatever happened, nothing of the sweep is left running (its session's processes)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "3 of 3 jobs failed" in err and "Traceback" not in err, err
    assert sorted(ln.split(":")[0].strip() for ln in err.splitlines() if ": interrupted: " in ln) == \
        ["sw/0", "sw/1", "sw/2"], err
    started = sorted((tmp_path / "sw").glob("*/summary.json"))
    assert len(started) >= 2
    assert all(json.loads(p.read_text())["status"] == "interrupted" for p in started)
    deadline = time.monotonic() + 5  # loky's resource tracker ends when it reads the end of its pipe
    while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in tree if _alive(pid)] == []


def _sigterm_in_epoch_2(monkeypatch) -> None:
    """SIGTERM to this process while a run trains its second epoch (train.train_epoch patched)."""
    import rmtprune.train.loop as train_mod

    original = train_mod.train_epoch

    def killed(*a, **kw):
        if a[-1] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*a, **kw)

    monkeypatch.setattr(train_mod, "train_epoch", killed)


def test_sigterm_to_a_run_records_interrupted_and_exits_143(cli, tmp_path, monkeypatch):
    _sigterm_in_epoch_2(monkeypatch)
    code, _, err = cli("train", *TINY, "epochs=3", "hydra.run.dir=r")
    assert code == 143 and "resume=true" in err, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"] and summary["epochs_completed"] == 1


@pytest.mark.slow
def test_sigterm_during_a_sweep_under_the_basic_launcher_stops_it_with_the_job_list(cli, tmp_path, monkeypatch):
    _sigterm_in_epoch_2(monkeypatch)
    code, _, err = cli("train", "-m", *TINY, "epochs=3", "seed=0,1", "hydra.sweep.dir=sw")
    assert code == 143, err
    assert "2 of 2 jobs failed" in err and "sw/0: interrupted: interrupted (SIGTERM)" in err, err
    assert "sw/1: interrupted: job #1" in err
    assert status(tmp_path / "sw" / "0") == "interrupted" and not (tmp_path / "sw" / "1").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
def test_a_finished_run_without_checkpoint_is_not_retrained_when_continued(cli, tmp_path):
    """resume=PATH with more epochs, where PATH finished with checkpoint=false: nothing to continue from, so
    the command is refused (exit 2) and the finished files stay as they were, never retrained in place."""
    assert cli("train", *TINY, "epochs=1", "checkpoint=false", "hydra.run.dir=done")[0] == 0
    before = {f.name: f.read_bytes() for f in (tmp_path / "done").iterdir() if f.is_file() and f.name != "train.log"}
    code, _, err = cli("train", *TINY, "epochs=2", "checkpoint=false", f"resume={tmp_path / 'done'}")
    assert code == 2 and "checkpoint.pt" in err and "Traceback" not in err
    after = {f.name: f.read_bytes() for f in (tmp_path / "done").iterdir() if f.is_file() and f.name != "train.log"}
    assert after == before


def test_a_signal_inside_a_checkpoint_write_waits_for_the_write_then_interrupts(tmp_path, monkeypatch):
    """torch's archive writer turns an exception raised inside it into a RuntimeError ("unexpected pos"), which
    recorded an interrupted sweep's job as failed: a signal arriving mid-write takes effect after the write."""
    import torch

    from rmtprune.train import checkpoint
    from rmtprune.train.signals import Terminated, interruptible

    real_save, calls = torch.save, []

    def save_interrupted_midway(obj, f):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode, inside the write
        calls.append("after the signal")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_interrupted_midway)
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(Terminated), interruptible():
        checkpoint.save_atomic({"w": torch.arange(6.0)}, target)
    assert calls == ["after the signal"]
    assert torch.equal(torch.load(target)["w"], torch.arange(6.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    with interruptible():  # the signal is spent: the next block starts afresh
        checkpoint.save_atomic({"w": torch.zeros(2)}, target)
    assert torch.equal(torch.load(target)["w"], torch.zeros(2))
