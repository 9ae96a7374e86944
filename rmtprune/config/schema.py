"""Structured-config schema (validated by OmegaConf) and the checks Hydra cannot express.

The YAML defaults live in ``rmtprune/conf/``; these dataclasses give every key its type, so a typo
(``epoch=3``) or a wrong type (``epochs=ten``) fails at composition time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from rmtprune.prune.registry import PRUNERS
from rmtprune.prune.schedules import SCHEDULES as _SCHEDULE_FUNCTIONS
from rmtprune.prune.schedules import SpikeCut

DATASETS = ("mnist", "fashion_mnist", "cifar10", "synthetic")


MODELS = ("mlp", "cnn", "custom")


PRUNINGS = tuple(PRUNERS)  # declared once, in rmtprune/prune/registry.py


SCHEDULES = tuple(_SCHEDULE_FUNCTIONS)  # declared once, in rmtprune/prune/schedules.py


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
    split: str = "always"          # always | auto (rmtprune.nn.split_cost) | never
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


# The keys each pruning option uses, in order (identity and config_key depend on it): read from the classes.
PRUNING_KEYS: dict[str, tuple[str, ...]] = {name: cls.config_keys for name, cls in PRUNERS.items()}


# Only rmt's keep fraction comes from the schedule group; the baselines follow a cubic schedule of their own.
USES_SCHEDULE = tuple(name for name, cls in PRUNERS.items() if cls.uses_schedule)


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
    """What is measured of the final model after training (rmtprune.nn.costs); never part of a run's identity."""

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
