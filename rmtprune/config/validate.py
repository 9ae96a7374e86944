"""The checks of a composed config that Hydra's schema cannot express; each failure is one ``UserError``
naming the key.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rmtprune.config.build import model_spec
from rmtprune.config.schema import (
    ANNEALS,
    DATASETS,
    LOGGERS,
    MODELS,
    PRECISIONS,
    PRUNING_KEYS,
    PRUNINGS,
    SCHEDULE_KEYS,
    SCHEDULES,
    SEED_RANGE,
)
from rmtprune.errors import UserError
from rmtprune.nn.models import build_custom, check_model_output, parse_topology
from rmtprune.nn.select import eligible_layers, name_patterns, prunable_layers, selected
from rmtprune.prune.params import ParamError, check_params
from rmtprune.prune.registry import pruner_class
from rmtprune.prune.schedules import SpikeCut

if TYPE_CHECKING:  # importing rmtprune (the Python API) must not import the config machinery
    from omegaconf import DictConfig


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{key}={value!r} is not known; accepted: {', '.join(allowed)}")


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    finite = math.isfinite(value)
    if not (finite and (value >= 0 if allow_zero else value > 0)):
        raise UserError(f"{key}={value} must be {'non-negative' if allow_zero else 'positive'}"
                        f"{'' if finite else ' and finite'}")


def validate(cfg: DictConfig) -> None:
    """Check the values the schema's types cannot; raise UserError naming the setting."""
    ds = cfg.dataset
    _choice("dataset", ds.name, DATASETS)
    _choice("model", cfg.model.name, MODELS)
    _choice("schedule", cfg.schedule.name, SCHEDULES)
    _choice("progress", cfg.progress, ("auto", "rich", "plain", "none"))
    _choice("precision", cfg.precision, PRECISIONS)
    _choice("logger", cfg.logger, LOGGERS)
    _positive("epochs", cfg.epochs)
    if not SEED_RANGE[0] <= int(cfg.seed) <= SEED_RANGE[1]:
        raise UserError(f"seed={cfg.seed} is outside torch's seed range [-2**63, 2**64 - 1]")
    if cfg.get("threads") is not None and int(cfg.threads) < 1:
        raise UserError(f"threads={cfg.threads} must be a positive number of torch threads per job (or null: "
                        f"torch's default, or the cores divided among the parallel jobs)")
    _positive("batch_size", cfg.batch_size)
    _positive("eval_batch_size", cfg.eval_batch_size)
    _positive("optimizer.lr", cfg.optimizer.lr)
    _positive("optimizer.lr_decay", cfg.optimizer.lr_decay)
    _positive("optimizer.l1", cfg.optimizer.l1, allow_zero=True)
    _positive("optimizer.l2", cfg.optimizer.l2, allow_zero=True)
    if not 0 <= cfg.optimizer.momentum < 1:
        raise UserError(f"optimizer.momentum={cfg.optimizer.momentum} must be in [0, 1)")
    _choice("optimizer.anneal", cfg.optimizer.anneal, ANNEALS)
    if cfg.optimizer.anneal != "none" and not 1 <= cfg.optimizer.anneal_epochs <= cfg.epochs:
        raise UserError(f"optimizer.anneal_epochs={cfg.optimizer.anneal_epochs} must be in [1, epochs={cfg.epochs}]: "
                        f"the anneal covers the last anneal_epochs epochs of the run")
    if ds.val_size < 0:
        raise UserError(f"dataset.val_size={ds.val_size} must be 0 (no validation split) or a positive number of "
                        f"training images to hold out")
    for key in ("train_size", "test_size"):
        if ds[key] is not None:
            _positive(f"dataset.{key}", ds[key])
    if cfg.model.name == "mlp":
        widths = parse_topology(cfg.topology)
        n_in = 1
        for d in ds.input_shape:
            n_in *= int(d)
        if widths[0] != n_in:
            raise UserError(
                f"topology={cfg.topology}: first width {widths[0]} must equal the input size of "
                f"dataset={ds.name}, {n_in}"
            )
        if widths[-1] != ds.num_classes:
            raise UserError(
                f"topology={cfg.topology}: last width {widths[-1]} must equal the number of classes "
                f"of dataset={ds.name}, {ds.num_classes}"
            )
    if cfg.pruning.name == "neuron" and cfg.model.name != "mlp":
        raise UserError(f"pruning=neuron removes units of a chain of Linear layers: it supports model=mlp, not "
                        f"model={cfg.model.name}; use pruning=lowrank or pruning=magnitude there")
    if cfg.model.name == "cnn":
        m = cfg.model
        if not m.channels or any(c <= 0 for c in m.channels):
            raise UserError(f"model.channels={list(m.channels)} must be positive widths")
        _positive("model.kernel_size", m.kernel_size)
        _positive("model.hidden", m.hidden)
        for key in ("conv_dropout", "fc_dropout"):
            if not 0 <= m[key] < 1:
                raise UserError(f"model.{key}={m[key]} must be in [0, 1)")
        from rmtprune.nn.models import cnn_feature_shape

        try:
            cnn_feature_shape(list(ds.input_shape), list(m.channels), int(m.kernel_size), list(m.pool_after))
        except ValueError as exc:
            raise UserError(f"model=cnn with model.channels={list(m.channels)}, model.kernel_size={m.kernel_size}, "
                            f"model.pool_after={list(m.pool_after)} on dataset={ds.name}: {exc}") from None
    if cfg.model.name == "custom":
        if OmegaConf.is_missing(cfg.model, "_target_"):
            raise UserError("model=custom needs model._target_=your.module.Class (an importable nn.Module "
                            "subclass or a function that returns one)")
        check_custom_model(cfg)
    if cfg.logger != "csv":
        pass

        check_logger(cfg.logger)
    validate_pruning(cfg.pruning)
    sc = cfg.schedule
    if sc.name == "linear":
        _positive("schedule.horizon", sc.horizon)
    if sc.name == "step":
        _positive("schedule.at", sc.at)
    if sc.name == "exponential" and not 0 <= sc.rate <= 1:
        raise UserError(f"schedule.rate={sc.rate} must be in [0, 1]")
    if sc.name == "constant" and not 0 <= sc.value <= 1:
        raise UserError(f"schedule.value={sc.value} must be in [0, 1]")
    if sc.name == "spikes":
        try:
            SpikeCut(sc.patience)
        except ValueError as exc:
            raise UserError(f"schedule.patience={sc.patience}: {exc}") from None
    _device_ok(cfg.device)


def validate_pruning(pr: DictConfig) -> None:
    """Check the keys the chosen pruning option uses (its class's ``config_keys``) against the valid values its
    class declares (``_parameter_constraints``, what its constructor checks), and what only a config can get
    wrong (how the target is given); raise UserError naming the key."""
    _choice("pruning", pr.name, PRUNINGS)
    cls = pruner_class(pr.name)
    used = cls.config_keys
    if "target_params" in used and (pr.target_params is None) == (pr.target_from is None):
        raise UserError(f"pruning={pr.name} needs exactly one of pruning.target_params=N (the final parameter "
                        f"count) or pruning.target_from=RUN_OR_SWEEP_FOLDER (match that run's final count)")
    values = {k: pr[k] for k in used if k != "name" and not (k == "target_params" and pr[k] is None)}
    try:
        check_params(cls, **values)
    except ParamError as exc:
        key, value = f"pruning.{exc.key}", "null" if exc.value is None else exc.value
        raise UserError(f"{key}={value!r} is not known; accepted: {', '.join(exc.choices)}" if exc.choices else
                        f"{key}={value} must be {exc.text}") from None
    if "every" in used and pr.stop_epoch is not None and pr.stop_epoch < pr.start_epoch:
        raise UserError(f"pruning.stop_epoch={pr.stop_epoch} is before pruning.start_epoch={pr.start_epoch}: "
                        f"no event would happen; use null for no end")
    if "target_params" in used:
        if pr.target_trajectory is not None:
            raise UserError("pruning.target_trajectory is filled in from pruning.target_from with "
                            "pruning.match=trajectory; leave it null")
        if pr.match == "trajectory" and pr.target_from is None:
            raise UserError(f"pruning.match=trajectory follows the counts of the run pruning.target_from names; "
                            f"give pruning.target_from=RUN_OR_SWEEP_FOLDER instead of pruning.target_params")
        if pr.match == "trajectory" and pr.target_epoch is not None:
            raise UserError(f"pruning.target_epoch={pr.target_epoch} with pruning.match=trajectory: the matched run's "
                            f"counts set when each count is reached; leave pruning.target_epoch null")


_MODEL_KEY = re.compile(r"^model\.([A-Za-z_][A-Za-z0-9_]*)(\.[^=]*)?=")


def custom_model_overrides(args: list[str]) -> list[str]:
    """Let ``model=custom`` take constructor arguments without Hydra's ``+``: with ``model=custom``
    among the overrides, ``model.K=V`` becomes ``+model.K=V`` for every K but ``_target_`` and ``name``
    (the keys of the schema). Other arguments, and any override when model=custom is not chosen on the
    command line, are returned unchanged, so a typo such as ``model.hiden=3`` with ``model=mlp`` stays an
    error.

    >>> custom_model_overrides(["model=custom", "model._target_=a.Net", "model.hidden=300", "epochs=2"])
    ['model=custom', 'model._target_=a.Net', '+model.hidden=300', 'epochs=2']
    """
    if "model=custom" not in args:
        return list(args)
    out = []
    for a in args:
        match = _MODEL_KEY.match(a)
        out.append("+" + a if match and match.group(1) not in ("_target_", "name") else a)
    return out


def unused_key_error(key: str, option: str, group: str = "pruning") -> str:
    """The message for ``group.key`` given on the command line with an option that does not use it."""
    table = PRUNING_KEYS if group == "pruning" else SCHEDULE_KEYS
    used = table[option]
    owners = [name for name, keys in table.items() if key in keys]
    close = difflib.get_close_matches(key, used, n=1)
    hint = f"did you mean {group}.{close[0]}? " if close else ""
    where = f"it is a key of {group}={'/'.join(owners)}; " if owners else ""
    return (f"{group}.{key} is not used by {group}={option}: {hint}{where}"
            f"{group}={option} takes {', '.join(k for k in used if k != 'name') or 'no keys'}")


def _device_ok(device: str) -> None:
    if not re.match(r"^(auto|cpu|cuda(:[0-9]+)?)$", str(device)):
        raise UserError(f"device={device!r} is not known; accepted: auto, cpu, cuda, cuda:N")


# logger name -> (the import that must work, the pip command that provides it)
PACKAGES = {"tensorboard": ("tensorboard", 'pip install tensorboard  (or pip install -e ".[tensorboard]" in a checkout)'),
            "mlflow": ("mlflow", 'pip install mlflow-skinny  (or pip install -e ".[mlflow]" in a checkout)')}


def check_logger(name: str) -> None:
    """Raise UserError naming ``logger=<name>`` and the pip command when its package is not installed."""
    if name not in PACKAGES:
        return
    module, command = PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"logger={name} needs the {module} package, which is not installed: {command}; "
                        f"or use logger=csv")


def model_warnings(model: nn.Module, cfg: DictConfig) -> list[str]:
    """What a run should say about its model before training (one line each; the run goes on):

    * a pruning option that prunes (``pruning.min_size`` is one of its keys), on a model with no eligible
      layer (:func:`eligible_layers`): nothing will be pruned; the events still apply the lr factor and
      momentum policy, so the run is a ``pruning=control`` arm in all but name;
    * a model whose last registered Linear / Conv2d (the one pruning treats as the output layer:
      ``include_output_layer``, ``output_min_rank``) is not the last to run in the forward pass.
    """

    warnings: list[str] = []
    pr = cfg.pruning
    used = PRUNING_KEYS.get(str(pr.name), ())
    include, exclude = name_patterns("pruning.include", pr.get("include")), name_patterns("pruning.exclude",
                                                                                           pr.get("exclude"))
    if "min_size" in used and not eligible_layers(model, int(pr.min_size), bool(pr.include_output_layer),
                                                  include, exclude):
        warnings.append(
            f"pruning={pr.name}: no layer of model={cfg.model.name} is eligible (a Linear / Conv2d with at least "
            f"pruning.min_size={pr.min_size} weights and 10 singular values"
            f"{'' if pr.include_output_layer else ', the output layer excluded'}"
            f"{'' if include is None and not exclude else ', matching pruning.include and not pruning.exclude'}): "
            f"nothing will be pruned, and the run is a normal arm with the lr calendar of pruning=control; lower "
            f"pruning.min_size to prune")
    names = [n for n, _ in prunable_layers(model)]
    for key, patterns in (("include", include), ("exclude", exclude)):
        unmatched = [p for p in patterns or () if key in used and not any(selected(n, (p,), None) for n in names)]
        warnings += [f"pruning.{key}: the pattern {p!r} matches no Linear / Conv2d of model={cfg.model.name} (its "
                     f"layers: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})" for p in unmatched]
    layers = prunable_layers(model)
    if layers:
        ran = check_model_output(model, _input_shape(cfg), int(cfg.dataset.num_classes),
                                 f"model={cfg.model.name}")
        if ran and ran[-1] != layers[-1][0]:
            warnings.append(
                f"model={cfg.model.name}: pruning treats {layers[-1][0]} (the last Linear / Conv2d registered) as "
                f"the output layer, but {ran[-1]} runs last; register the layers in forward order so that "
                f"pruning.include_output_layer and pruning.output_min_rank apply to the real output layer")
    return warnings


def _input_shape(cfg: DictConfig) -> list[int]:
    return [int(d) for d in cfg.dataset.input_shape]


def check_custom_model(cfg: DictConfig) -> None:
    """The checks of ``model=custom`` before a run: the target imports, accepts its arguments, builds an
    nn.Module, and gives one logit per class of the data set (one forward pass of 2 zero inputs). The
    global RNG is left as it was. Raises UserError (one line, naming the setting) otherwise."""
    with torch.random.fork_rng(devices=[]):
        spec = model_spec(cfg)
        model = build_custom(spec["target"], spec["kwargs"])
    check_model_output(model, list(cfg.dataset.input_shape), int(cfg.dataset.num_classes),
                       f"model._target_={spec['target']}")
