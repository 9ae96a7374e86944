"""``RMTPruning``: RMT pruning as a PyTorch Lightning callback (``pip install -e ".[lightning]"``).

>>> from rmtprune.integrations.lightning import RMTPruning
>>> trainer = lightning.Trainer(max_epochs=20, callbacks=[RMTPruning(tolerance=0.05, horizon=20)])
>>> trainer.fit(module, datamodule)

After the training epoch e (1-based: Lightning's ``current_epoch + 1``) of every event epoch of the
pruner's calendar, never after the last one, the callback:

1. calls ``pruner.step(pl_module, e)``: every eligible Linear / Conv2d of the LightningModule is fitted
   and cut. **Modifies the module in place** (split layers replaced by two-factor modules);
2. rebuilds every optimizer of the trainer (``trainer.optimizers``), whether or not the event changed the
   model, the way ``rmtprune train`` does: the same class and parameter groups over the module's current
   parameters (a split layer's factors join the group of the layer they replace), every group's lr times
   ``lr_factor``, and the momentum policy (``"reset"``: fresh optimizer state; ``"keep"``: parameters the
   event did not touch keep theirs): :func:`rmtprune.rebuild_optimizer`, the function a plain loop calls.
   Learning-rate schedulers are pointed at the new optimizers, their base lrs times ``lr_factor``;
3. logs ``rmt/n_params`` and ``rmt/pruned_layers`` with ``pl_module.log``, and keeps the event (ledger
   rows, spectra) in :attr:`RMTPruning.events`.

Checkpoints: the callback's state (the pruner's state and the ranks of the split layers) is saved in
Lightning checkpoints; ``trainer.fit/validate/test/predict(..., ckpt_path=...)`` with the callback splits
the dense module's layers as the checkpoint holds them before Lightning loads the weights (a
``load_state_dict`` pre-hook the callback registers on the module in ``setup``: **it modifies the module**
when a pruned state_dict is loaded into it). ``Module.load_from_checkpoint`` involves no callback: give
the module the one line ``def on_load_checkpoint(self, checkpoint): rmtprune.factorise_to_match(self,
checkpoint["state_dict"])`` (Lightning calls it before it loads the weights, on every path). The module's
``configure_optimizers`` should build its optimizers over ``self.parameters()`` (in their order) for the saved
optimizer state to fit.
Single-process training only (one device, no DDP): pruning changes the parameters a distributed wrapper
has registered.
"""

from __future__ import annotations

from typing import Any

from torch import nn

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError:
        raise ImportError('rmtprune.integrations.lightning needs PyTorch Lightning: pip install -e ".[lightning]" in '
                          "a checkout of rmtprune (or pip install lightning)") from None

from rmtprune.nn.models import factorise_to_match, factorised_ranks
from rmtprune.prune.batchnorm import recalibrate_bn
from rmtprune.prune.events import PruneEvent, rebuild_optimizer
from rmtprune.prune.rmt import RMTPruner

__all__ = ["RMTPruning"]


class RMTPruning(pl.Callback):
    """Prune a LightningModule with :class:`rmtprune.RMTPruner` between epochs (see the module docstring).

    Args:
        pruner: a configured RMTPruner; or give its keyword arguments instead (``tolerance=0.05, ...``).
        log_metrics: log ``rmt/n_params`` and ``rmt/pruned_layers`` after every event.

    Raises:
        ValueError: both ``pruner`` and keyword arguments, or a bad keyword argument (named).
    """

    def __init__(self, pruner: RMTPruner | None = None, *, log_metrics: bool = True, **pruner_kwargs: Any) -> None:
        super().__init__()
        if pruner is not None and pruner_kwargs:
            raise ValueError(f"give either pruner= or its keyword arguments ({', '.join(pruner_kwargs)}), not both")
        self.pruner = pruner if pruner is not None else RMTPruner(**pruner_kwargs)
        self.log_metrics = bool(log_metrics)
        self.events: list[PruneEvent] = []
        self._ranks: dict[str, int] = {}
        self._hook: Any = None

    # --- set-up and checkpoints -------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hook is None:
            # Lightning loads a checkpoint's weights (fit, validate, test, predict with ckpt_path=) after
            # setup and before it restores the callbacks: split the layers the checkpoint holds as factors
            # first, from the shapes in its state_dict
            def factorise(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
                if prefix == "":
                    factorise_to_match(module, state_dict)

            self._hook = pl_module.register_load_state_dict_pre_hook(factorise)
        if stage != "fit":
            return
        if getattr(trainer, "world_size", 1) > 1:
            raise ValueError("RMTPruning supports single-process training only: pruning replaces parameters that "
                             "a distributed strategy has registered")
        max_epochs = trainer.max_epochs
        self.pruner.setup(pl_module, max_epochs if max_epochs is not None and max_epochs > 0 else None)

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict(), "ranks": dict(self._ranks)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state_dict.get("pruner", {}))
        self._ranks = dict(state_dict.get("ranks", {}))

    # --- the event --------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not self.pruner.is_event(epoch):
            return
        event = self.pruner.step(pl_module, epoch)
        self.events.append(event)
        self._ranks = factorised_ranks(pl_module)
        if event.changed and self.pruner.recalibrate_bn and trainer.train_dataloader is not None:
            # BatchNorm statistics of the cut network, on the first training batches (inputs only)
            inputs = (b[0] if isinstance(b, (tuple, list)) else b for b in trainer.train_dataloader)
            recalibrate_bn(pl_module, (x.to(pl_module.device) for x in inputs), self.pruner.recalibrate_bn, event)
        schedulers = [config.scheduler for config in getattr(trainer, "lr_scheduler_configs", [])]
        trainer.optimizers = [rebuild_optimizer(opt, pl_module, event, momentum=self.pruner.momentum,
                                                lr_factor=self.pruner.lr_factor, schedulers=schedulers)
                              for opt in trainer.optimizers]
        if self.log_metrics:
            pruned = sum(r["action"] in ("split", "truncate") for r in event.records)
            pl_module.log("rmt/n_params", float(sum(p.numel() for p in pl_module.parameters())), on_epoch=True)
            pl_module.log("rmt/pruned_layers", float(pruned), on_epoch=True)
