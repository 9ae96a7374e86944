"""End-to-end ``rmtprune train`` runs, as a user runs them (in-process for speed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, interrupted_at, needs_real_data

from rmtprune.prune.events import LEDGER_COLUMNS
from rmtprune.runs.folder import METRICS_COLUMNS


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def metrics_without_time(folder: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(folder / "metrics.csv")]


def test_normal_run_writes_every_output(cli, tmp_path):
    code, out, err = cli("train", *FAST, "epochs=3", "hydra.run.dir=run", "magnitude_sweep.enabled=true",
                         "magnitude_sweep.n_thresholds=6")
    assert code == 0, err
    run = tmp_path / "run"
    rows = read_csv(run / "metrics.csv")
    assert list(rows[0]) == METRICS_COLUMNS and [int(r["epoch"]) for r in rows] == [1, 2, 3]
    acc = float(rows[-1]["test_acc"])
    assert 0.6 < acc <= 1.0  # learnable data, accuracy as a fraction, far above chance (0.1)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_test_acc"] == pytest.approx(acc)
    assert summary["n_params_initial"] == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert summary["config"]["topology"] == "784-256-128-10" and summary["seed"] == 0
    assert {"torch", "rmtprune", "python"} <= set(summary["versions"])
    assert summary["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and summary["threads"] == 1
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["format"] == "rmtprune-checkpoint" and "layers.0.weight" in ckpt["state_dict"]
    sweep = read_csv(run / "magnitude_sweep.csv")
    assert len(sweep) == 6 and float(sweep[0]["sparsity"]) == 0.0
    assert float(sweep[0]["test_acc"]) == pytest.approx(acc)
    assert int(sweep[-1]["n_nonzero"]) < int(sweep[0]["n_nonzero"])
    assert (run / ".hydra" / "config.yaml").exists() and not (run / "layers.csv").exists()


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(cli, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert cli("train", *FAST, "device=cpu", "epochs=2", f"seed={seed}", f"hydra.run.dir={name}")[0] == 0
    assert metrics_without_time(tmp_path / "a") == metrics_without_time(tmp_path / "b")
    assert metrics_without_time(tmp_path / "a") != metrics_without_time(tmp_path / "c")


@pytest.mark.slow
def test_rmt_pruning_shrinks_the_model_and_keeps_accuracy(cli, tmp_path):
    args = [*FAST, "topology=784-512-512-10", "epochs=8", "optimizer.lr=0.1"]
    assert cli("train", *args, "hydra.run.dir=normal")[0] == 0
    code, out, err = cli("train", *args, "pruning=rmt", "schedule=linear", "schedule.horizon=8",
                         "hydra.run.dir=pruned")
    assert code == 0, err
    normal = json.loads((tmp_path / "normal" / "summary.json").read_text())
    pruned = json.loads((tmp_path / "pruned" / "summary.json").read_text())
    assert pruned["n_params_final"] < 0.5 * normal["n_params_final"]
    assert pruned["final_test_acc"] > normal["final_test_acc"] - 0.03
    ledger = read_csv(tmp_path / "pruned" / "layers.csv")
    assert list(ledger[0]) == LEDGER_COLUMNS
    assert {"split"} <= {r["action"] for r in ledger}
    rows = read_csv(tmp_path / "pruned" / "metrics.csv")
    assert int(rows[-1]["n_params_after"]) == pruned["n_params_final"] < int(rows[0]["n_params"])
    # the pruned model is rebuilt from model.pt with its factorised layers
    from rmtprune.train.checkpoint import load_file, rebuild_model
    ckpt = load_file(tmp_path / "pruned" / "model.pt")
    model = rebuild_model(ckpt)
    assert sum(p.numel() for p in model.parameters()) == pruned["n_params_final"]
    assert ckpt["ranks"]


@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_metrics(cli, tmp_path, monkeypatch):
    args = [*FAST, "device=cpu", "epochs=4", "pruning=rmt", "schedule.horizon=3"]
    assert cli("train", *args, "hydra.run.dir=full")[0] == 0

    with interrupted_at(monkeypatch, 3):
        code, _, err = cli("train", *args, "output_root=part", "hydra.run.dir=part/first")
        assert code == 130 and "resume=true" in err
        status = json.loads((tmp_path / "part" / "first" / "summary.json").read_text())
        assert status["status"] == "interrupted" and status["epochs_completed"] == 2

    code, _, err = cli("train", *args, "output_root=part", "resume=true", "hydra.run.dir=part/second")
    assert code == 0, err
    assert metrics_without_time(tmp_path / "part" / "first") == metrics_without_time(tmp_path / "full")
    redirect = json.loads((tmp_path / "part" / "second" / "redirect.json").read_text())
    assert Path(redirect["run_dir"]) == (tmp_path / "part" / "first").resolve()
    # a finished run is not retrained
    code, out, err = cli("train", *args, "output_root=part", "resume=true", "hydra.run.dir=part/third")
    assert code == 0 and not (tmp_path / "part" / "third" / "metrics.csv").exists()


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_results(cli, tmp_path):
    code, out, err = cli("train", *FAST, "epochs=3", "optimizer.lr=1e4", "hydra.run.dir=nan")
    assert code == 1
    assert "loss became nan" in err.lower() or "loss became inf" in err.lower()
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "failed" and "optimizer.lr" in summary["error"]
    assert (tmp_path / "nan" / "metrics.csv").exists()


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume_is_a_clear_error(cli, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (folder / "summary.json").write_text(json.dumps({"status": "running"}))
    code, out, err = cli("train", *FAST, "epochs=2", f"resume={folder}", "hydra.run.dir=x")
    assert code == 2 and "not a readable PyTorch file" in err and "Traceback" not in err
    assert err.count("rmtprune: error:") == 1 and "move that folder aside" in err  # and how to get past it


@pytest.mark.slow
def test_resume_true_with_a_corrupt_checkpoint_in_the_newest_unfinished_run_says_what_to_do(cli, tmp_path):
    assert cli("train", *FAST, "epochs=2", "hydra.run.dir=outputs/a")[0] == 0
    run = tmp_path / "outputs" / "a"
    (run / "DONE").unlink()
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:100])
    code, _, err = cli("train", *FAST, "epochs=2", "resume=true")
    assert code == 2 and "not a readable PyTorch file" in err, err
    assert f"the run in {Path('outputs') / 'a'} cannot be continued from it: move that folder aside" in err


@pytest.mark.slow
def test_multirun_sweeps_seeds(cli, tmp_path):
    code, out, err = cli("train", "-m", *FAST, "epochs=1", "seed=0,1", "hydra.sweep.dir=sweep")
    assert code == 0, err
    seeds = sorted(json.loads(p.read_text())["seed"] for p in (tmp_path / "sweep").glob("*/summary.json"))
    assert seeds == [0, 1]


@pytest.mark.slow
def test_skip_done_does_not_rerun_a_finished_job(cli, tmp_path):
    assert cli("train", *FAST, "epochs=1", "hydra.run.dir=outputs/a")[0] == 0
    assert cli("train", *FAST, "epochs=1", "skip_done=true", "hydra.run.dir=outputs/b")[0] == 0
    assert not (tmp_path / "outputs" / "b" / "metrics.csv").exists()
    assert (tmp_path / "outputs" / "b" / "redirect.json").exists()


@pytest.mark.slow
@needs_real_data
def test_real_mnist_subset_trains(cli, tmp_path):
    code, out, err = cli("train", "dataset=mnist", "dataset.train_size=3000", "dataset.test_size=1000",
                         "topology=784-300-10", "epochs=2", "progress=none", "magnitude_sweep.enabled=false",
                         "hydra.run.dir=mnist")
    assert code == 0, err
    summary = json.loads((tmp_path / "mnist" / "summary.json").read_text())
    assert summary["final_test_acc"] > 0.8


@pytest.mark.slow
@needs_real_data
def test_real_fashion_mnist_cnn_trains(cli, tmp_path):
    code, out, err = cli("train", "dataset=fashion_mnist", "dataset.train_size=2048", "dataset.test_size=512",
                         "model=cnn", "model.channels=[16,16,32,32,32]", "model.hidden=64", "epochs=3", "optimizer.lr=0.05",
                         "progress=none", "magnitude_sweep.enabled=false", "pruning=rmt",
                         "pruning.conv_tolerance=0.6", "pruning.min_size=1000", "pruning.start_epoch=2", "schedule=oneshot",
                         "hydra.run.dir=cnn")
    assert code == 0, err
    ledger = read_csv(tmp_path / "cnn" / "layers.csv")
    assert {r["kind"] for r in ledger} == {"conv", "linear"}
    before_cut = read_csv(tmp_path / "cnn" / "metrics.csv")[1]
    assert float(before_cut["test_acc"]) > 0.5  # it learns before the one-shot cut (chance: 0.1)


@pytest.mark.slow
def test_resume_refuses_a_different_config_but_may_add_epochs(cli, tmp_path):
    args = FAST  # pruning=none: no schedule in the identity, so epochs may grow
    assert cli("train", *args, "epochs=1", "hydra.run.dir=base")[0] == 0
    code, _, err = cli("train", *args, "epochs=2", "optimizer.lr=0.05", "resume=base", "hydra.run.dir=x")
    assert code == 2 and "(optimizer.lr differ)" in err
    code, _, err = cli("train", *args, "epochs=2", "resume=base", "hydra.run.dir=y")
    assert code == 0, err
    assert [r["epoch"] for r in read_csv(tmp_path / "base" / "metrics.csv")] == ["1", "2"]


@pytest.mark.slow
def test_a_resumed_run_that_fails_again_points_to_its_own_folder(cli, tmp_path):
    bad = [*FAST, "epochs=2", "optimizer.lr=1e30"]
    code, _, err = cli("train", *bad, "hydra.run.dir=run")
    assert code == 1 and f"metrics so far are in {tmp_path / 'run'}" in err, err
    code, _, err = cli("train", *bad, f"resume={tmp_path / 'run'}", "hydra.run.dir=again")
    assert code == 1 and f"metrics so far are in {tmp_path / 'run'})" in err, err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_resuming_into_a_folder_that_is_no_longer_writable_is_one_line_and_exit_2(cli, tmp_path, monkeypatch):
    assert cli("train", *FAST, "epochs=1", "hydra.run.dir=run")[0] == 0
    run = tmp_path / "run"
    real = Path.write_text

    def read_only(self, *args, **kwargs):  # the tests run as root, for whom chmod does not stop a write
        if self.parent == run:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    code, out, err = cli("train", *FAST, "epochs=2", f"resume={run}", "hydra.run.dir=again")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("rmtprune: error: output folder") and str(run) in lines[0] and "not writable" in lines[0]
