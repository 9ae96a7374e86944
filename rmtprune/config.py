"""Structured-config schema (validated by OmegaConf) and the checks Hydra cannot express.

The YAML defaults live in ``rmtprune/conf/``; these dataclasses give every key its type, so a typo
(``epoch=3``) or a wrong type (``epochs=ten``) fails at composition time.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import UserError
from .schedules import MIN_MARGIN, SCHEDULES as _SCHEDULE_FUNCTIONS, SpikeCut, check_margin

DATASETS = ("mnist", "fashion_mnist", "cifar10", "synthetic")
MODELS = ("mlp", "cnn", "custom")
PRUNINGS = ("none", "control", "rmt", "magnitude", "lowrank", "neuron")
SCHEDULES = tuple(_SCHEDULE_FUNCTIONS)  # declared once, in rmtprune/schedules.py
PRECISIONS = ("fp32", "tf32", "bf16")
LOGGERS = ("csv", "tensorboard", "mlflow")
ANNEALS = ("none", "cosine", "linear")  # optimizer.anneal: the final lr anneal (events.anneal_factor)
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts


@dataclass
class SyntheticConfig:
    data_seed: int = 1234
    latent_dim: int = 16
    noise: float = 1.5
    separation: float = 0.9


@dataclass
class DatasetConfig:
    name: str = MISSING
    input_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    num_classes: int = 10
    root: str = "${oc.env:RMTPRUNE_DATA_DIR,'~/.cache/rmtprune'}"
    offline_dir: Optional[str] = "${oc.env:RMTPRUNE_OFFLINE_DATA,null}"
    download: bool = True
    verify_md5: bool = True
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    val_size: int = 0              # training images held out for validation (data.split_validation)
    val_seed: int = 0              # which ones: the same for every arm and run seed
    raw_md5: dict[str, str] = field(default_factory=dict)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class MLPConfig:
    """``model=mlp``: the widths come from the top-level ``topology``."""

    name: str = "mlp"


@dataclass
class CNNConfig:
    """``model=cnn``: the reference CNN (models.CNN); input channels and size come from the data set."""

    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    kernel_size: int = 3
    pool_after: list[int] = field(default_factory=lambda: [3, 5])
    hidden: int = 1000
    conv_dropout: float = 0.35
    fc_dropout: float = 0.5


@dataclass
class CustomModelConfig:
    """``model=custom``: any nn.Module; every key but ``_target_`` and ``name`` goes to its constructor."""

    name: str = "custom"
    _target_: str = MISSING


# One schema per option of the model group: a key of another model (``model.hidden`` for the MLP) is an error.
MODEL_SCHEMAS: dict[str, type] = {"mlp": MLPConfig, "cnn": CNNConfig, "custom": CustomModelConfig}


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    l1: float = 5e-6
    l2: float = 5e-6
    lr_decay: float = 1.0
    anneal: str = "none"           # none | cosine | linear, over the last anneal_epochs epochs, per step
    anneal_epochs: int = 3


@dataclass
class PruningConfig:
    """Every key of every pruning option (rmtprune/conf/pruning/*.yaml); ``PRUNING_KEYS`` says which option uses which.

    One schema for all options, so that a preset may set rmt's keys and still be run with
    ``pruning=none,control,...``: a key the chosen option does not use is left out of the run's
    identity, and refused when given on the command line (cli.precheck).
    """

    name: str = "none"
    # the event calendar: control, rmt, magnitude, lowrank
    every: int = 1
    start_epoch: int = 1
    stop_epoch: Optional[int] = None
    lr_factor: float = 0.96
    momentum: str = "reset"
    # which layers: rmt, magnitude, lowrank
    min_size: int = 10000
    include_output_layer: bool = True
    include: Optional[list[str]] = None  # fnmatch patterns of module names; None: every layer
    exclude: Optional[list[str]] = None
    # BatchNorm statistics recomputed on this many training batches after an event that changed the model
    # (no-op for a model without BatchNorm): rmt, magnitude, lowrank
    recalibrate_bn: int = 20
    # rank floors and the form of a cut: rmt, lowrank
    min_rank: int = 1
    output_min_rank: Optional[int] = None
    truncate: bool = True
    split: str = "always"          # always | auto (rmtprune.cost) | never
    # the Marchenko-Pastur fit: rmt
    alpha: float = 0.25
    beta: float = 0.1
    tolerance: float = 0.05
    conv_tolerance: Optional[float] = None
    margin: Optional[float] = None  # a cut to the spikes (f = 0) keeps ceil(margin k) values; None: k
    # baselines matched to a parameter count: magnitude, lowrank, neuron
    target_params: Optional[int] = None
    target_from: Optional[str] = None
    target_epoch: Optional[int] = None  # the epoch after which the target is reached; None: the last event
    match: str = "final"           # final: target_from's final count | trajectory: its count after every event
    # the count after each event (match=trajectory), filled in from target_from's metrics.csv like target_params
    target_trajectory: Optional[list[int]] = None
    scope: str = "global"          # magnitude, neuron: global | layer
    rank_rule: str = "energy"      # lowrank: energy | uniform


_CALENDAR = ("name", "every", "start_epoch", "stop_epoch", "lr_factor", "momentum")
_TARGET = ("target_params", "target_from", "target_epoch", "match", "target_trajectory")
_LAYERS = ("include", "exclude", "recalibrate_bn")
PRUNING_KEYS: dict[str, tuple[str, ...]] = {
    "none": ("name",),
    "control": _CALENDAR,
    "rmt": (*_CALENDAR, "min_size", "include_output_layer", "min_rank", "output_min_rank", "truncate",
            "alpha", "beta", "tolerance", "conv_tolerance", "margin", *_LAYERS, "split"),
    "magnitude": (*_CALENDAR, "min_size", "include_output_layer", *_TARGET, "scope", *_LAYERS),
    "lowrank": (*_CALENDAR, "min_size", "include_output_layer", "min_rank", "output_min_rank", "truncate",
                *_TARGET, "rank_rule", *_LAYERS, "split"),
    "neuron": (*_CALENDAR, "min_size", *_TARGET, "scope", *_LAYERS),
}
# Only rmt's keep fraction comes from the schedule group; the baselines follow a cubic schedule of their own.
USES_SCHEDULE = ("rmt",)


@dataclass
class ScheduleConfig:
    """Every key of every schedule option; ``SCHEDULE_KEYS`` says which option uses which."""

    name: str = "linear"
    horizon: float = 300.0
    at: int = 1
    rate: float = 0.9
    value: float = 0.5
    patience: int = SpikeCut.patience


SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("name", "horizon"), "step": ("name", "at"), "oneshot": ("name",),
    "exponential": ("name", "rate"), "constant": ("name", "value"), "spikes": ("name", "patience"),
}


@dataclass
class MagnitudeConfig:
    enabled: bool = True
    n_thresholds: int = 25


@dataclass
class CostConfig:
    """What is measured of the final model after training (rmtprune.costs); never part of a run's identity."""

    latency: bool = True


@dataclass
class RunConfig:
    topology: str = "784-1000-1000-500-10"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: Any = MISSING  # one of MODEL_SCHEMAS, chosen by the model group
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 4096
    seed: int = 0
    device: str = "auto"
    resume: Any = False
    skip_done: bool = False
    progress: str = "auto"
    output_root: str = "outputs"
    checkpoint: bool = True
    magnitude_sweep: MagnitudeConfig = field(default_factory=MagnitudeConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    threads: Optional[int] = None
    deterministic: bool = False
    precision: str = "fp32"
    compile: bool = False
    logger: str = "csv"


@dataclass
class PruneCommandConfig(RunConfig):
    """``rmtprune prune``: one pruning event on a saved model, then optional fine-tuning."""

    model_path: str = MISSING
    finetune_epochs: int = 0


def register_configs() -> None:
    """Register the schemas Hydra composes the YAML files of ``rmtprune/conf/`` onto."""
    cs = ConfigStore.instance()
    cs.store(name="rmtprune_schema", node=RunConfig)
    for name, schema in MODEL_SCHEMAS.items():  # outside the model group: not an option of it (model/*.yaml)
        cs.store(name=f"rmtprune_{name}_schema", node=schema)
    cs.store(name="rmtprune_prune_schema", node=PruneCommandConfig)


_WIDTH = re.compile(r"^[0-9]+$")


def parse_topology(topology: str) -> list[int]:
    """``"784-1000-10"`` -> ``[784, 1000, 10]``: widths from input to output, at least two, all > 0."""
    text = str(topology).strip()
    parts = text.split("-")
    hint = "expected positive integer widths joined by '-', input to output, e.g. 784-1000-1000-10"
    if len(parts) < 2:
        raise UserError(f"topology={text!r}: needs at least an input and an output width; {hint}")
    widths = []
    for part in parts:
        if not _WIDTH.match(part.strip()):
            raise UserError(f"topology={text!r}: {part!r} is not a width; {hint}")
        w = int(part)
        if w <= 0:
            raise UserError(f"topology={text!r}: width {w} must be positive; {hint}")
        widths.append(w)
    return widths


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
        from .models import cnn_feature_shape

        try:
            cnn_feature_shape(list(ds.input_shape), list(m.channels), int(m.kernel_size), list(m.pool_after))
        except ValueError as exc:
            raise UserError(f"model=cnn with model.channels={list(m.channels)}, model.kernel_size={m.kernel_size}, "
                            f"model.pool_after={list(m.pool_after)} on dataset={ds.name}: {exc}") from None
    if cfg.model.name == "custom":
        if OmegaConf.is_missing(cfg.model, "_target_"):
            raise UserError("model=custom needs model._target_=your.module.Class (an importable nn.Module "
                            "subclass or a function that returns one)")
        from .models import check_custom_model

        check_custom_model(cfg)
    if cfg.logger != "csv":
        from .loggers import check_logger

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
    """Check the keys the chosen pruning option uses (``PRUNING_KEYS``); raise UserError naming the key."""
    _choice("pruning", pr.name, PRUNINGS)
    used = PRUNING_KEYS[pr.name]
    if "every" in used:
        _choice("pruning.momentum", pr.momentum, ("reset", "keep"))
        _positive("pruning.every", pr.every)
        _positive("pruning.start_epoch", pr.start_epoch)
        _positive("pruning.lr_factor", pr.lr_factor)
        if pr.stop_epoch is not None and pr.stop_epoch < pr.start_epoch:
            raise UserError(f"pruning.stop_epoch={pr.stop_epoch} is before pruning.start_epoch={pr.start_epoch}: "
                            f"no event would happen; use null for no end")
    if "min_size" in used:
        _positive("pruning.min_size", pr.min_size, allow_zero=True)
    if "recalibrate_bn" in used:
        _positive("pruning.recalibrate_bn", pr.recalibrate_bn, allow_zero=True)
    if "split" in used:
        from .cost import SPLITS

        _choice("pruning.split", pr.split, SPLITS)
    if "min_rank" in used:
        _positive("pruning.min_rank", pr.min_rank)
        if pr.output_min_rank is not None:
            _positive("pruning.output_min_rank", pr.output_min_rank)
    if pr.name == "rmt":
        if not 0 < pr.alpha < 0.5:
            raise UserError(f"pruning.alpha={pr.alpha} must be in (0, 0.5)")
        if not 0 < pr.beta < 1:
            raise UserError(f"pruning.beta={pr.beta} must be in (0, 1)")
        for key in ("tolerance", "conv_tolerance"):
            if pr[key] is not None and not 0 <= pr[key] <= 1:
                raise UserError(f"pruning.{key}={pr[key]} must be in [0, 1] (1 always passes, 0 never)")
        try:
            check_margin(pr.margin)
        except ValueError:
            raise UserError(f"pruning.margin={pr.margin} must be >= {MIN_MARGIN} (a cut to the spikes keeps "
                            f"ceil(margin * k) values) or null (k)") from None
    if "target_params" in used:
        if (pr.target_params is None) == (pr.target_from is None):
            raise UserError(f"pruning={pr.name} needs exactly one of pruning.target_params=N (the final parameter "
                            f"count) or pruning.target_from=RUN_OR_SWEEP_FOLDER (match that run's final count)")
        if pr.target_params is not None:
            _positive("pruning.target_params", pr.target_params)
        if pr.target_epoch is not None:
            _positive("pruning.target_epoch", pr.target_epoch)
        from .baselines import MATCHES

        _choice("pruning.match", pr.match, MATCHES)
        if pr.target_trajectory is not None:
            raise UserError("pruning.target_trajectory is filled in from pruning.target_from with "
                            "pruning.match=trajectory; leave it null")
        if pr.match == "trajectory" and pr.target_from is None:
            raise UserError(f"pruning.match=trajectory follows the counts of the run pruning.target_from names; "
                            f"give pruning.target_from=RUN_OR_SWEEP_FOLDER instead of pruning.target_params")
        if pr.match == "trajectory" and pr.target_epoch is not None:
            raise UserError(f"pruning.target_epoch={pr.target_epoch} with pruning.match=trajectory: the matched run's "
                            f"counts set when each count is reached; leave pruning.target_epoch null")
    if pr.name in ("magnitude", "neuron"):
        _choice("pruning.scope", pr.scope, ("global", "layer"))
    if pr.name == "lowrank":
        _choice("pruning.rank_rule", pr.rank_rule, ("energy", "uniform"))


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
