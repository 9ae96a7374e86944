"""Deprecated module path, kept for one release: the schedules are :mod:`rmtprune.prune.schedules`, also
reached as ``rmtprune.schedules`` after ``import rmtprune`` (no warning)."""

import warnings

from rmtprune.prune.schedules import (
                                      MIN_MARGIN,
                                      MIN_PATIENCE,
                                      SCHEDULES,
                                      Schedule,
                                      SpikeCut,
                                      constant,
                                      exponential,
                                      linear,
                                      oneshot,
                                      step,
                                      target_rank,
)

__all__ = ["MIN_MARGIN", "MIN_PATIENCE", "SCHEDULES", "Schedule", "SpikeCut", "constant", "exponential", "linear",
           "oneshot", "step", "target_rank"]

warnings.warn("the module path rmtprune.schedules is deprecated and will be removed in the next release: use "
              "rmtprune.prune.schedules (or the attribute rmtprune.schedules after import rmtprune)",
              DeprecationWarning, stacklevel=2)
