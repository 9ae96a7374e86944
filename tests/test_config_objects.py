"""The config is turned into objects once, at the top (issue 19, point 4): the layers below the config
(``nn``, ``data``, ``prune``, the training step) never receive a config node, and one ``rmtprune train`` job
validates its config, computes its key and builds its model once."""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import TINY

import rmtprune

PACKAGE = Path(rmtprune.__file__).parent
BELOW_CONFIG = [*sorted((PACKAGE / "nn").glob("*.py")), *sorted((PACKAGE / "prune").glob("*.py")),
                PACKAGE / "data.py", PACKAGE / "train" / "step.py"]
# and what the run loop hands its objects to: the training state and the memory check
OBJECTS_ONLY = [PACKAGE / "train" / "state.py", PACKAGE / "train" / "resources.py"]
# the functions of the run loop and of prune's fine-tuning that train, evaluate and record: objects only too
LOOP_FUNCTIONS = {
    PACKAGE / "train" / "loop.py": ("run_job", "_train", "_epoch", "_event", "recalibrate_after_event", "final_costs"),
    PACKAGE / "train" / "prune_saved.py": ("_finetune",),
}


def config_parameters(path: Path) -> list[str]:
    """``function(parameter)`` of every parameter in ``path`` named ``cfg`` or annotated with a DictConfig."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is None:
                    continue
                note = ast.unparse(arg.annotation) if arg.annotation is not None else ""
                if arg.arg == "cfg" or "DictConfig" in note:
                    found.append(f"{getattr(node, 'name', 'lambda')}({arg.arg}: {note})")
    return found


def test_no_layer_below_the_config_takes_a_config_node():
    assert len(BELOW_CONFIG) > 20  # the walk sees the modules (nn/, prune/, data, the step)
    offenders = {str(p.relative_to(PACKAGE)): config_parameters(p) for p in BELOW_CONFIG + OBJECTS_ONLY}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_run_loop_and_prunes_fine_tuning_take_objects():
    offenders = [f for path, names in LOOP_FUNCTIONS.items() for f in config_parameters(path)
                 if f.split("(")[0] in names]
    defined = {n.name for path in LOOP_FUNCTIONS for n in ast.walk(ast.parse(path.read_text()))
               if isinstance(n, ast.FunctionDef)}
    assert {n for names in LOOP_FUNCTIONS.values() for n in names} <= defined  # the names still exist
    assert offenders == []


def test_the_walk_finds_a_config_parameter(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def a(cfg): pass\ndef b(node: 'DictConfig | None', x: int): pass\ndef c(x: int): pass\n")
    assert config_parameters(sample) == ["a(cfg: )", "b(node: 'DictConfig | None')"]


def test_data_settings_are_plain_values_and_load_the_same_data():
    from omegaconf import OmegaConf

    from rmtprune.config.build import data_settings
    from rmtprune.config.schema import DatasetConfig
    from rmtprune.data import DataSettings, load_data

    node = OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                           {"name": "synthetic", "train_size": 40, "test_size": 10, "val_size": 5})
    ds = data_settings(node)
    assert isinstance(ds, DataSettings) and ds.input_shape == (1, 28, 28) and ds.val_size == 5
    assert not any(OmegaConf.is_config(v) for v in vars(ds).values())
    plain = DataSettings(name="synthetic", train_size=40, test_size=10, val_size=5)
    a, b = load_data(ds, torch.device("cpu")), load_data(plain, torch.device("cpu"))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y) and len(a.train_x) == 40


@pytest.fixture
def calls(monkeypatch):
    """Counts of ``validate``, ``config_key`` and ``build_model`` (on the meta device or not) called by name from
    anywhere in the package (every module's reference to them is wrapped)."""
    import rmtprune.commands.train  # noqa: F401  (every module that refers to them is loaded)
    import rmtprune.train.loop  # noqa: F401
    from rmtprune.config.identity import config_key
    from rmtprune.config.validate import validate
    from rmtprune.nn.models import build_model

    counts: Counter[str] = Counter()

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            device = torch.get_default_device().type
            counts[f"{name} on meta" if name == "build_model" and device == "meta" else name] += 1
            return fn(*args, **kwargs)
        return wrapped

    for name, fn in (("validate", validate), ("config_key", config_key), ("build_model", build_model)):
        for module in [m for n, m in sys.modules.items() if n.startswith("rmtprune") and m is not None]:
            if getattr(module, name, None) is fn:
                monkeypatch.setattr(module, name, counting(name, fn))
    return counts


@pytest.mark.parametrize("pruning", [["pruning=none"], ["pruning=rmt", "pruning.min_size=100"],
                                     ["pruning=lowrank", "pruning.target_params=15000", "pruning.min_size=100"]])
def test_one_train_job_validates_keys_and_builds_its_model_once(cli, tmp_path, calls, pruning):
    code, _, err = cli("train", *TINY, *pruning, "epochs=2", "hydra.run.dir=run")
    assert code == 0, err
    assert (tmp_path / "run" / "model.pt").exists()
    # one model with weights, and one skeleton on the meta device (no memory, no random numbers) that the
    # checks before the job share: the target's and the memory's
    assert dict(calls) == {"validate": 1, "config_key": 1, "build_model": 1, "build_model on meta": 1}


def test_a_resumed_job_also_prepares_once(cli, tmp_path, calls):
    assert cli("train", *TINY, "epochs=1", "hydra.run.dir=base")[0] == 0
    calls.clear()
    code, _, err = cli("train", *TINY, "epochs=2", "resume=base", "hydra.run.dir=more")
    assert code == 0, err
    assert (tmp_path / "base" / "metrics.csv").read_text().count("\n") == 3  # header and the two epochs
    # the model comes from the checkpoint (rebuilt once), not from a fresh build; on the meta device, the checks'
    # skeleton and the checkpoint's own architecture, sized before anything is allocated (_refuse_oversized)
    assert dict(calls) == {"validate": 1, "config_key": 1, "build_model": 1, "build_model on meta": 2}


def test_one_prune_job_validates_once(cli, tmp_path, calls):
    assert cli("train", *TINY, "epochs=1", "hydra.run.dir=base")[0] == 0
    calls.clear()
    code, _, err = cli("prune", "base", "pruning=rmt", "pruning.min_size=100", "progress=none", "cost.latency=false",
                       "hydra.run.dir=cut")
    assert code == 0, err
    assert (tmp_path / "cut" / "model.pt").exists() and calls["validate"] == 1
