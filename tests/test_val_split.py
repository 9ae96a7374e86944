"""The validation split (``dataset.val_size``): held out of training, the same for every arm and seed,
evaluated every epoch, and the only thing a "best" is chosen on."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY, needs_real_data
from omegaconf import OmegaConf

from rmtprune.config.build import data_settings
from rmtprune.data import load_data, split_validation
from rmtprune.errors import UserError

CPU = torch.device("cpu")


def synthetic(**over):
    from rmtprune.config.schema import DatasetConfig

    base = OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                           {"name": "synthetic", "train_size": 300, "test_size": 50, "val_size": 80})
    return OmegaConf.merge(base, over)


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


def test_split_is_disjoint_complete_and_fixed_by_val_seed_alone():
    torch.manual_seed(0)
    train, val = split_validation(1000, 150, 7)
    torch.manual_seed(123)  # the run's seed: must not matter
    train2, val2 = split_validation(1000, 150, 7)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(val) == 150 and len(train) == 850
    assert set(train.tolist()).isdisjoint(val.tolist()) and set(train.tolist()) | set(val.tolist()) == set(range(1000))
    assert val.tolist() == sorted(val.tolist()) and train.tolist() == sorted(train.tolist())
    assert not torch.equal(split_validation(1000, 150, 8)[1], val)  # another val_seed, other images
    # a uniform draw, not the first or last N: about half of the held-out images lie in each half
    assert 40 < int((val < 500).sum()) < 110


@pytest.mark.parametrize("size", [0, 1000, 1001])
def test_a_split_of_none_or_all_training_images_is_refused(size):
    with pytest.raises(UserError, match="dataset.val_size"):
        split_validation(1000, size, 0)


def test_validation_images_never_reach_the_training_loader():
    from rmtprune.train.progress import BatchProgress
    from rmtprune.train.step import train_epoch

    data = load_data(data_settings(synthetic()), CPU)
    assert len(data.train_x) == 300 and len(data.val_x) == 80 and len(data.val_y) == 80
    held = rows(data.val_x)
    assert len(held) == 80 and held.isdisjoint(rows(data.train_x))

    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return self.fc(x.flatten(1))

    model = Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with BatchProgress("none") as progress:
        for epoch in (1, 2):
            train_epoch(model, data, opt, torch.Generator().manual_seed(0), 64, 0.0, progress, epoch)
    yielded = torch.cat(seen)
    assert len(yielded) == 2 * 300 and rows(yielded) == rows(data.train_x)  # every training image, no other
    assert rows(yielded).isdisjoint(held)


@pytest.mark.slow
@needs_real_data
def test_the_split_does_not_depend_on_train_size_and_train_size_keeps_the_first_of_the_rest():
    from conftest import REPO

    from rmtprune.config.schema import DatasetConfig

    ds = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(REPO / "rmtprune/conf/dataset/mnist.yaml"),
                         {"test_size": 10, "val_size": 5000, "val_seed": 3})
    full = load_data(data_settings(ds), CPU)
    part = load_data(data_settings(OmegaConf.merge(ds, {"train_size": 1000})), CPU)
    assert torch.equal(full.val_x, part.val_x) and torch.equal(full.val_y, part.val_y)
    assert len(full.train_x) == 55000 and torch.equal(part.train_x, full.train_x[:1000])
    raw = load_data(data_settings(OmegaConf.merge(ds, {"val_size": 0})), CPU)
    train_idx, val_idx = split_validation(60000, 5000, 3)
    assert torch.equal(full.val_x, raw.train_x[val_idx]) and torch.equal(full.train_y, raw.train_y[train_idx])
    assert raw.val_x is None


def test_a_negative_val_size_is_one_error_line(cli):
    code, _, err = cli("train", *TINY, "dataset.val_size=-1", "hydra.run.dir=bad")
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith("rmtprune: error:")
    assert "dataset.val_size=-1" in err


@pytest.mark.slow
@needs_real_data
@pytest.mark.parametrize("over, needle", [(["dataset.val_size=60000"], "dataset.val_size=60000"),
                                          (["dataset.val_size=100", "dataset.train_size=59901"], "val_size=100")])
def test_a_split_too_large_for_the_training_set_is_one_error_line(cli, over, needle):
    code, _, err = cli("train", *TINY, "dataset=mnist", "dataset.test_size=10", *over, "hydra.run.dir=bad")
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith("rmtprune: error:")
    assert needle in err


def test_identity_without_a_split_ignores_val_seed_and_is_that_of_older_runs():
    from rmtprune.config.identity import config_key

    old = {"seed": 0, "dataset": {"name": "mnist", "train_size": None}, "pruning": {"name": "none"}}
    new = {**old, "dataset": {**old["dataset"], "val_size": 0, "val_seed": 0}}
    assert config_key(new) == config_key(old)
    assert config_key({**old, "dataset": {**old["dataset"], "val_size": 0, "val_seed": 9}}) == config_key(old)
    split = {**old, "dataset": {**old["dataset"], "val_size": 100, "val_seed": 0}}
    assert config_key(split) != config_key(old)
    assert config_key({**old, "dataset": {**old["dataset"], "val_size": 100, "val_seed": 1}}) != config_key(split)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, table: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)


@pytest.fixture(scope="module")
def val_sweep(tmp_path_factory):
    """2 seeds of pruning=none with a validation split of 100 images, 3 epochs."""
    from rmtprune.cli import main

    folder = tmp_path_factory.mktemp("valsweep")
    assert main(["train", "-m", *TINY, "epochs=3", "dataset.val_size=100", "seed=0,1",
                 f"hydra.sweep.dir={folder}/multirun", f"output_root={folder}"]) == 0
    return folder / "multirun"


@pytest.mark.slow
def test_val_columns_are_written_every_epoch(val_sweep):
    for summary_path in sorted(val_sweep.glob("*/summary.json")):
        table = read_rows(summary_path.parent / "metrics.csv")
        assert [int(r["epoch"]) for r in table] == [1, 2, 3]
        for r in table:
            assert 0.0 <= float(r["val_acc"]) <= 1.0 and 0.0 < float(r["val_loss"]) < 10.0
        summary = json.loads(summary_path.read_text())
        assert summary["best_on"] == "val" and summary["final_val_acc"] == float(table[-1]["val_acc"])


def test_the_summary_best_is_chosen_on_validation():
    from rmtprune.runs.folder import summarise

    metrics = [{"epoch": e, "train_acc": 0.5, "test_loss": 1.0, "n_params_after": 10, "test_acc": t, "val_acc": v,
                "val_loss": 1.0} for e, t, v in ((1, 0.9, 0.2), (2, 0.5, 0.8), (3, 0.6, 0.3))]
    out = summarise({"n_params_initial": 10, "config": {}}, metrics, 1.0)
    assert (out["best_epoch"], out["best_test_acc"], out["best_val_acc"], out["best_on"]) == (2, 0.5, 0.8, "val")
    without = [{**r, "val_acc": math.nan, "val_loss": math.nan} for r in metrics]
    out = summarise({"n_params_initial": 10, "config": {}}, without, 1.0)
    assert (out["best_epoch"], out["best_on"]) == (1, "test") and "final_val_acc" not in out


@pytest.mark.slow
def test_compare_chooses_the_best_epoch_on_validation_and_reports_val_columns(val_sweep, cli, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(val_sweep, runs)
    # make the test set's best epoch (1) differ from validation's (2): compare must report epoch 2's test value
    for i, metrics in enumerate(sorted(runs.glob("*/metrics.csv"))):
        table = read_rows(metrics)
        for r, test, val in zip(table, (0.9, 0.5 + i / 100, 0.6), (0.2, 0.8, 0.3 + i / 100)):
            r["test_acc"], r["val_acc"] = repr(test), repr(val)
        write_rows(metrics, table)
    code, _, err = cli("compare", str(runs), "--no-plots", "--format", "csv", "--out", "cmp")
    assert code == 0, err
    row = pd.read_csv(tmp_path / "cmp" / "comparison.csv").set_index("arm").loc["none"]
    tables = [read_rows(p) for p in runs.glob("*/metrics.csv")]
    at_best_val = [float(max(t, key=lambda r: float(r["val_acc"]))["test_acc"]) for t in tables]
    assert row["best_on"] == "val" and row["best_mean"] == pytest.approx(sum(at_best_val) / 2)
    assert row["best_max"] < 0.9  # never the test set's own best
    assert row["val_final_mean"] == pytest.approx(sum(float(t[-1]["val_acc"]) for t in tables) / 2)
    assert row["final_mean"] == pytest.approx(0.6)
    curves = pd.read_csv(tmp_path / "cmp" / "curves.csv")
    assert {"val_acc_mean", "val_loss_mean"} <= set(curves.columns)


def test_frontier_carries_the_final_validation_accuracy():
    from rmtprune.report.compare import frontier
    from rmtprune.runs.walk import Run

    def run(seed: int, name: str, val: float) -> Run:
        metrics = pd.DataFrame({"epoch": [1, 2], "test_acc": [0.5, 0.7], "val_acc": [0.4, val]})
        return Run(Path("."), {"n_params_final": 100}, {"seed": seed, "pruning.name": name}, metrics, None, None)

    groups = {"g": {"rmt": [run(0, "rmt", 0.8), run(1, "rmt", 0.6)],
                    "magnitude": [run(0, "magnitude", 0.5), run(1, "magnitude", 0.7)]}}
    table = frontier(groups).set_index("arm")
    assert table.loc["rmt", "val_acc_mean"] == pytest.approx(0.7)
    assert table.loc["rmt", "val_acc_std"] == pytest.approx(math.sqrt(0.02))
    assert table.loc["magnitude", "acc_mean"] == pytest.approx(0.7)
