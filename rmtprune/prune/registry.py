"""The pruning methods by name (``pruning=<name>``): the one list the config reads its options, keys and
valid values from (``config.schema.PRUNING_KEYS``, ``config.build.make_pruner``).

A new method is one module with a :class:`rmtprune.prune.base.Pruner` subclass that has a ``name``, its
``config_keys`` and ``_parameter_constraints``, registered with :func:`register`, plus its YAML in
``rmtprune/conf/pruning/``.
"""

from __future__ import annotations

from typing import TypeVar

from rmtprune.prune.base import Pruner
from rmtprune.prune.control import ControlPruner, NoPruner
from rmtprune.prune.lowrank import LowRankPruner
from rmtprune.prune.magnitude import MagnitudePruner
from rmtprune.prune.neuron import NeuronPruner
from rmtprune.prune.rmt import RMTPruner

P = TypeVar("P", bound=type[Pruner])

PRUNERS: dict[str, type[Pruner]] = {}


def register(cls: P) -> P:
    """Add ``cls`` under ``cls.name`` (usable as a class decorator). Raises ValueError for a name taken by
    another class."""
    if PRUNERS.get(cls.name, cls) is not cls:
        raise ValueError(f"pruning={cls.name} is already {PRUNERS[cls.name].__qualname__}")
    PRUNERS[cls.name] = cls
    return cls


def pruner_class(name: str) -> type[Pruner]:
    """The class of ``pruning=<name>``; ValueError for an unknown name."""
    if name not in PRUNERS:
        raise ValueError(f"unknown pruning {name!r}; known: {', '.join(PRUNERS)}")
    return PRUNERS[name]


for _cls in (NoPruner, ControlPruner, RMTPruner, MagnitudePruner, LowRankPruner, NeuronPruner):
    register(_cls)
