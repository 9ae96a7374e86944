"""The config tree: every group composes onto the schema; topology parsing; value checks."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from rmtprune.config import parse_topology, register_configs, validate
from rmtprune.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()


def groups():
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir()):
        for option in sorted(folder.glob("*.yaml")):
            yield folder.name, option.stem


def _compose(*overrides, name="config"):
    with initialize_config_module("rmtprune.conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.mark.parametrize("group,option", list(groups()))
def test_every_group_option_composes_and_validates(group, option):
    cfg = _compose(f"{group}={option}" if group != "experiment" else f"+experiment={option}")
    if group == "dataset":
        assert cfg.dataset.name == option
    elif group in ("model", "pruning", "schedule"):
        assert cfg[group].name == option
    validate(cfg)


def test_default_config_has_the_public_keys():
    cfg = _compose()
    for key in ("topology", "dataset", "model", "epochs", "batch_size", "seed", "device", "optimizer.lr",
                "optimizer.momentum", "pruning", "schedule", "pruning.tolerance"):
        assert OmegaConf.select(cfg, key) is not None, key
    assert cfg.dataset.name == "mnist" and cfg.pruning.name == "none"


def test_typos_and_wrong_types_are_composition_errors():
    with pytest.raises(Exception, match="epoch"):
        _compose("epoch=3")
    with pytest.raises(Exception, match="ten"):
        _compose("epochs=ten")
    with pytest.raises(Exception):
        _compose("pruning.tolrance=0.1")


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
])
def test_value_checks_name_the_setting(override, match):
    cfg = _compose(*override.split())
    with pytest.raises(UserError, match=match):
        validate(cfg)
