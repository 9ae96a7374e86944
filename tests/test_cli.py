"""The command line as a user meets it: help, printing the config, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, OFFLINE, REPO, TINY, needs_real_data, rmtprune_command, run_subprocess
from tests_support.runs import fake_run


def test_top_level_help_lists_the_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "train" in out and "compare" in out


def test_train_help_and_cfg_job_run_nothing(cli, tmp_path):
    code, out, _ = cli("train", "--cfg", "job", "topology=784-3000-3000-2000-500-10", "dataset=fashion_mnist")
    assert code == 0 and "784-3000-3000-2000-500-10" in out and "fashion_mnist" in out
    assert not (tmp_path / "outputs").exists()


BAD_INPUT = [
    ("topology=784-abc-10", "topology"), ("topology=784", "topology"), ("topology=784--10", "topology"),
    ("topology=784-0-10", "topology"), ("topology=784--3-10", "topology"), ("topology=100-10", "input size"),
    ("topology=784-7", "number of classes"), ("dataset=imagenet", "dataset/imagenet"), ("model=resnet", "model/resnet"),
    ("device=cuda:7", "cuda"), ("optimizer.lr=-1", "optimizer.lr"), ("batch_size=0", "batch_size"),
    ("epochs=0", "epochs"), ("epoch=3", "did you mean epochs"), ("epochs=ten", "epochs"),
    ("hydra.run.dir=/proc/rmtprune", "hydra.run.dir"),
    ("threads=-1", "threads"), ("threads=0", "threads"), ("seed=1e20", "seed"),
    (f"seed={2**70}", "seed range"), ("topology=784-1000000000-10", "needs at least"),
    ("dataset.train_size=10000000000", "needs at least"), ("pruning.stop_epoch=-1 pruning=rmt", "pruning.stop_epoch"),
    ("model=cnn model.kernel_size=0", "model.kernel_size"), ("model=cnn model.kernel_size=20", "kernel_size=20"),
    ("model=cnn model.fc_dropout=2", "model.fc_dropout"), ("hydra.run.dir=" + "a" * 300, "folder name"),
    ("hydra.run.dir=${foo}", "hydra.run.dir"), ("experiment=nope", "experiment=nope"),
    ("experiment=mnist_fc_1000_1000_1000_50", "did you mean experiment=mnist_fc_1000_1000_1000_500"),
    ("budget=cpux", "did you mean budget=cpu"), ("dataset=fashion_mist", "did you mean dataset=fashion_mnist"),
    ("model.hidden=3", "model=cnn"), ("model=cnn model.hiden=3", "did you mean model.hidden"),
    ("pruning=control pruning.tolerance=0.1", "pruning.tolerance is not used by pruning=control"),
    ("pruning=rmt pruning.tolerence=0.1", "did you mean pruning.tolerance"),
    ("pruning=rmt schedule=oneshot schedule.horizon=3", "schedule.horizon is not used by schedule=oneshot"),
    ("pruning=none schedule.horizon=3", "schedule.horizon is not used by pruning=none"),
    ("seed=0,1", "add -m"), ("~seed", "seed is a setting of every run and cannot be deleted"),
    ("~checkpoint", "checkpoint is a setting of every run and cannot be deleted"),
    ("~magnitude_sweep", "magnitude_sweep is a setting"), ("~pruning.tolerance", "cannot be deleted"),
    ("+epoch=3", "did you mean epochs?"), ("++epoch=3", "epoch is not a setting"),
    ("~pruning", "pruning is a setting of every run and cannot be deleted"), ("~schedule", "cannot be deleted"),
    ("+seed=3", "seed is already a setting: drop the '+'"),
    ("+pruning.tolerence=0.1", "not a setting"), ("model=cnn_schema", "available: cnn, custom, mlp"),
    ("pruning=rmt schedule=step schedule.at=-1", "schedule.at=-1 must be positive"),
    ("optimizer.lr=inf", "optimizer.lr=inf must be positive and finite"),
    ("pruning=rmt pruning.lr_factor=inf", "pruning.lr_factor=inf must be positive and finite"),
    ("pruning=rmt schedule.horizon=inf", "schedule.horizon=inf"),
]


@pytest.mark.slow
@pytest.mark.parametrize("override,needle", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, override, needle):
    import torch
    if override.startswith("device") and torch.cuda.is_available():
        pytest.skip("a GPU is present: device=cuda:7 may exist")
    code, out, err = cli("train", *FAST, "epochs=1", *override.split(" "))
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rmtprune: error:") and needle in lines[0], err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("override,needle", BAD_INPUT[::8])
def test_a_sample_of_bad_input_is_one_line_and_exit_2(cli, tmp_path, override, needle):
    """The fast path's share of the cases above (every eighth)."""
    test_bad_input_is_one_line_and_exit_2(cli, tmp_path, override, needle)


@pytest.mark.slow
def test_force_adding_an_existing_key_is_a_plain_override(cli, tmp_path):
    code, _, err = cli("train", *TINY, "epochs=1", "++epochs=2", "hydra.run.dir=r")
    assert code == 0, err
    assert (tmp_path / "r" / "metrics.csv").read_text().count("\n") == 3  # a header and 2 epochs


@pytest.mark.slow
def test_help_lists_no_internal_schema(cli):
    code, out, _ = cli("train", "--help")
    assert code == 0 and "model: cnn, custom, mlp\n" in out and "_schema" not in out


@pytest.mark.slow
def test_a_bad_value_in_a_sweep_fails_before_any_job_runs(cli, tmp_path):
    code, _, err = cli("train", "-m", *FAST, "epochs=1", "seed=0,1", "topology=784-32-10,784-x-10",
                       "hydra.sweep.dir=sweep")
    assert code == 2 and "784-x-10" in err
    assert not (tmp_path / "sweep").exists()


def test_unknown_command(cli):
    code, _, err = cli("fly")
    assert code == 2 and "unknown command" in err


@pytest.mark.slow
def test_missing_offline_data_is_a_clear_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RMTPRUNE_OFFLINE_DATA", str(tmp_path / "nowhere"))
    code, _, err = cli("train", "dataset=mnist", "epochs=1", "progress=none", "hydra.run.dir=r")
    assert code == 2 and "RMTPRUNE_OFFLINE_DATA" in err and "Traceback" not in err


@pytest.mark.slow
def test_console_script_from_another_directory(tmp_path):
    """The installed `rmtprune` finds its configs (package data) when run from anywhere."""
    exe = Path(sys.executable).parent / "rmtprune"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "rmtprune"]
    res = run_subprocess(cmd + ["train", *FAST, "epochs=1", "hydra.run.dir=elsewhere"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "elsewhere" / "summary.json").exists()


@pytest.mark.slow
def test_plain_pip_install_into_a_fresh_virtualenv(tmp_path):
    """`pip install .` (not editable) ships the configs: `rmtprune train --cfg job` works from elsewhere.

    The new environment sees this interpreter's packages (torch, hydra, pip, setuptools: a test
    dependency, so the wheel is built offline without build isolation) behind its own, whether the
    tests run in CI's interpreter or in a plain `python3 -m venv`."""
    venv = tmp_path / "venv"
    made = run_subprocess([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = str(venv / "bin" / "python")
    clean = {"PYTHONPATH": ""}
    site = run_subprocess([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path,
                          env=clean).stdout.strip()
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    (Path(site) / "_rmtprune_test_base.pth").write_text("\n".join(ours) + "\n")
    pip = run_subprocess([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                          str(REPO)], cwd=tmp_path, env=clean, timeout=600)
    assert pip.returncode == 0, pip.stderr
    work = tmp_path / "work"
    work.mkdir()
    res = run_subprocess([str(venv / "bin" / "rmtprune"), "train", "--cfg", "job", "dataset=synthetic"], cwd=work,
                         env=clean)
    assert res.returncode == 0, res.stderr
    assert "name: synthetic" in res.stdout
    where = run_subprocess([python, "-c", "import rmtprune.conf, os; print(rmtprune.conf.__file__)"], cwd=work, env=clean)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    shipped = Path(where.stdout.strip()).parent
    assert (shipped.parent / "integrations" / "lightning.py").exists()
    for rel in ("config.yaml", "prune.yaml", "dataset/mnist.yaml", "dataset/cifar10.yaml", "model/custom.yaml",
                "experiment/fashion_cnn.yaml",
                "hydra/launcher/local_parallel.yaml", "hydra/launcher/slurm.yaml"):
        assert (shipped / rel).exists(), rel
    commands = run_subprocess([python, "-c", "import rmtprune.commands.train"], cwd=work, env=clean)
    assert commands.returncode == 0, commands.stderr
    # the installed copy records the commit it was built from, as the checkout names itself
    from rmtprune.train.environment import code_version

    installed = run_subprocess([python, "-c", "from rmtprune.train.environment import code_version; print(code_version())"],
                               cwd=work, env=clean)
    assert installed.stdout.strip() == code_version(), installed.stderr
    assert "+g" in installed.stdout or not (REPO / ".git").exists()


@pytest.mark.slow
def test_a_user_config_directory_adds_options(cli, tmp_path):
    mine = tmp_path / "myconf" / "dataset"
    mine.mkdir(parents=True)
    (mine / "tiny.yaml").write_text("name: synthetic\ntrain_size: 300\ntest_size: 100\n")
    code, out, err = cli("train", "--config-dir", str(tmp_path / "myconf"), *FAST, "dataset=tiny", "epochs=1",
                         "hydra.run.dir=mine")
    assert code == 0, err
    import json
    summary = json.loads((tmp_path / "mine" / "summary.json").read_text())
    assert summary["config"]["dataset"]["train_size"] == 300


def test_threads_per_job_split_the_cores_between_parallel_jobs():
    from rmtprune.commands.jobs import threads_per_job

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert threads_per_job({"_target_": joblib, "n_jobs": 2}, 8) == 4
    assert threads_per_job({"_target_": joblib, "n_jobs": -1}, 8) == 1
    assert threads_per_job({"_target_": joblib, "n_jobs": 16}, 8) == 1
    assert threads_per_job({"_target_": "x.SubmititLauncher", "cpus_per_task": 6}, 8) == 6
    assert threads_per_job({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8) is None


@pytest.mark.slow
def test_default_run_folders_are_unique_within_one_second(cli, tmp_path, monkeypatch):
    """Two runs started in the same second (here: one process, a frozen clock) get two folders."""
    import datetime as dt

    import hydra.core.utils

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)
    for seed in (0, 1):
        code, _, err = cli("train", *TINY, "epochs=1", f"seed={seed}")
        assert code == 0, err
    folders = sorted(p.parent for p in (tmp_path / "outputs" / "2030-01-02").glob("*/summary.json"))
    assert [f.name for f in folders] == ["03-04-05", "03-04-05-2"]
    assert [json.loads((f / "summary.json").read_text())["seed"] for f in folders] == [0, 1]


@pytest.mark.slow
def test_two_processes_into_one_named_folder_one_is_refused(tmp_path):
    """Started at once into the same hydra.run.dir: one trains, the other gets one line and exit 2, and the
    folder holds the files of one run only."""
    cmd = rmtprune_command() + ["train", *TINY, "epochs=2", "hydra.run.dir=shared"]
    procs = [subprocess.Popen(cmd + [f"seed={seed}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in (0, 1)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    winner = [seed for seed, (code, _) in enumerate(results) if code == 0][0]
    loser_err = [err for code, err in results if code == 2][0]
    lines = [ln for ln in loser_err.splitlines() if ln.strip() and "Warning" not in ln and "warn(" not in ln]
    assert len(lines) == 1 and lines[0].startswith("rmtprune: error:") and "shared" in lines[0], loser_err
    folder = tmp_path / "shared"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["seed"] == winner and summary["status"] == "completed"
    import torch
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["config"]["seed"] == winner
    assert f"seed: {winner}" in (folder / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("sweep", [
    ["device=cpu,cuda:7"], ["threads=-1,1"], ["topology=784-32-10,784-1000000000-10"],
    ["experiment=mnist_fc_1000_1000_1000_500,nope"], ["pruning=none,control", "pruning.tolerance=0.1"],
])
def test_sweep_values_are_refused_before_any_job_starts(cli, tmp_path, sweep):
    import torch
    if "cuda" in sweep[0] and torch.cuda.is_available():
        pytest.skip("a GPU is present: cuda:7 may exist")
    code, out, err = cli("train", "-m", *TINY, "epochs=1", *sweep, "hydra.sweep.dir=sweep")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rmtprune: error:"), err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_user_config_directory_is_checked_before_any_job(cli, tmp_path):
    mine = tmp_path / "myconf" / "dataset"
    mine.mkdir(parents=True)
    (mine / "tiny.yaml").write_text("name: synthetic\ntrain_size: 300\ntest_size: 100\n")
    for bad, needle in (("threads=-1,1", "threads=-1"), ("dataset=tiny,tinny", "did you mean dataset=tiny")):
        code, _, err = cli("train", "-m", "--config-dir", str(tmp_path / "myconf"), *TINY, "dataset=tiny", "epochs=1",
                           *bad.split(" "), "hydra.sweep.dir=sweep")
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launcher,lrs,failed", [
    ([], "0.05,1e30", {"1": "nan", "2": "offline folder", "3": "offline folder"}),
    (["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"], "0.05,1e30",
     {"1": "nan", "2": "offline folder", "3": "offline folder"}),
    (["hydra/launcher=submitit_local"], "0.05", {"1": "offline folder"}),  # a process per job: two jobs
], ids=["basic", "joblib", "submitit"])
def test_a_sweep_with_failed_jobs_says_which_and_exits_non_zero(cli, tmp_path, launcher, lrs, failed):
    """Jobs fail in the launcher's own processes: a NaN loss (summary.json says failed), a missing data
    set (refused before training: no summary.json). The sweep lists them and exits 2 (bad input among them)."""
    code, out, err = cli("train", "-m", *launcher, *TINY, "epochs=1", "dataset=synthetic,mnist",
                         f"dataset.offline_dir={tmp_path / 'nowhere'}", "dataset.download=false",
                         f"optimizer.lr={lrs}", "hydra.sweep.dir=sweep")
    total = 2 * len(lrs.split(","))
    assert code == 2, err
    assert f"rmtprune: error: {len(failed)} of {total} jobs failed" in err, err
    tail = err[err.index("jobs failed"):]
    for job, reason in failed.items():
        line = next((ln for ln in tail.splitlines() if ln.strip().startswith(f"sweep/{job}:")), "")
        assert reason in line.lower(), (job, tail)
    assert "sweep/0:" not in tail
    assert json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_job_that_died_without_a_word_counts_as_failed(cli, tmp_path, monkeypatch):
    """A job whose process died before recording anything (here: its record is never written)."""
    from rmtprune.commands import outcomes

    monkeypatch.setattr(outcomes, "write", lambda outcome, sweep_dir: None)
    code, _, err = cli("train", "-m", *TINY, "epochs=1", "seed=0,1", "hydra.sweep.dir=sweep")
    assert code == 1 and "2 of 2 jobs failed" in err and "sweep/0: missing" in err and "sweep/1: missing" in err, err


def test_two_launches_into_one_sweep_folder_keep_their_own_job_records(tmp_path, monkeypatch):
    """Two sweeps launched into the same folder at the same time (e.g. the main arms and the matched
    baselines) number their jobs from 0 each: each reads back only its own jobs' records, and removing
    one launch's records leaves the other's."""
    from rmtprune.commands import outcomes

    sweep = tmp_path / "sweep"
    for name, status in (("done", "completed"), ("broken", "failed")):
        fake_run(sweep / name, summary={"status": status, "error": "nan loss"})
    first, second = outcomes.new_launch(), outcomes.new_launch()
    assert first != second
    for launch, folder, status in ((first, "done", "completed"), (second, "broken", "failed")):
        monkeypatch.setenv(outcomes.LAUNCH_ENV, launch)  # what hydra.job.env_set gives each job
        outcomes.write(outcomes.Outcome(0, str(sweep / folder), status, "nan loss" if status == "failed" else ""), sweep)
    mine = outcomes.collect(sweep, first, [["seed=0"]])
    assert [(o.status, Path(o.folder).name) for o in mine] == [("completed", "done")]
    outcomes.forget(sweep, second)
    assert [o.status for o in outcomes.collect(sweep, first, [["seed=0"]])] == ["completed"]
    assert [o.status for o in outcomes.collect(sweep, second, [["seed=0"]])] == ["missing"]
    outcomes.forget(sweep, first)
    assert not (sweep / outcomes.RECORDS).exists()


def test_output_folder_unwritable_mid_run_is_one_line(cli, tmp_path, monkeypatch):
    """A full disk (summary.json still writable: it says failed), then a folder that turned read-only
    (nothing writable): one line and exit 1 either way, never a traceback."""
    import errno

    import rmtprune.files as outputs  # every file of a run folder is written through files.atomic_write_text

    original = outputs.atomic_write_text
    calls = {"metrics": 0}

    def disk_full(path, text):
        if Path(path).name == "metrics.csv":
            calls["metrics"] += 1
            if calls["metrics"] > 2:  # after epoch 1's row
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, text)

    monkeypatch.setattr(outputs, "atomic_write_text", disk_full)
    code, out, err = cli("train", *TINY, "epochs=3", "hydra.run.dir=full")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0], err
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]

    def read_only(path, text):
        if calls["metrics"] >= 1:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        if Path(path).name == "metrics.csv":
            calls["metrics"] += 1
        return original(path, text)

    calls["metrics"] = 0
    monkeypatch.setattr(outputs, "atomic_write_text", read_only)
    code, out, err = cli("train", *TINY, "epochs=3", "hydra.run.dir=readonly")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and "Permission denied" in lines[0] and "Traceback" not in err, err


@pytest.mark.slow
def test_temporary_files_of_a_killed_write_are_removed_at_start(cli, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    stale = [folder / ".metrics.csv.k3j2.tmp", folder / ".checkpoint.pt.x8q1.tmp", folder / ".spectra.npz.p0.tmp.npz"]
    for path in stale:
        path.write_bytes(b"half written")
    code, _, err = cli("train", *TINY, "epochs=1", "hydra.run.dir=run")
    assert code == 0, err
    assert not any(p.exists() for p in stale) and (folder / "summary.json").exists()


@pytest.mark.slow
@needs_real_data
def test_a_relative_offline_data_path_means_the_folder_where_the_command_started(cli, tmp_path, monkeypatch):
    """With hydra.job.chdir=true the job runs in its run folder; RMTPRUNE_OFFLINE_DATA=<relative> still
    names the mirror as seen from where `rmtprune` started."""
    monkeypatch.setenv("RMTPRUNE_OFFLINE_DATA", os.path.relpath(OFFLINE, tmp_path))
    code, _, err = cli("train", "dataset=mnist", "dataset.train_size=500", "dataset.test_size=200", "topology=784-32-10",
                       "pruning=none", "epochs=1", "progress=none", "magnitude_sweep.enabled=false",
                       "hydra.job.chdir=true", "hydra.run.dir=rel")
    assert code == 0, err
    assert json.loads((tmp_path / "rel" / "summary.json").read_text())["status"] == "completed"



@pytest.mark.slow
def test_only_command_line_keys_are_checked_against_the_chosen_option():
    """A preset's pruning.* / schedule.* keys never block pruning=none; a command-line key is accepted when
    one option of a sweep uses it, refused when none does."""
    from rmtprune.commands.compose import Composer
    from rmtprune.commands.precheck import check_unused_keys, parse_overrides
    from rmtprune.errors import UserError

    preset = ["experiment=mnist_fc_1000_1000_1000_500", "pruning=none"]
    with Composer(None, "config") as composer:
        none = composer.compose(preset)
        rmt = composer.compose(["experiment=mnist_fc_1000_1000_1000_500", "pruning=rmt"])
    assert none.pruning.name == "none" and none.schedule.horizon == 300  # set by the preset, unused: fine
    check_unused_keys(parse_overrides(preset), [none])
    swept = parse_overrides(["pruning=none,rmt", "pruning.tolerance=0.1", "schedule.horizon=10"])
    check_unused_keys(swept, [none, rmt])
    with pytest.raises(UserError, match="pruning.tolerance is not used by pruning=none"):
        check_unused_keys(parse_overrides([*preset, "pruning.tolerance=0.1"]), [none])


@pytest.mark.slow
def test_tab_completion_as_the_help_installs_it(tmp_path):
    """`eval "$(rmtprune train -sc install=bash)"` in bash, then TAB: the command name, then the overrides."""
    import shutil

    exe = Path(sys.executable).parent / "rmtprune"
    if shutil.which("bash") is None or not exe.exists():
        pytest.skip("needs bash and the installed rmtprune script")
    script = ('eval "$(rmtprune train -sc install=bash)"; '
              'COMP_LINE="rmtprune tr"; COMP_CWORD=1; hydra_bash_completion; echo "${COMPREPLY[@]}"; '
              'COMP_LINE="rmtprune train dataset=fa"; COMP_CWORD=2; hydra_bash_completion; echo "${COMPREPLY[@]}"; '
              'COMP_LINE="rmtprune prune run/model.pt finetune_ep"; COMP_CWORD=3; hydra_bash_completion; '
              'echo "${COMPREPLY[@]}"')
    res = run_subprocess(["bash", "-c", script], cwd=tmp_path, env={"PATH": f"{exe.parent}:{os.environ['PATH']}"})
    assert res.returncode == 0 and "unknown command" not in res.stderr, res.stderr
    assert res.stdout.splitlines() == ["train", "dataset=fashion_mnist", "finetune_epochs="], res.stdout + res.stderr
