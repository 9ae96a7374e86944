"""``rmtprune prune`` prunes, evaluates and fine-tunes on the data set its run recorded (issue 21, 1)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, needs_real_data

from rmtprune.nn.models import build_model

RUN = ["dataset=fashion_mnist", "dataset.train_size=1000", "dataset.test_size=500", "topology=784-32-10",
       "epochs=1", "pruning=none", "progress=none", "magnitude_sweep.enabled=false", "seed=0"]


@pytest.mark.slow
@needs_real_data
def test_prune_evaluates_a_fashion_mnist_run_on_fashion_mnist(cli, tmp_path):
    assert cli("train", *RUN, "hydra.run.dir=run")[0] == 0
    run = json.loads((tmp_path / "run" / "summary.json").read_text())
    code, out, err = cli("prune", "run", "pruning=rmt", "schedule=oneshot", "progress=none", "hydra.run.dir=p")
    assert code == 0, err
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    # before the cut, the model is the run's final model on the run's own test set: the same accuracy
    assert s["test_acc_before"] == pytest.approx(run["final_test_acc"], abs=1e-9)
    ds = s["config"]["dataset"]
    assert (ds["name"], ds["train_size"], ds["test_size"]) == ("fashion_mnist", 1000, 500)
    assert "trained on" not in out + err
    # dataset= on the command line overrides, with a warning naming both
    code, out, err = cli("prune", "run", "pruning=rmt", "schedule=oneshot", "progress=none", "dataset=mnist",
                         "dataset.test_size=300", "hydra.run.dir=q")
    assert code == 0, err
    assert "dataset mnist (train_size=None, test_size=300) given on the command line: the model was trained on " \
           "fashion_mnist (train_size=1000, test_size=500)" in out + err
    assert json.loads((tmp_path / "q" / "summary.json").read_text())["config"]["dataset"]["name"] == "mnist"


def test_a_plain_state_dict_needs_dataset_and_dataset_keys_refine_a_recorded_one(cli, tmp_path):
    torch.save(build_model({"kind": "mlp", "widths": [784, 32, 10]}).state_dict(), tmp_path / "sd.pt")
    code, _, err = cli("prune", "sd.pt", "pruning=rmt", "topology=784-32-10", "progress=none", "hydra.run.dir=p")
    assert code == 2 and "records no data set" in err and "dataset=NAME" in err and "Traceback" not in err
    # a run on synthetic data, pruned with only dataset.test_size changed: still synthetic, 100 test examples
    assert cli("train", *TINY, "epochs=1", "hydra.run.dir=run")[0] == 0
    code, out, err = cli("prune", "run", "pruning=rmt", "progress=none", "dataset.test_size=100", "hydra.run.dir=q")
    assert code == 0, err
    ds = json.loads((tmp_path / "q" / "summary.json").read_text())["config"]["dataset"]
    assert (ds["name"], ds["train_size"], ds["test_size"]) == ("synthetic", 500, 100)
    assert "the model was trained on synthetic (train_size=500, test_size=200)" in out + err
