"""The ``rmtprune`` console script: one command per module of :mod:`rmtprune.commands`.

User mistakes become one ``rmtprune: error:`` line on stderr and exit 2; a run that failed while
running exits 1; Ctrl-C exits 130, SIGTERM 143 (128 + the signal's number).
"""

from __future__ import annotations

import os
import sys

from rmtprune.commands.common import debugging, err, unexpected
from rmtprune.commands.jobs import threads_per_job  # noqa: F401  (public: the threads of one job of a sweep)
from rmtprune.errors import UserError

USAGE = """usage: rmtprune COMMAND [ARGS...]

Random-matrix-theory pruning of neural networks, one experiment per command.

commands:
  train     train (and prune) a network; Hydra overrides, -m for sweeps   (rmtprune train --help)
  compare   tables, tests and figures from run or sweep folders            (rmtprune compare --help)
  inspect   the MP fit of every layer of a saved model                     (rmtprune inspect --help)
  prune     one pruning event on a saved model, then evaluate / fine-tune  (rmtprune prune --help)

examples:
  rmtprune train topology=784-1000-1000-500-10 pruning=rmt schedule.horizon=10
  rmtprune train -m seed=0,1,2,3,4 pruning=none,rmt
  rmtprune compare outputs/multirun/2026-11-28/10-00-00
"""

# Paths given in the environment, made absolute once here so that every job (another working folder
# under hydra.job.chdir=true, a launcher's child process) reads the folder the user meant.
PATH_VARIABLES = ("RMTPRUNE_OFFLINE_DATA", "RMTPRUNE_DATA_DIR")


def absolute_path_variables() -> None:
    """A relative path in PATH_VARIABLES means that folder as seen from where the command started."""
    for name in PATH_VARIABLES:
        value = os.environ.get(name)
        if value and not os.path.isabs(os.path.expanduser(value)):
            os.environ[name] = os.path.abspath(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rmtprune`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from rmtprune import __version__

        print(f"rmtprune {__version__}")
        return 0
    absolute_path_variables()
    command, rest = argv[0], argv[1:]
    try:
        if command in ("-sc", "--shell-completion"):  # asked by the script `rmtprune train -sc install=bash` installs
            from rmtprune.commands.complete import main as complete

            return complete(rest)
        if command == "train":
            from rmtprune.commands.train import main as train

            return train(rest)
        if command == "compare":
            from rmtprune.commands.compare import main as compare

            return compare(rest)
        if command == "inspect":
            from rmtprune.commands.inspect import main as inspect

            return inspect(rest)
        if command == "prune":
            from rmtprune.commands.prune import main as prune

            return prune(rest)
        err(f"unknown command {command!r}; commands: train, compare, inspect, prune (rmtprune --help)")
        return 2
    except UserError as exc:
        err(str(exc))
        return 2
    except KeyboardInterrupt as exc:
        from rmtprune.train.signals import exit_code

        err("interrupted; what finished is saved (continue a run with resume=true)")
        return exit_code(exc)
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001  (no check foresaw it: still one line, not a traceback)
        if debugging():
            raise
        err(unexpected(exc, f"rmtprune {command} failed"))
        return 1
