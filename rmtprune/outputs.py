"""Deprecated module path, kept for one release: a run's identity is :mod:`rmtprune.config.identity`, its
files :mod:`rmtprune.runs.folder` and :mod:`rmtprune.files`."""

import warnings

from rmtprune.config.identity import INERT_WHEN, KEYS_SINCE, config_key, identity, identity_differences
from rmtprune.files import atomic_write_text, read_json, write_csv, write_json
from rmtprune.runs.folder import METRICS_COLUMNS, find_runs, read_spectra, resolve_redirect

__all__ = ["INERT_WHEN", "KEYS_SINCE", "config_key", "identity", "identity_differences", "atomic_write_text",
           "read_json", "write_csv", "write_json", "METRICS_COLUMNS", "find_runs", "read_spectra", "resolve_redirect"]

warnings.warn("rmtprune.outputs is deprecated and will be removed in the next release: import identity and "
              "config_key from rmtprune.config.identity", DeprecationWarning, stacklevel=2)
