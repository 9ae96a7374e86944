"""A file you received runs no code: crafted model.pt / checkpoint.pt / spectra.npz files, read by inspect,
prune, resume and compare, never import or call what they name (a sentinel file stays as it was)."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from conftest import TINY
from tests_support.runs import fake_run

from rmtprune.config.validate import custom_model_overrides
from rmtprune.nn.models import build_model
from rmtprune.report.baseline import MagnitudeBaseline
from rmtprune.runs.walk import load_run
from rmtprune.train.checkpoint import model_payload, save_atomic

NET = "tests_support.nets.Net"
CUSTOM = ["model=custom", f"model._target_={NET}", "model.hidden=32"]


class Payload:
    """Unpickled, it opens ``path`` for writing (creating or truncating it): what a malicious pickle does."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return builtins.open, (self.path, "w")


@pytest.fixture
def sentinel(tmp_path):
    """A file that a crafted file tries to truncate, and one it tries to create; both checked at the end."""
    keep, made = tmp_path / "victim.txt", tmp_path / "created.txt"
    keep.write_text("precious")
    yield keep, made
    assert keep.read_text() == "precious" and not made.exists()


def crafted(tmp_path, name: str, target: str, kwargs: dict) -> str:
    """An rmtprune checkpoint of a real (tiny MLP) model whose recorded custom-model spec is ``target(**kwargs)``."""
    model = build_model({"kind": "mlp", "widths": [784, 32, 10]})
    payload = model_payload(model, {"kind": "custom", "target": target, "kwargs": kwargs}, 10, [1, 28, 28])
    save_atomic(payload | {"epoch": 1, "lr": 0.01, "pruner": {}}, tmp_path / name)
    return str(tmp_path / name)


def specs(keep, made, tmp_path):
    pickle = tmp_path / "payload.pkl"
    torch.save(Payload(str(made)), pickle)
    return {"open.pt": ("builtins.open", {"file": str(keep), "mode": "w"}),
            "load.pt": ("torch.load", {"f": str(pickle), "weights_only": False}),
            "nested.pt": (NET, {"hidden": {"_target_": "builtins.open", "file": str(keep), "mode": "w"}})}


@pytest.mark.slow
def test_inspect_fits_the_weights_of_a_crafted_file_and_runs_nothing(cli, tmp_path, sentinel):
    for name, (target, kwargs) in specs(*sentinel, tmp_path).items():
        code, _, err = cli("inspect", crafted(tmp_path, name, target, kwargs), "--format", "csv")
        assert code == 0, (name, err)
        assert (tmp_path / "inspect.csv").read_text().count("\nlayers.") == 2


@pytest.mark.slow
def test_prune_builds_only_the_class_the_user_names(cli, tmp_path, sentinel):
    for name, (target, kwargs) in specs(*sentinel, tmp_path).items():
        path = crafted(tmp_path, name, target, kwargs)
        code, _, err = cli("prune", path, *TINY, "pruning=rmt", f"hydra.run.dir={name}-a")
        assert code == 2 and err.count("rmtprune: error:") == 1 and "Traceback" not in err, err
        assert f"holds a custom model ({target!r})" in err and f"model._target_={target}" in err
        code, _, err = cli("prune", path, *custom_model_overrides([*TINY, "pruning=rmt", *CUSTOM]),
                           f"hydra.run.dir={name}-b")
        assert code == 2 and err.count("rmtprune: error:") == 1, err
        needle = "was built with model.hidden=" if target == NET else "holds a model of another class"
        assert needle in err and "model." in err.split("rmtprune: error:")[1].split()[0], err


@pytest.mark.slow
def test_a_pickle_in_a_pt_file_or_spectra_npz_runs_nothing(cli, tmp_path, sentinel):
    keep, made = sentinel
    torch.save({"layer.weight": torch.zeros(12, 12), "extra": Payload(str(keep))}, tmp_path / "evil.pt")
    code, _, err = cli("inspect", str(tmp_path / "evil.pt"))
    assert code == 2 and "not a readable PyTorch file" in err
    code, _, err = cli("prune", str(tmp_path / "evil.pt"), *TINY, "pruning=rmt", "hydra.run.dir=p")
    assert code == 2 and "not a readable PyTorch file" in err
    assert cli("train", *TINY, "epochs=1", "hydra.run.dir=run")[0] == 0
    np.savez(tmp_path / "run" / "spectra.npz", **{"e1/layers.0": np.array([Payload(str(made))], dtype=object)})
    code, out, err = cli("compare", "run", "--format", "csv")
    assert "Traceback" not in err and code in (0, 2), err


def custom_normal_run(tmp_path, target: str, kwargs: dict):
    """A finished normal run folder whose model.pt records ``target(**kwargs)`` as its custom model."""
    folder = tmp_path / "normal"
    folder.mkdir(parents=True)
    from tests_support.nets import Net

    torch.manual_seed(0)
    spec = {"kind": "custom", "target": target, "kwargs": kwargs}
    save_atomic(model_payload(Net(hidden=32), spec, 10, [1, 28, 28]), folder / "model.pt")
    dataset = {"name": "synthetic", "input_shape": [1, 28, 28], "num_classes": 10, "train_size": 100,
               "test_size": 100}
    cfg = {"seed": 0, "batch_size": 64, "eval_batch_size": 128, "dataset": dataset, "pruning": {"name": "none"},
           "model": {"name": "custom", "_target_": target}}
    fake_run(folder, cfg, [{"epoch": 1, "train_loss": 1, "train_acc": 0.5, "test_loss": 1, "test_acc": 0.5, "n_params": 1,
                            "n_params_after": 1, "lr": 0.01}])
    return load_run(folder)


def test_compare_rebuilds_a_custom_model_only_with_trust_model_code(tmp_path, sentinel):
    keep, _ = sentinel
    run = custom_normal_run(tmp_path, "builtins.open", {"file": str(keep), "mode": "w"})
    baseline = MagnitudeBaseline()
    assert baseline.value(run, 1000, None) is None
    assert "--trust-model-code" in baseline.warnings[0]["reason"]
    # a class the user trusts is rebuilt, pruned to the count and evaluated
    trusted = custom_normal_run(tmp_path / "ok", NET, {"hidden": 32})
    value = MagnitudeBaseline(trust_model_code=True).value(trusted, 1000, None)
    assert value is not None and value.source == "model.pt" and 0.0 <= value.test_acc <= 1.0


@pytest.mark.slow
def test_a_built_in_spec_larger_than_its_weights_is_refused_before_it_is_built(cli, tmp_path):
    """A crafted model.pt of kind mlp asking for 2 x 10^8 parameters with no weights: refused from the sizes
    alone (built on the meta device), one error line, nothing allocated."""
    from rmtprune.nn.models import build_model
    from rmtprune.train.checkpoint import model_payload, save_atomic

    ckpt = model_payload(build_model({"kind": "mlp", "widths": [784, 8, 10]}), {"kind": "mlp", "widths": [784, 8, 10]},
                         10, [1, 28, 28])
    ckpt["spec"] = {"kind": "mlp", "widths": [784, 10000, 20000, 10]}
    save_atomic(ckpt, tmp_path / "big.pt")
    code, _, err = cli("inspect", "big.pt")
    assert code == 2 and err.count("rmtprune: error:") == 1 and "parameters in its spec" in err, err
