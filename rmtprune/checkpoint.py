"""Deprecated module path, kept for one release: checkpoints are :mod:`rmtprune.train.checkpoint`."""

import warnings

from rmtprune.train.checkpoint import FORMAT, VERSION, is_checkpoint, load_file, model_payload, rebuild_model

__all__ = ["FORMAT", "VERSION", "is_checkpoint", "load_file", "model_payload", "rebuild_model"]

warnings.warn("rmtprune.checkpoint is deprecated and will be removed in the next release: import rebuild_model "
              "from rmtprune.train.checkpoint", DeprecationWarning, stacklevel=2)
