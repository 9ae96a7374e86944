"""The command line as a user meets it: help, printing the config, and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import FAST, REPO, run_subprocess


def test_top_level_help_lists_the_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "train" in out and "compare" in out


def test_train_help_and_cfg_job_run_nothing(cli, tmp_path):
    code, out, _ = cli("train", "--cfg", "job", "topology=784-3000-3000-2000-500-10", "dataset=fashion_mnist")
    assert code == 0 and "784-3000-3000-2000-500-10" in out and "fashion_mnist" in out
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("override,needle", [
    ("topology=784-abc-10", "topology"), ("topology=784", "topology"), ("topology=784--10", "topology"),
    ("topology=784-0-10", "topology"), ("topology=784--3-10", "topology"), ("topology=100-10", "input size"),
    ("topology=784-7", "number of classes"), ("dataset=imagenet", "dataset/imagenet"), ("model=resnet", "model/resnet"),
    ("device=cuda:7", "cuda"), ("optimizer.lr=-1", "optimizer.lr"), ("batch_size=0", "batch_size"),
    ("epochs=0", "epochs"), ("epoch=3", "did you mean epochs"), ("epochs=ten", "epochs"),
    ("hydra.run.dir=/proc/rmtprune", "hydra.run.dir"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, override, needle):
    import torch
    if override.startswith("device") and torch.cuda.is_available():
        pytest.skip("a GPU is present: device=cuda:7 may exist")
    code, out, err = cli("train", *FAST, "epochs=1", override)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rmtprune: error:") and needle in lines[0], err
    assert "Traceback" not in out + err


def test_a_bad_value_in_a_sweep_fails_before_any_job_runs(cli, tmp_path):
    code, _, err = cli("train", "-m", *FAST, "epochs=1", "seed=0,1", "topology=784-32-10,784-x-10",
                       "hydra.sweep.dir=sweep")
    assert code == 2 and "784-x-10" in err
    assert not (tmp_path / "sweep").exists()


def test_unknown_command(cli):
    code, _, err = cli("fly")
    assert code == 2 and "unknown command" in err


def test_missing_offline_data_is_a_clear_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RMTPRUNE_OFFLINE_DATA", str(tmp_path / "nowhere"))
    code, _, err = cli("train", "dataset=mnist", "epochs=1", "progress=none", "hydra.run.dir=r")
    assert code == 2 and "RMTPRUNE_OFFLINE_DATA" in err and "Traceback" not in err


def test_console_script_from_another_directory(tmp_path):
    """The installed `rmtprune` finds its configs (package data) when run from anywhere."""
    exe = Path(sys.executable).parent / "rmtprune"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "rmtprune"]
    res = run_subprocess(cmd + ["train", *FAST, "epochs=1", "hydra.run.dir=elsewhere"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "elsewhere" / "summary.json").exists()


def test_plain_pip_install_into_a_fresh_virtualenv(tmp_path):
    """`pip install .` (not editable) ships the configs: `rmtprune train --cfg job` works from elsewhere."""
    venv = tmp_path / "venv"
    # no pip of its own: the base interpreter's pip and setuptools build the wheel, offline
    made = run_subprocess([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    pip = run_subprocess([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", str(REPO)], cwd=tmp_path, timeout=600)
    assert pip.returncode == 0, pip.stderr
    work = tmp_path / "work"
    work.mkdir()
    res = run_subprocess([str(venv / "bin" / "rmtprune"), "train", "--cfg", "job", "dataset=synthetic"], cwd=work,
                         env={"PYTHONPATH": ""})
    assert res.returncode == 0, res.stderr
    assert "name: synthetic" in res.stdout
    where = run_subprocess([str(venv / "bin" / "python"), "-c", "import rmtprune.conf, os; print(rmtprune.conf.__file__)"],
                           cwd=work, env={"PYTHONPATH": ""})
    assert str(venv) in where.stdout, where.stdout
    shipped = Path(where.stdout.strip()).parent
    assert (shipped.parent / "integrations" / "lightning.py").exists()
    for rel in ("config.yaml", "prune.yaml", "dataset/mnist.yaml", "dataset/cifar10.yaml", "model/custom.yaml",
                "experiment/fashion_cnn.yaml",
                "hydra/launcher/local_parallel.yaml", "hydra/launcher/slurm.yaml"):
        assert (shipped / rel).exists(), rel


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
    from rmtprune.cli import threads_per_job

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert threads_per_job({"_target_": joblib, "n_jobs": 2}, 8) == 4
    assert threads_per_job({"_target_": joblib, "n_jobs": -1}, 8) == 1
    assert threads_per_job({"_target_": joblib, "n_jobs": 16}, 8) == 1
    assert threads_per_job({"_target_": "x.SubmititLauncher", "cpus_per_task": 6}, 8) == 6
    assert threads_per_job({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8) is None
