"""The one place that turns a composed config into objects: the model spec, the pruner, the schedule, the data
settings, the optimizer and run settings, and all of them together for one run (:class:`Job`). Below this module
(``nn``, ``data``, ``prune``, the training step) no function receives a config node."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rmtprune.config.identity import config_key
from rmtprune.config.schema import SCHEDULE_KEYS
from rmtprune.data import DataSettings
from rmtprune.errors import UserError
from rmtprune.nn.models import CUSTOM_RESERVED, ModelSpec, parse_topology
from rmtprune.prune.base import Pruner
from rmtprune.prune.budget import TargetPruner
from rmtprune.prune.registry import pruner_class
from rmtprune.prune.rmt import RMTPruner

if TYPE_CHECKING:  # importing rmtprune (the Python API) must not import the config machinery
    from omegaconf import DictConfig
from typing import TYPE_CHECKING

from rmtprune.prune.schedules import SCHEDULES, Schedule, SpikeCut


def baseline_from_config(pruning: Any, batch_size: int | None = None,
                         input_shape: list[int] | None = None) -> Pruner:
    """The pruner of a config node of an arm matched to a parameter count (``pruning=magnitude``, ``lowrank``,
    ``neuron``): :func:`make_pruner`, refusing the other arms (ValueError)."""
    if not issubclass(pruner_class(pruning.name), TargetPruner):
        raise ValueError(f"not a baseline pruning: {pruning.name!r}")
    return make_pruner(pruning, batch_size=batch_size, input_shape=input_shape)


def _target_arguments(pruning: Any) -> dict[str, Any]:
    """``target_params`` (and ``target_trajectory``) as ints, and ``target_key``: how error messages name the
    target (``target_from`` when it came from a run, which must have been resolved into ``target_params``:
    :func:`rmtprune.runs.targets.resolve_target`)."""
    name = pruning.name
    if pruning.target_params is None:
        raise UserError(f"pruning={name} needs pruning.target_params=N, or pruning.target_from=RUN resolved into it "
                        f"(rmtprune.runs.targets.resolve_target)")
    target = int(pruning.target_params)
    if pruning.get("target_from") is not None:
        what = "counts after each event" if pruning.get("match") == "trajectory" else f"final count {target:,}"
        key = f"pruning.target_from={pruning.target_from} ({what})"
    else:
        key = f"pruning.target_params={target}"
    trajectory = pruning.get("target_trajectory")
    return {"target_params": target, "target_key": key,
            "target_trajectory": None if trajectory is None else [int(n) for n in trajectory]}


def model_spec(cfg: DictConfig) -> ModelSpec:
    """Plain-data description of the dense model the config asks for."""
    from omegaconf import OmegaConf

    ds = cfg.dataset
    if cfg.model.name == "mlp":
        return {"kind": "mlp", "widths": parse_topology(cfg.topology)}
    if cfg.model.name == "custom":
        data = OmegaConf.to_container(cfg.model, resolve=True)
        assert isinstance(data, dict)
        return {"kind": "custom", "target": str(data["_target_"]),
                "kwargs": {str(k): v for k, v in data.items() if k not in CUSTOM_RESERVED}}
    m = cfg.model
    return {
        "kind": "cnn", "input_shape": list(ds.input_shape), "num_classes": int(ds.num_classes),
        "channels": list(m.channels), "kernel_size": int(m.kernel_size), "pool_after": list(m.pool_after),
        "hidden": int(m.hidden), "conv_dropout": float(m.conv_dropout), "fc_dropout": float(m.fc_dropout),
    }


def split_arguments(pruning: Any, batch_size: int | None, input_shape: list[int] | None) -> dict[str, Any]:
    """``split``, and for ``split=auto`` the ``batch_size`` and ``example_input`` (zeros of one sample of
    ``input_shape``) its cost model compares at, as keyword arguments of a pruner."""
    split = str(pruning.get("split", "always"))
    if split != "auto":
        return {"split": split}
    shape = [int(d) for d in input_shape] if input_shape is not None else None
    return {"split": split, "batch_size": None if batch_size is None else int(batch_size),
            "example_input": None if shape is None else torch.zeros(1, *shape)}


def rmt_pruner_from_config(pruning: Any, schedule: Schedule | SpikeCut | None = None, batch_size: int | None = None,
                           input_shape: list[int] | None = None) -> RMTPruner:
    """The RMTPruner of a ``pruning=rmt`` config node (rmtprune/conf/pruning/rmt.yaml), whatever its ``name``
    (``rmtprune prune`` and ``inspect`` cut with rmt): as :func:`make_pruner`."""
    pruner = _build(RMTPruner, pruning, schedule, batch_size, input_shape)
    assert isinstance(pruner, RMTPruner)
    return pruner


def make_pruner(pruning: Any, schedule: Schedule | SpikeCut | None = None, batch_size: int | None = None,
                input_shape: list[int] | None = None) -> Pruner:
    """The pruner of a config's ``pruning`` node, built through the registry (``rmtprune.prune.registry``):
    the keys its class declares (``config_keys``) are the keyword arguments; ``schedule``: the callable made
    from the schedule group (:func:`make_schedule`), for an arm that ``uses_schedule``; ``batch_size`` and
    ``input_shape`` (one sample): what ``split=auto`` compares costs at. Raises ValueError (an unknown name,
    an argument out of range: :class:`rmtprune.prune.params.ParamError` names it) or UserError (no target)."""
    return _build(pruner_class(pruning.name), pruning, schedule, batch_size, input_shape)


def _build(cls: type[Pruner], pruning: Any, schedule: Schedule | SpikeCut | None, batch_size: int | None,
           input_shape: list[int] | None) -> Pruner:
    config_only = ("name", "split", "target_params", "target_from", "target_trajectory")
    kwargs = {k: pruning[k] for k in cls.config_keys if k not in config_only}
    if "split" in cls.config_keys:
        kwargs.update(split_arguments(pruning, batch_size, input_shape))
    if cls.uses_schedule:
        kwargs["schedule"] = schedule if schedule is not None else "linear"
    if issubclass(cls, TargetPruner):
        kwargs.update(_target_arguments(pruning))
    return cls(**kwargs)


def make_schedule(cfg: DictConfig) -> Schedule | SpikeCut:
    """The schedule named by ``cfg.name`` with its parameters from the config (config.SCHEDULE_KEYS): a
    callable epoch -> keep fraction, or a :class:`SpikeCut`."""
    from functools import partial

    name = cfg.name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}")
    kwargs = {k: cfg[k] for k in SCHEDULE_KEYS[name] if k != "name"}
    return SCHEDULES[name](**kwargs) if isinstance(SCHEDULES[name], type) else partial(SCHEDULES[name], **kwargs)


@dataclass(frozen=True)
class OptimizerSettings:
    """The ``optimizer`` node: SGD with momentum (``train.state.make_optimizer``), the L1 strength of the step,
    the per-epoch lr decay and the final anneal (``prune.calendar.anneal_scale``)."""

    lr: float = 0.02
    momentum: float = 0.9
    l1: float = 5e-6
    l2: float = 5e-6
    lr_decay: float = 1.0
    anneal: str = "none"
    anneal_epochs: int = 3


@dataclass(frozen=True)
class RunSettings:
    """What the run loop needs of a config besides the model, the data and the pruner (keys of rmtprune/conf/
    config.yaml): length and seed, where and how it computes, batch sizes, the optimizer, what it records."""

    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    deterministic: bool = False
    precision: str = "fp32"
    compile: bool = False
    batch_size: int = 128
    eval_batch_size: int = 4096
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    resume: str = "false"
    skip_done: bool = False
    output_root: str = "outputs"
    checkpoint: bool = True
    progress: str = "auto"
    logger: str = "csv"
    magnitude_sweep: bool = True
    magnitude_thresholds: int = 25
    latency: bool = True


@dataclass(frozen=True, eq=False)
class Job:
    """One run's config turned into objects, once (:func:`make_job`): the key, the model spec, the data settings
    and the run settings; its pruner (with its schedule) is made by :meth:`make_pruner`, once per run (pruners keep
    state). ``cfg`` is the resolved config itself, for what records it (summary.json, checkpoint.pt, the loggers,
    the folder's identity checks) and the config-level checks of the built model (``validate.model_warnings``)."""

    cfg: DictConfig
    key: str
    spec: ModelSpec
    data: DataSettings
    run: RunSettings

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config as plain data (summary.json's and checkpoint.pt's ``config``)."""
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(self.cfg, resolve=True)
        assert isinstance(data, dict)
        return data

    def make_pruner(self, input_shape: list[int] | None = None) -> Pruner:
        """A fresh pruner of this run (and its schedule); ``input_shape``: one sample, for ``split=auto``."""
        return make_pruner(self.cfg.pruning, make_schedule(self.cfg.schedule), self.run.batch_size,
                           None if input_shape is None else list(input_shape))


def optimizer_settings(node: Any) -> OptimizerSettings:
    """The :class:`OptimizerSettings` of an ``optimizer`` config node."""
    return OptimizerSettings(lr=float(node.lr), momentum=float(node.momentum), l1=float(node.l1), l2=float(node.l2),
                             lr_decay=float(node.lr_decay), anneal=str(node.anneal),
                             anneal_epochs=int(node.anneal_epochs))


def data_settings(node: Any) -> DataSettings:
    """The :class:`rmtprune.data.DataSettings` of a ``dataset`` config node (interpolations resolved)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    assert isinstance(values, dict)
    return DataSettings.from_dict({str(k): v for k, v in values.items()})


def run_settings(cfg: DictConfig) -> RunSettings:
    """The :class:`RunSettings` of a composed config."""
    return RunSettings(
        epochs=int(cfg.epochs), seed=int(cfg.seed), device=str(cfg.device),
        threads=None if cfg.get("threads") is None else int(cfg.threads),
        deterministic=bool(cfg.get("deterministic", False)), precision=str(cfg.get("precision", "fp32")),
        compile=bool(cfg.get("compile", False)), batch_size=int(cfg.batch_size),
        eval_batch_size=int(cfg.eval_batch_size), optimizer=optimizer_settings(cfg.optimizer),
        resume=str(cfg.resume), skip_done=bool(cfg.skip_done), output_root=str(cfg.output_root),
        checkpoint=bool(cfg.checkpoint), progress=str(cfg.progress), logger=str(cfg.get("logger", "csv")),
        magnitude_sweep=bool(cfg.magnitude_sweep.enabled), magnitude_thresholds=int(cfg.magnitude_sweep.n_thresholds),
        latency=bool(cfg.cost.latency))


def make_job(cfg: DictConfig) -> Job:
    """A validated config whose ``pruning.target_from`` is resolved (``rmtprune.runs.targets.resolve_target``)
    turned into a :class:`Job`: its :func:`~rmtprune.config.identity.config_key` computed once, here."""

    return Job(cfg=cfg, key=config_key(cfg), spec=model_spec(cfg), data=data_settings(cfg.dataset),
               run=run_settings(cfg))
