"""Shell completion: ``eval "$(rmtprune train -sc install=bash)"`` (zsh too; fish: ``... install=fish | source``).

Hydra's completion script asks ``rmtprune -sc query=SHELL`` with the line typed so far in ``COMP_LINE``. This
completes the command name itself (``rmtprune tr`` -> ``train``), and hands the rest of a ``train`` or ``prune``
line to that command's Hydra completion with the command word removed (``rmtprune train dataset=fa`` is
completed as Hydra's ``rmtprune dataset=fa``: ``dataset=fashion_mnist``). ``compare`` and ``inspect`` complete
nothing (the shell's file names).
"""

from __future__ import annotations

import os

from rmtprune.errors import UserError

COMMANDS = ("train", "compare", "inspect", "prune")


def main(args: list[str]) -> int:
    if len(args) != 1 or not args[0].startswith("query="):
        raise UserError('shell completion is installed per command: eval "$(rmtprune train -sc install=bash)"')
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if len(words) < 2 or (len(words) == 2 and not line.endswith(" ")):  # still typing the command
        typed = words[1] if len(words) == 2 else ""
        print(" ".join(c for c in COMMANDS if c.startswith(typed)))
        return 0
    if words[1] == "train":
        from rmtprune.commands.train import main as command
    elif words[1] == "prune":
        from rmtprune.commands.prune import main as command
    else:
        print("")
        return 0
    rest = words[2:]
    done = rest if line.endswith(" ") else rest[:-1]  # the words typed in full
    model = next((w for w in done if "=" not in w and not w.startswith("-")), None)
    if words[1] == "prune" and model is not None:  # prune's MODEL is no override
        rest.remove(model)
    os.environ["COMP_LINE"] = " ".join([words[0], *rest]) + (" " if line.endswith(" ") else "")
    return command(["-sc", args[0]])
