"""One interface for the pruning arms: a new rank method is one plan method, the registry builds every arm,
the valid values of a key are declared once (on the constructor) and config validation reads them there."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rmtprune.config.build import make_pruner
from rmtprune.config.schema import PRUNING_KEYS, PRUNINGS, USES_SCHEDULE, PruningConfig
from rmtprune.config.validate import validate_pruning
from rmtprune.errors import UserError
from rmtprune.nn.geometry import count_parameters
from rmtprune.nn.layers import LowRankLinear
from rmtprune.nn.models import MLP
from rmtprune.prune.base import CALENDAR_KEYS, SELECT_KEYS
from rmtprune.prune.lowrank import LowRankPruner
from rmtprune.prune.params import Integer, ParamError
from rmtprune.prune.rank import Layer, Plan, RankPruner
from rmtprune.prune.registry import PRUNERS, pruner_class, register


class TopK(RankPruner):
    """A toy arm: every eligible layer keeps its ``k`` largest singular values."""

    name = "topk"
    config_keys = (*CALENDAR_KEYS, *SELECT_KEYS, "k")
    _parameter_constraints = {"k": Integer(1)}

    def __init__(self, *, k: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k = k

    def plan_ranks(self, layers: list[Layer], context) -> list[Plan]:
        return [Plan(max(layer.floor, min(self.k, layer.rank)), spectrum=layer.spectrum()) for layer in layers]


def planted_mlp(seed: int = 0) -> tuple[MLP, list[np.ndarray]]:
    """A 60-40-30-3 MLP whose two hidden layers have the known singular values 10, 9, ..., 1 (then zeros)."""
    g = torch.Generator().manual_seed(seed)
    model = MLP([60, 40, 30, 3])
    values = []
    for layer in model.layers[:2]:
        out, inp = layer.weight.shape
        u, _ = torch.linalg.qr(torch.randn(out, 10, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(inp, 10, generator=g, dtype=torch.float64))
        s = torch.arange(10, 0, -1, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_((u * s) @ v.T)
        values.append(s.numpy())
    return model, values


@pytest.fixture
def topk_registered():
    register(TopK)
    yield
    PRUNERS.pop("topk")


def test_a_new_rank_arm_is_one_plan_method_registered_and_built_from_its_config(topk_registered):
    model, values = planted_mlp()
    node = OmegaConf.create({"name": "topk", "every": 1, "start_epoch": 1, "stop_epoch": None, "lr_factor": 0.5,
                             "momentum": "keep", "min_size": 1000, "include_output_layer": True, "k": 3})
    pruner = make_pruner(node)
    assert isinstance(pruner, TopK) and pruner.k == 3 and pruner.lr_factor == 0.5
    event = pruner.step(model, epoch=1)
    rows = {row["layer"]: row for row in event.records}
    assert [row["layer"] for row in event.records] == ["layers.0", "layers.1", "layers.2"]  # module order
    # 60 x 40 = 2400 weights: split at rank 3, r (in + out) + bias parameters
    assert rows["layers.0"]["action"] == "split" and (rows["layers.0"]["rank_before"], rows["layers.0"]["rank_after"]) == (40, 3)
    assert rows["layers.0"]["params_after"] == 3 * (60 + 40) + 40
    # 40 x 30 = 1200 weights: a split at rank 3 saves parameters too
    assert rows["layers.1"]["action"] == "split" and rows["layers.1"]["params_after"] == 3 * (40 + 30) + 30
    assert rows["layers.2"]["action"] == "skip_small" and rows["layers.2"]["note"] == "90 weights < min_size 1000"
    assert isinstance(model.layers[0], LowRankLinear) and model.layers[0].rank == 3
    # Eckart-Young: the cut keeps exactly the 3 largest planted singular values
    for layer, s in zip(model.layers[:2], values):
        w = (layer.second.weight.double() @ layer.first.weight.double()).detach()
        got = torch.linalg.svdvals(w).numpy()
        np.testing.assert_allclose(got[:3], s[:3], rtol=1e-5)
        assert got[3] < 1e-4 * s[0]
    np.testing.assert_allclose(event.spectra["layers.0"][:10], values[0], rtol=1e-5)
    assert count_parameters(model) == sum(row["params_after"] for row in event.records)
    # the next event: a split layer's rank is its inner rank; nothing left to cut
    again = pruner.step(model, epoch=2)
    assert [row["action"] for row in again.records] == ["keep", "keep", "skip_small"]


def test_the_registry_refuses_a_taken_name_and_an_unknown_one():
    class Other(TopK):
        name = "rmt"

    with pytest.raises(ValueError, match="pruning=rmt is already"):
        register(Other)
    with pytest.raises(ValueError, match="unknown pruning 'nope'"):
        pruner_class("nope")


def test_the_key_tables_are_read_from_the_classes_and_are_their_arguments():
    assert PRUNINGS == tuple(PRUNERS) == ("none", "control", "rmt", "magnitude", "lowrank", "neuron")
    assert PRUNING_KEYS == {name: cls.config_keys for name, cls in PRUNERS.items()} and USES_SCHEDULE == ("rmt",)
    schema = set(PruningConfig.__dataclass_fields__)
    for name, cls in PRUNERS.items():
        arguments = {p for klass in cls.__mro__ if "__init__" in vars(klass)
                     for p in inspect.signature(klass.__init__).parameters}
        config_only = {"name", "target_from"}  # target_from is resolved into target_params before the build
        assert set(cls.config_keys) - config_only <= arguments, name
        assert set(cls.config_keys) <= schema, name


BAD = [  # (arm, key, value the constructor and the config both refuse)
    ("rmt", "alpha", 0.5), ("rmt", "beta", 0.0), ("rmt", "tolerance", 1.5), ("rmt", "conv_tolerance", -0.1),
    ("rmt", "margin", 0.5), ("rmt", "min_rank", 0), ("rmt", "output_min_rank", 0), ("rmt", "momentum", "zero"),
    ("rmt", "lr_factor", 0.0), ("rmt", "every", 0), ("rmt", "min_size", -1), ("rmt", "recalibrate_bn", -2),
    ("lowrank", "rank_rule", "random"), ("lowrank", "split", "sometimes"), ("magnitude", "scope", "row"),
    ("neuron", "scope", "row"), ("magnitude", "match", "exact"), ("lowrank", "target_epoch", 0),
    ("control", "start_epoch", 0),
]


@pytest.mark.parametrize("arm,key,value", BAD)
def test_a_value_out_of_range_is_refused_by_the_constructor_and_by_config_validation_alike(arm, key, value):
    node = OmegaConf.structured(PruningConfig(name=arm))
    if "target_params" in PRUNING_KEYS[arm]:
        node.target_params = 1000
    validate_pruning(node)  # the defaults pass
    node[key] = value
    with pytest.raises(UserError, match=f"^pruning.{key}=") as info:
        validate_pruning(node)
    assert "\n" not in str(info.value)
    with pytest.raises(ParamError, match=f"^{key} must be ") as built:
        make_pruner(node, batch_size=8, input_shape=[1, 2])
    assert built.value.key == key
    assert (f"accepted: {', '.join(built.value.choices)}" if built.value.choices else built.value.text) in str(info.value)


def test_one_eligibility_rule_with_the_values_an_arm_needs():
    """rmt needs 10 singular values for the MP fit (an 8 x 30 layer is skipped), lowrank none: the same rule."""
    model = MLP([60, 30, 8, 3])
    rmt = make_pruner(OmegaConf.structured(PruningConfig(name="rmt", min_size=100)))
    assert [name for name, _, _ in rmt.eligible(model)] == ["layers.0"]
    low = LowRankPruner(1000, min_size=100)
    assert [name for name, _, _ in low.eligible(model)] == ["layers.0", "layers.1"]
    assert {name: note for name, _, _, note in rmt.candidates(model)} == {
        "layers.0": "", "layers.1": "fewer than 10 singular values", "layers.2": "fewer than 10 singular values"}
    assert {name: note for name, _, _, note in low.candidates(model)} == {
        "layers.0": "", "layers.1": "", "layers.2": "24 weights < min_size 100"}


def test_a_lowrank_event_counts_parameters_from_shapes_and_reaches_what_it_says(monkeypatch):
    """The bisection counts each candidate theta from the layers' shapes: the model is walked once per layer per
    event, not once per step of the bisection; the count it planned is the count the cut leaves."""
    import rmtprune.nn.geometry as geometry

    torch.manual_seed(0)
    model = MLP([100, 80, 60, 10])
    pruner = LowRankPruner(9000, min_size=100, every=1)
    pruner.setup(model, epochs=3)
    calls = {"n": 0}
    real = geometry.count_parameters

    def counting(module):
        calls["n"] += 1
        return real(module)

    monkeypatch.setattr(geometry, "count_parameters", counting)
    event = pruner.step(model, epoch=1)
    assert calls["n"] <= 3 * len(event.records) + 2
    monkeypatch.undo()
    note = next(row["note"] for row in event.records if row["action"] == "split")
    planned = int(note.rsplit("reached ", 1)[1].replace(",", ""))
    assert planned == count_parameters(model) < count_parameters(MLP([100, 80, 60, 10]))
