"""The ``rmtprune`` commands, one module each, and what they share.

- :mod:`.train`, :mod:`.prune`: Hydra commands (``key=value`` overrides, ``-m`` sweeps), run through
  :mod:`.hydra_app` (checks before any job starts, run folders, exit codes);
- :mod:`.compare`, :mod:`.inspect`: argparse commands;
- :mod:`.common`: one-line errors and argparse that reports mistakes as one line;
- :mod:`.compose`: composing the config outside a run (the checks, ``inspect``'s pruning keys);
- :mod:`.precheck`: what is refused before any job starts;
- :mod:`.jobs`: inside one job (threads, GPU, the outcome it records);
- :mod:`.outcomes`: the outcome of every job of a sweep, read back by the launching process.

``rmtprune.cli:main`` dispatches to them.
"""
