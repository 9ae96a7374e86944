"""The config tree: every group composes onto the schema; topology parsing; value checks."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tests_support.configs import compose_config

from rmtprune.config.validate import validate
from rmtprune.errors import UserError
from rmtprune.nn.models import parse_topology

CONF = Path(__file__).resolve().parents[1] / "rmtprune" / "conf"


def groups():
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir()):
        for option in sorted(folder.glob("*.yaml")):
            yield folder.name, option.stem


@pytest.mark.slow
@pytest.mark.parametrize("group,option", list(groups()))
def test_every_group_option_composes_and_validates(group, option):
    extra = {("pruning", "magnitude"): ["pruning.target_params=100000"], ("pruning", "lowrank"): ["pruning.target_params=100000"],
             ("pruning", "neuron"): ["pruning.target_params=100000"],
             ("model", "custom"): ["model._target_=tests_support.nets.Net"],
             ("dataset", "cifar10"): ["topology=3072-100-10"]}.get((group, option), [])
    cfg = compose_config(f"{group}={option}", *extra)
    if group == "dataset":
        assert cfg.dataset.name == option
    elif group in ("model", "pruning", "schedule"):
        assert cfg[group].name == option
    validate(cfg)


@pytest.mark.parametrize("group,option", sorted(dict(groups()).items()))
def test_the_last_option_of_each_group_composes_and_validates(group, option):
    """The fast path's share of the test above."""
    test_every_group_option_composes_and_validates(group, option)


@pytest.mark.parametrize("launcher,key", [("local_parallel", "n_jobs"), ("slurm", "partition")])
def test_launcher_configs_compose(launcher, key):
    cfg = compose_config(f"hydra/launcher={launcher}", hydra=True)
    assert key in cfg.hydra.launcher


@pytest.mark.slow
def test_experiment_presets_set_what_they_reproduce():
    cfg = compose_config("experiment=mnist_fc_3000_3000_2000_500")
    assert cfg.topology == "784-3000-3000-2000-500-10" and cfg.schedule.horizon == 300 and cfg.pruning.name == "rmt"
    cfg = compose_config("experiment=mnist_fc_1000_1000_1000_500", "budget=cpu", "pruning=none")
    assert cfg.pruning.name == "none" and cfg.epochs == 10 and cfg.schedule.horizon == 10
    cfg = compose_config("experiment=mnist_fc_1000_1000_1000_500", "budget=cpu", "epochs=6")
    assert cfg.epochs == 6 and cfg.schedule.horizon == 6 and cfg.topology == "784-1000-1000-1000-500-10"
    cfg = compose_config("experiment=fashion_cnn")
    assert cfg.model.name == "cnn" and cfg.pruning.conv_tolerance == 0.6 and cfg.pruning.tolerance == 0.05
    for preset in (CONF / "experiment").glob("*.yaml"):
        text = preset.read_text()
        assert "Reproduces" in text or "CPU-sized version" in text, preset.name
        assert "budget=cpu" in text or "Not a budget=cpu twin" in text, preset.name
        assert "run time" in text, preset.name


def test_prune_config_composes():
    cfg = compose_config("model_path=x.pt", name="prune")
    assert cfg.pruning.name == "rmt" and cfg.schedule.name == "oneshot" and cfg.finetune_epochs == 0


def test_default_config_has_the_public_keys():
    cfg = compose_config()
    for key in ("topology", "dataset", "model", "epochs", "batch_size", "seed", "device", "optimizer.lr",
                "optimizer.momentum", "pruning", "schedule", "pruning.tolerance"):
        assert OmegaConf.select(cfg, key) is not None, key
    assert cfg.dataset.name == "mnist" and cfg.pruning.name == "rmt" and cfg.schedule.horizon == cfg.epochs


@pytest.mark.slow
def test_typos_and_wrong_types_are_composition_errors():
    with pytest.raises(Exception, match="epoch"):
        compose_config("epoch=3")
    with pytest.raises(Exception, match="ten"):
        compose_config("epochs=ten")
    with pytest.raises(Exception):
        compose_config("pruning.tolrance=0.1")


@pytest.mark.parametrize("text,widths", [("784-10", [784, 10]), ("784-3000-3000-2000-500-10",
                                          [784, 3000, 3000, 2000, 500, 10]), (" 5-4-3 ", [5, 4, 3])])
def test_parse_topology(text, widths):
    assert parse_topology(text) == widths


@pytest.mark.parametrize("bad", ["784-abc-10", "784", "784--10", "784-0-10", "784--5-10", "", "784-10-",
                                 "784-1.5-10", "-784-10"])
def test_bad_topologies_are_user_errors(bad):
    with pytest.raises(UserError, match="topology"):
        parse_topology(bad)


@pytest.mark.parametrize("override,match", [
    ("topology=700-10", "input size"), ("topology=784-11", "number of classes"), ("optimizer.lr=0", "optimizer.lr"),
    ("batch_size=0", "batch_size"), ("epochs=-1", "epochs"), ("device=tpu", "device"),
    ("pruning=rmt pruning.tolerance=2", "tolerance"), ("pruning=rmt pruning.alpha=0.6", "alpha"),
    ("optimizer.momentum=1.0", "momentum"), ("progress=fancy", "progress"),
    ("pruning=rmt pruning.margin=0.5", "pruning.margin"), ("schedule=spikes schedule.patience=0", "schedule.patience"),
])
def test_value_checks_name_the_setting(override, match):
    cfg = compose_config(*override.split())
    with pytest.raises(UserError, match=match):
        validate(cfg)
