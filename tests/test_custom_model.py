"""``model=custom``: the user's own nn.Module (tests_support.nets) trained, pruned, resumed, compared and
inspected like the built-in networks; each bad input one line and exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, interrupted_at
from tests_support.configs import compose_config

from rmtprune.config.validate import custom_model_overrides

NET = "tests_support.nets.Net"
# synthetic data (MNIST-shaped), a small custom net, pruning that always passes the fit gate
BASE = [a for a in FAST if not a.startswith(("topology=", "pruning="))] + [
    "dataset.train_size=600", "dataset.test_size=200", "batch_size=32", "optimizer.lr=0.05"]
CUSTOM = ["model=custom", f"model._target_={NET}", "model.hidden=32"]
RMT = ["pruning=rmt", "pruning.tolerance=1.0", "pruning.min_size=1000", "schedule=constant", "schedule.value=0.5"]


def train(cli, *args: str):
    """``rmtprune train`` with the overrides as the CLI rewrites them (model.K=V -> +model.K=V)."""
    flags = [a for a in args if a.startswith("-")]
    return cli("train", *flags, *custom_model_overrides([*BASE, *(a for a in args if not a.startswith("-"))]))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def metrics_without_time(folder: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(folder / "metrics.csv")]


def compose(*overrides: str):
    return compose_config(*custom_model_overrides([*BASE, *overrides]))


def test_custom_model_overrides_adds_the_plus_for_constructor_arguments_only():
    args = ["model=custom", "model._target_=a.Net", "model.name=custom", "model.hidden=300", "+model.depth=2",
            "model.act._target_=torch.nn.ReLU", "epochs=2", "pruning.min_size=5"]
    assert custom_model_overrides(args) == [
        "model=custom", "model._target_=a.Net", "model.name=custom", "+model.hidden=300", "+model.depth=2",
        "+model.act._target_=torch.nn.ReLU", "epochs=2", "pruning.min_size=5"]
    assert custom_model_overrides(custom_model_overrides(args)) == custom_model_overrides(args)
    assert custom_model_overrides(["model=mlp", "model.hidden=3"]) == ["model=mlp", "model.hidden=3"]


@pytest.mark.slow
def test_the_command_takes_constructor_arguments_without_a_plus(cli, tmp_path):
    code, _, err = cli("train", *BASE, *CUSTOM, "epochs=1", "hydra.run.dir=x")  # model.hidden=32, no "+"
    assert code == 0, err
    assert json.loads((tmp_path / "x" / "summary.json").read_text())["config"]["model"]["hidden"] == 32


@pytest.mark.slow
def test_the_custom_model_is_built_with_its_arguments_and_its_own_init():
    from tests_support.nets import Net

    from rmtprune.config.build import model_spec
    from rmtprune.nn.models import build_model

    cfg = compose(*CUSTOM, "model.conv_channels=4")
    spec = model_spec(cfg)
    assert spec == {"kind": "custom", "target": NET, "kwargs": {"hidden": 32, "conv_channels": 4}}
    torch.manual_seed(3)
    model = build_model(spec)
    torch.manual_seed(3)
    own = Net(hidden=32, conv_channels=4)
    assert type(model) is Net and model.body[1].out_features == 32 and model.conv.out_channels == 4
    # PyTorch's default init, not the paper's N(0, 1/fan_in) with zero biases
    for a, b in zip(model.state_dict().values(), own.state_dict().values()):
        assert torch.equal(a, b)
    assert model.head.bias.abs().sum() > 0


@pytest.mark.slow
def test_custom_model_trains_prunes_checkpoints_and_is_inspected(cli, tmp_path):
    code, out, err = train(cli, *CUSTOM, *RMT, "epochs=3", "hydra.run.dir=run")
    assert code == 0, err
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model"] == "custom"
    assert summary["config"]["model"] == {"name": "custom", "_target_": NET, "hidden": 32}
    assert summary["n_params_final"] < summary["n_params_initial"]
    assert summary["final_test_acc"] > 0.3  # learns (chance 0.1)
    ledger = read_csv(run / "layers.csv")
    assert {r["layer"] for r in ledger} >= {"body.1", "head"} and "split" in {r["action"] for r in ledger}
    from rmtprune.nn.layers import LowRankLinear
    from rmtprune.train.checkpoint import load_file, rebuild_model

    ckpt = load_file(run / "model.pt")
    assert ckpt["spec"] == {"kind": "custom", "target": NET, "kwargs": {"hidden": 32}}
    model = rebuild_model(ckpt, trusted=ckpt["spec"])  # the caller vouches for the class the file names
    assert isinstance(model.body[1], LowRankLinear) and ckpt["ranks"]["body.1"] == model.body[1].rank
    assert sum(p.numel() for p in model.parameters()) == summary["n_params_final"]
    # inspect fits the weight tensors and builds no class: a file naming a class that is gone inspects too
    ckpt["spec"]["target"] = "gone_pkg.Net"
    torch.save(ckpt, tmp_path / "moved.pt")
    for path in (run, tmp_path / "moved.pt"):
        code, out, err = cli("inspect", str(path), "--format", "csv", "--min-size", "1000", "--out", str(tmp_path))
        assert code == 0, err
        rows = {r["layer"]: r for r in read_csv(tmp_path / "inspect.csv")}
        assert {"conv", "body.3", "head", "total"} <= set(rows) and any(r.startswith("body.1") for r in rows)
    # prune rebuilds it only from the class the user names, and only the class the file records
    code, out, err = cli("prune", str(tmp_path / "moved.pt"), *custom_model_overrides([*BASE, *CUSTOM, *RMT[:-2]]),
                         "hydra.run.dir=p")
    assert code == 2 and err.count("rmtprune: error:") == 1
    assert f"model._target_={NET}: " in err and "moved.pt holds a model of another class ('gone_pkg.Net')" in err


@pytest.mark.slow
def test_interrupted_custom_run_resumes_to_identical_metrics(cli, tmp_path, monkeypatch):
    args = [*CUSTOM, *RMT, "epochs=2"]
    assert train(cli, *args, "hydra.run.dir=full")[0] == 0

    with interrupted_at(monkeypatch, 2):
        code, _, err = train(cli, *args, "output_root=part", "hydra.run.dir=part/first")
        assert code == 130
    ckpt = torch.load(tmp_path / "part" / "first" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["ranks"]  # after the event: resume rebuilds the factorised architecture
    code, _, err = train(cli, *args, "output_root=part", "resume=true", "hydra.run.dir=part/second")
    assert code == 0, err
    assert metrics_without_time(tmp_path / "part" / "first") == metrics_without_time(tmp_path / "full")


@pytest.mark.slow
def test_custom_model_seeds_are_compared_rmt_against_none(cli, tmp_path):
    code, _, err = train(cli, "-m", *CUSTOM, "pruning.tolerance=1.0", "pruning.min_size=1000", "schedule=oneshot",
                         "epochs=2", "seed=0,1", "pruning=none,rmt", "hydra.sweep.dir=sweep")
    assert code == 0, err
    code, out, err = cli("compare", "sweep", "--no-plots", "--format", "csv")
    assert code == 0, err
    table = read_csv(tmp_path / "sweep" / "comparison.csv")
    arms = {r["arm"]: r for r in table}
    assert set(arms) == {"none", "rmt"}
    assert all(r["n_seeds"] == "2" and r["seeds"] == "0 1" for r in table)
    assert float(arms["rmt"]["params_end"]) < float(arms["none"]["params_end"]) == float(arms["none"]["params_start"])
    assert float(arms["rmt"]["n_pairs"]) == 2 and arms["rmt"]["welch_p"] != ""


@pytest.mark.parametrize("args, message", [
    (["model=custom", "model._target_=no_such_pkg.Net"], r"model._target_=no_such_pkg.Net cannot be imported"),
    (["model=custom", "model._target_=tests_support.nets.Nope"], r"cannot be imported"),
    (["model=custom", f"model._target_={NET}", "model.depth=3"], r"rejected its arguments \(model.depth=3\).*depth"),
    # a constructor that takes its arguments and then raises is not said to reject them
    (["model=custom", f"model._target_={NET}", "model.hidden=-1"],
     r"raised RuntimeError when called with \(model.hidden=-1\): .*negative"),
    (["model=custom", f"model._target_={NET}", "model.num_classes=7"],
     r"gives output of shape \(2, 7\).*must give \(2, 10\)"),
    (["model=custom", f"model._target_={NET}", "model.side=20"], r"fails on the data set's input"),
    (["model=custom", "model._target_=tests_support.nets.not_a_module"], r"built a dict, not a torch.nn.Module"),
    (["model=custom"], r"model=custom needs model._target_"),
])
def test_bad_custom_models_are_one_line_and_exit_2(cli, tmp_path, args, message):
    import re

    code, out, err = train(cli, *args, "hydra.run.dir=bad")
    assert code == 2, err
    assert err.count("rmtprune: error:") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "bad").exists()  # refused before any job started


@pytest.mark.slow
def test_a_model_with_no_eligible_layer_trains_as_a_normal_arm_with_a_warning(cli, tmp_path):
    from rmtprune.config.build import model_spec
    from rmtprune.config.validate import model_warnings
    from rmtprune.nn.models import build_model

    cfg = compose(*CUSTOM, *RMT, "pruning.min_size=1000000")
    (warning,) = model_warnings(build_model(model_spec(cfg)), cfg)
    assert "no layer of model=custom is eligible" in warning and "pruning.min_size=1000000" in warning
    assert model_warnings(build_model(model_spec(compose(*CUSTOM, *RMT))), compose(*CUSTOM, *RMT)) == []
    assert model_warnings(build_model(model_spec(compose(*CUSTOM, "pruning=none"))),
                          compose(*CUSTOM, "pruning=none", "pruning.min_size=1000000")) == []
    code, _, err = train(cli, *CUSTOM, *RMT, "pruning.min_size=1000000", "epochs=2", "hydra.run.dir=run")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["n_params_final"] == summary["n_params_initial"]


def test_an_output_layer_registered_first_is_warned_about():
    from rmtprune.config.build import model_spec
    from rmtprune.config.validate import model_warnings
    from rmtprune.nn.models import build_model

    cfg = compose("model=custom", "model._target_=tests_support.nets.HeadFirst", *RMT)
    warnings = model_warnings(build_model(model_spec(cfg)), cfg)
    assert len(warnings) == 1 and "treats body.1" in warnings[0] and "head runs last" in warnings[0]
