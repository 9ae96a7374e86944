"""The Python API (``import rmtprune``) on a user's own module in a hand-written loop: no Hydra, no config."""

from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys
from functools import partial

import pytest
import torch
from conftest import REPO
from tests_support.spikes import planted
from torch import nn

import rmtprune
from rmtprune.nn.layers import LowRankConv2d, LowRankLinear
from rmtprune.prune.control import ControlPruner
from rmtprune.prune.lowrank import LowRankPruner


def users_net() -> nn.Sequential:
    """A user's network, not built by rmtprune: conv 16 -> 96 (3x3) on 4x4 inputs, then 384 -> 200 -> 10.
    The conv's (96, 144) matrix holds 5 planted spikes, the first Linear's (200, 384) 6."""
    net = nn.Sequential(nn.Conv2d(16, 96, 3), nn.ReLU(), nn.Flatten(), nn.Linear(96 * 2 * 2, 200), nn.ReLU(),
                        nn.Linear(200, 10))
    with torch.no_grad():
        net[0].weight.copy_(planted(96, 16 * 9, 5, 0.02, seed=1).reshape(96, 16, 3, 3))
        net[3].weight.copy_(planted(200, 96 * 4, 6, 0.02, seed=2))
    return net


@pytest.mark.slow
def test_import_is_light_and_exposes_the_api():
    code = ("import sys, rmtprune; assert 'torch' not in sys.modules; "
            "from rmtprune import RMTPruner, fit_mp, MPFit, prune_model, rebuild_optimizer, PruneEvent, schedules; "
            "heavy = [m for m in ('hydra', 'omegaconf', 'matplotlib', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy; print(sorted(rmtprune.__all__))")
    # no name of the API is reached through a deprecated module path
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {"RMTPruner", "fit_mp", "MPFit", "prune_model", "rebuild_optimizer", "PruneEvent", "schedules"} <= set(
        eval(proc.stdout))
    assert rmtprune.schedules.linear(5, 10) == 0.5
    # each class is found again by the name it declares (pickle, checkpoints and Hydra's _target_ rely on it)
    for name in ("RMTPruner", "PruneEvent", "Pruner", "MPFit"):
        cls = getattr(rmtprune, name)
        assert pickle.loads(pickle.dumps(cls)) is cls, name
    with pytest.raises(AttributeError):
        rmtprune.no_such_name  # noqa: B018


def test_a_hand_written_loop_prunes_a_users_module_to_its_planted_ranks():
    torch.manual_seed(0)
    model = users_net()
    x, y = torch.randn(64, 16, 4, 4), torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    pruner = rmtprune.RMTPruner(schedule="oneshot", min_size=10000, lr_factor=0.5)
    epochs = 3
    pruner.setup(model, epochs)
    events = []
    for epoch in range(1, epochs + 1):
        for i in range(0, 64, 16):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
            optimizer.step()
        if pruner.is_event(epoch):
            event = pruner.step(model, epoch)
            events.append(event)
            optimizer = rmtprune.rebuild_optimizer(optimizer, model, event, momentum=pruner.momentum,
                                                   lr=optimizer.param_groups[0]["lr"] * pruner.lr_factor)
    assert [e.epoch for e in events] == [1, 2]  # never after the last epoch
    first = {r["layer"]: r for r in events[0].records}
    assert events[0].changed and first["0"]["n_spikes"] == 5 and first["3"]["n_spikes"] == 6
    assert isinstance(model[0], LowRankConv2d) and model[0].rank == 5
    assert isinstance(model[3], LowRankLinear) and model[3].rank == 6
    assert first["5"]["action"] == "skip_small"  # 2,000 weights < min_size
    assert set(map(id, events[0].added)) == {id(p) for p in (*model[0].parameters(), *model[3].parameters())}
    # the rebuilt optimizer holds exactly the model's parameters, at lr x lr_factor per event, and trains them
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.5 ** 2)
    before = model[3].first.weight.detach().clone()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert not torch.equal(before, model[3].first.weight)
    assert model(x).shape == (64, 10)
    # the user's checkpoint: the pruned weights load into a fresh dense instance once its layers are split
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    fresh = users_net()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict(ckpt["model"])
    assert rmtprune.factorise_to_match(fresh, ckpt["model"]) == {"0": 5, "3": 6}
    fresh.load_state_dict(ckpt["model"])
    assert torch.equal(fresh(x), model(x))


def test_prune_model_makes_one_cut_in_place():
    model = users_net()
    dense = copy.deepcopy(model)
    event = rmtprune.prune_model(model, keep_fraction=0.0)
    assert isinstance(event, rmtprune.PruneEvent) and event.changed
    assert [r["rank_after"] for r in event.records if r["action"] == "split"] == [5, 6]
    # the split layer is the best rank-6 approximation of the dense weight (Eckart-Young: its top 6 SVD terms)
    u, s, vh = torch.linalg.svd(dense[3].weight.detach().double(), full_matrices=False)
    best = (u[:, :6] * s[:6]) @ vh[:6]
    assert torch.allclose(model[3].weight_matrix().double(), best, atol=1e-5)
    # keep_fraction f keeps the spikes and floor((p - k) f) of the sub-edge values: 6 + floor(194 * 0.5)
    half = rmtprune.prune_model(copy.deepcopy(dense), keep_fraction=0.5, min_size=1000)
    assert {r["layer"]: r["rank_after"] for r in half.records}["3"] == 6 + 97
    with pytest.raises(ValueError, match="keep_fraction"):
        rmtprune.prune_model(model, keep_fraction=1.5)
    with pytest.raises(ValueError, match="schedule"):
        rmtprune.prune_model(model, schedule="linear")


def test_state_dict_round_trip_carries_what_the_next_event_needs():
    model = users_net()
    pruner = rmtprune.RMTPruner(schedule=lambda e: 0.9)  # keeps 90%: no saving, so truncated in place
    event = pruner.step(model, 1)
    assert {r["action"] for r in event.records if r["layer"] in ("0", "3")} == {"truncate"}
    state = pruner.state_dict()
    assert state["ranks"] == {"0": 5 + int(91 * 0.9), "3": 6 + int(194 * 0.9)}
    assert state["known_spikes"] == {"0": 5, "3": 6}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = rmtprune.RMTPruner(schedule=lambda e: 0.0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict() == state
    reference = rmtprune.RMTPruner(schedule=lambda e: 0.0)
    reference.load_state_dict(state)
    a = restored.step(copy.deepcopy(model), 2).records
    b = reference.step(copy.deepcopy(model), 2).records
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]
    # the state matters: the zeros left by the truncation are censored only by a pruner that knows the ranks
    assert {r["layer"]: r["n_censored"] for r in a}["3"] == 200 - state["ranks"]["3"]
    fresh = rmtprune.RMTPruner(schedule=lambda e: 0.0).step(copy.deepcopy(model), 2).records
    assert {r["layer"]: r["n_censored"] for r in fresh}["3"] == 0


def test_schedules_are_callables_of_the_epoch():
    pruner = rmtprune.RMTPruner(schedule=partial(rmtprune.schedules.step, at=3))
    assert [pruner.keep_fraction(e) for e in (1, 2, 3, 4)] == [1.0, 1.0, 0.0, 0.0]
    linear = rmtprune.RMTPruner(schedule="linear", horizon=4)
    assert linear.keep_fraction(1) == 0.75
    unset = rmtprune.RMTPruner()
    with pytest.raises(ValueError, match="horizon"):
        unset.keep_fraction(1)
    unset.setup(nn.Linear(2, 2), 10)
    assert unset.keep_fraction(5) == 0.5  # the horizon defaults to the run length given to setup


def test_defaults_are_those_of_conf_pruning_rmt():
    import inspect

    from omegaconf import OmegaConf

    conf = OmegaConf.load(REPO / "rmtprune" / "conf" / "pruning" / "rmt.yaml")
    params = inspect.signature(rmtprune.RMTPruner).parameters
    for key, value in conf.items():
        if key in params:
            assert params[key].default == value, key
    assert params["schedule"].default == "linear" and params["horizon"].default is None


@pytest.mark.parametrize("argument, value", [
    ("tolerance", 1.5), ("conv_tolerance", -0.1), ("alpha", 0.5), ("beta", 0.0), ("schedule", "cubic"),
    ("horizon", 0), ("every", 0), ("start_epoch", 0), ("stop_epoch", 0), ("min_size", -1), ("min_rank", 0),
    ("include_output_layer", "yes"), ("output_min_rank", 0), ("truncate", "no"), ("lr_factor", 0.0),
    ("momentum", "nesterov"), ("recalibrate_bn", -1), ("include", 3), ("exclude", [None]), ("split", "sometimes"),
    # a bool is not a number, inf never prunes, a string is not an epoch
    ("tolerance", True), ("horizon", float("inf")), ("lr_factor", float("inf")), ("alpha", float("nan")),
    ("stop_epoch", "3"), ("every", True), ("min_rank", 2.0),
])
def test_each_bad_constructor_argument_is_a_value_error_naming_it(argument, value):
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        rmtprune.RMTPruner(**{argument: value})


@pytest.mark.parametrize("pruner", [rmtprune.RMTPruner(), ControlPruner(), LowRankPruner(target_params=1000)],
                         ids=lambda p: type(p).__name__)
def test_load_state_dict_of_a_non_dict_is_a_type_error_naming_it(pruner):
    with pytest.raises(TypeError, match=r"load_state_dict: state must be a dict"):
        pruner.load_state_dict([])


def test_fit_mp_of_a_list_is_a_type_error_naming_w():
    with pytest.raises(TypeError, match=r"\bW must be a torch tensor or a numpy array, got list"):
        rmtprune.fit_mp([[1, 2], [3, 4]])


def test_a_frozen_layer_stays_frozen_and_out_of_the_optimizer_and_the_model_keeps_its_mode():
    """A split of a frozen layer (requires_grad=False) gives frozen factors that the rebuilt optimizer leaves
    out, even when the user's optimizer held the frozen weight; a model in eval mode stays in eval mode."""
    model = users_net()
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.eval()
    event = rmtprune.RMTPruner(schedule="oneshot").step(model, 1)
    assert isinstance(model[0], LowRankConv2d) and isinstance(model[3], LowRankLinear)
    assert not any(p.requires_grad for p in model[0].parameters())
    assert all(p.requires_grad for p in model[3].parameters())
    assert not any(m.training for m in model.modules())
    new = rmtprune.rebuild_optimizer(optimizer, model, event)
    held = {id(p) for g in new.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    assert not held & {id(p) for p in model[0].parameters()}


def test_a_frozen_layer_the_optimizer_held_stays_in_it_to_be_unfrozen_later():
    """Gradual unfreezing: a layer frozen now but held by the user's optimizer, and not cut by the event, stays
    in the rebuilt optimizer, so that unfreezing it later trains it."""
    model = users_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model[5].requires_grad_(False)  # the 10 x 200 output layer: too small to prune (skip_small)
    event = rmtprune.RMTPruner(schedule="oneshot").step(model, 1)
    new = rmtprune.rebuild_optimizer(optimizer, model, event)
    held = {id(p) for g in new.param_groups for p in g["params"]}
    assert {id(p) for p in model[5].parameters()} <= held


@pytest.mark.slow
def test_the_install_advice_works_without_a_release():
    """No rmtprune release exists: the README and the ImportError say pip install -e ".[lightning]" (a checkout)."""
    block = "import sys; sys.modules.update(dict.fromkeys(['lightning', 'lightning.pytorch', 'pytorch_lightning']))"
    res = subprocess.run([sys.executable, "-c", f"{block}; import rmtprune.integrations.lightning"],
                         capture_output=True, text=True, cwd=REPO)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and 'pip install -e ".[lightning]"' in last, res.stderr
    readme = (REPO / "README.md").read_text()
    assert 'pip install -e ".[lightning]"' in readme and "'rmtprune[" not in readme
