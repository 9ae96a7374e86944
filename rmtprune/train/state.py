"""The training state: what one run carries from epoch to epoch, and the one place that writes and reads
checkpoint.pt (the format is described in train/checkpoint.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmtprune.config.build import OptimizerSettings, RunSettings
from rmtprune.errors import UserError
from rmtprune.nn.geometry import count_parameters
from rmtprune.nn.models import build_model
from rmtprune.prune.base import Pruner
from rmtprune.train.checkpoint import is_checkpoint, load_file, model_payload, rebuild_model, save_atomic, to_cpu


def make_optimizer(model: nn.Module, settings: OptimizerSettings, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum over ``model``'s parameters; the L2 penalty l2 sum theta^2 as weight decay 2 l2."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(settings.momentum),
                           weight_decay=2.0 * float(settings.l2))


def rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    """Restore the generators; a checkpoint made on another device type restores what applies."""
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class TrainingState:
    """Model, optimizer, pruner, data-order generator, lr and the history of one run.

    ``epoch`` counts the epochs completed; ``lr`` is the learning rate of the next epoch.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    pruner: Pruner
    gen: torch.Generator
    lr: float
    spec: dict[str, Any]
    num_classes: int
    input_shape: list[int]
    epoch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    n_params_initial: int = 0
    started_at: str = ""
    wall_time_s: float = 0.0

    @classmethod
    def fresh(cls, settings: RunSettings, spec: dict[str, Any], num_classes: int, input_shape: list[int],
              device: torch.device, pruner: Pruner, started_at: str) -> "TrainingState":
        """The state before epoch 1: the model built under ``torch.manual_seed(seed)`` (the same initial
        weights in every arm), the data-order generator seeded with the seed."""
        torch.manual_seed(settings.seed)
        model = build_model(spec).to(device)
        pruner.setup(model, settings.epochs)
        lr = settings.optimizer.lr
        return cls(model=model, optimizer=make_optimizer(model, settings.optimizer, lr), pruner=pruner,
                   gen=torch.Generator().manual_seed(settings.seed), lr=lr, spec=spec, num_classes=num_classes,
                   input_shape=list(input_shape), n_params_initial=count_parameters(model), started_at=started_at)

    @classmethod
    def restore(cls, path: Path, settings: RunSettings, spec: dict[str, Any], device: torch.device,
                pruner: Pruner) -> "TrainingState":
        """The state saved in ``path`` (checkpoint.pt). The caller has checked the config matches; ``spec``
        (the config's model spec) is what a custom model class may be imported from."""
        ckpt = load_file(path)
        if not is_checkpoint(ckpt) or "optimizer" not in ckpt:
            raise UserError(f"{path}: not a training checkpoint of rmtprune")
        model = rebuild_model(ckpt, path, spec).to(device)  # a custom class from the config only
        pruner.load_state_dict(ckpt.get("pruner", {}))  # first: setup may need it (neuron's dense widths)
        pruner.setup(model, settings.epochs)
        lr = float(ckpt["lr"])
        opt = make_optimizer(model, settings.optimizer, lr)
        try:
            opt.load_state_dict(ckpt["optimizer"])  # moves the CPU tensors to the parameters' device
        except (ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"{path}: optimizer state does not match the model ({exc})") from None
        gen = torch.Generator()
        set_rng_state(ckpt["rng"], gen, device)
        return cls(model=model, optimizer=opt, pruner=pruner, gen=gen, lr=lr, spec=ckpt["spec"],
                   num_classes=int(ckpt["num_classes"]), input_shape=list(ckpt["input_shape"]),
                   epoch=int(ckpt["epoch"]), metrics=list(ckpt["metrics"]), ledger=list(ckpt["ledger"]),
                   n_params_initial=int(ckpt["n_params_initial"]), started_at=str(ckpt.get("started_at", "")),
                   wall_time_s=float(ckpt.get("wall_time_s", 0.0)))

    def model_payload(self) -> dict[str, Any]:
        """model.pt: the model, its epoch, the next lr and the pruner's state."""
        payload = model_payload(self.model, self.spec, self.num_classes, self.input_shape)
        payload.update(epoch=self.epoch, lr=self.lr, pruner=self.pruner.state_dict())
        return payload

    def save(self, path: Path, config: dict[str, Any], key: str, device: torch.device) -> None:
        """checkpoint.pt, atomically: everything :meth:`restore` needs to continue bit for bit; ``config`` is
        the run's resolved config (plain data) and ``key`` its config key."""
        ckpt = self.model_payload()
        ckpt.update(optimizer=to_cpu(self.optimizer.state_dict()), rng=rng_state(self.gen, device),
                    metrics=self.metrics, ledger=self.ledger, config_key=key,
                    config=config, n_params_initial=self.n_params_initial,
                    started_at=self.started_at, wall_time_s=self.wall_time_s)
        save_atomic(ckpt, path)
