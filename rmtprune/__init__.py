"""rmtprune: random-matrix-theory pruning of neural networks during training.

The Python API, for any ``nn.Module`` in any training loop (no Hydra, no config files)::

    import rmtprune

    pruner = rmtprune.RMTPruner(tolerance=0.05, schedule="linear", horizon=epochs)
    pruner.setup(model, epochs)
    for epoch in range(1, epochs + 1):
        train_one_epoch(model, optimizer)
        if pruner.is_event(epoch):
            event = pruner.step(model, epoch)        # modifies model in place
            rmtprune.recalibrate_bn(model, train_loader, pruner.recalibrate_bn, event)  # BatchNorm statistics
            optimizer = rmtprune.rebuild_optimizer(optimizer, model, event, momentum=pruner.momentum,
                                                   lr_factor=pruner.lr_factor, schedulers=[scheduler])

    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, "ckpt.pt")   # a checkpoint
    ckpt = torch.load("ckpt.pt", weights_only=True)
    fresh = MyNet()                                            # later: a dense instance of the same class
    rmtprune.factorise_to_match(fresh, ckpt["model"])          # splits its layers as the checkpoint has them
    fresh.load_state_dict(ckpt["model"]); pruner.load_state_dict(ckpt["pruner"])

    event = rmtprune.prune_model(trained, keep_fraction=0.0)   # one cut of a trained model, in place
    fit = rmtprune.fit_mp(weight_matrix)                       # the Marchenko-Pastur fit of one matrix
    table = rmtprune.inspect_model(model_or_state_dict)        # pandas.DataFrame: the RMT view, one row per layer

Names: :class:`RMTPruner`, :func:`prune_model`, :class:`PruneEvent`, :class:`Pruner` (the base of the
pruning methods), :func:`rebuild_optimizer`, :func:`factorise_to_match`, :func:`fit_mp` and its result
:class:`MPFit`, :func:`inspect_model` (its DataFrame), :func:`recalibrate_bn` (BatchNorm statistics after a
cut; nothing without BatchNorm), and :mod:`schedules` (keep fractions f(epoch): ``schedules.linear``, ``step``,
``exponential``, ``oneshot``, ``constant``; e.g. ``RMTPruner(schedule=functools.partial(rmtprune.schedules.step,
at=5))``; and the per-layer spike-count cut, ``RMTPruner(schedule="spikes", patience=2, margin=None)``).
The ``rmtprune`` command (``rmtprune train`` ...) is built on the same classes.

Importing ``rmtprune`` is light: the names above are loaded on first use (torch, numpy and scipy then;
never Hydra or matplotlib).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "RMTPruner": "rmtprune.prune.rmt",
    "prune_model": "rmtprune.prune.rmt",
    "PruneEvent": "rmtprune.prune.events",
    "Pruner": "rmtprune.prune.base",
    "rebuild_optimizer": "rmtprune.prune.events",
    "factorise_to_match": "rmtprune.nn.models",
    "inspect_model": "rmtprune.report.inspection",
    "fit_mp": "rmtprune.rmt",
    "MPFit": "rmtprune.rmt",
    "recalibrate_bn": "rmtprune.prune.batchnorm",
}
_SUBMODULES = {"schedules": "rmtprune.prune.schedules"}

__all__ = ["RMTPruner", "prune_model", "PruneEvent", "Pruner", "rebuild_optimizer", "factorise_to_match", "fit_mp",
           "MPFit", "inspect_model", "recalibrate_bn", "schedules", "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from rmtprune.nn.models import factorise_to_match
    from rmtprune.prune import schedules
    from rmtprune.prune.base import Pruner
    from rmtprune.prune.batchnorm import recalibrate_bn
    from rmtprune.prune.events import PruneEvent, rebuild_optimizer
    from rmtprune.prune.rmt import RMTPruner, prune_model
    from rmtprune.report.inspection import inspect_model
    from rmtprune.rmt import MPFit, fit_mp


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562), so that ``import rmtprune`` (and the CLI's start) stays fast."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'rmtprune' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
