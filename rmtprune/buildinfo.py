"""The git commit of the source tree, for the code version every summary.json records.

A checkout reads it at run time; ``pip install .`` reads it at build time (setup.py writes it into the
installed copy's ``rmtprune/_version.py``, which is never in the source tree). Standard library only:
setup.py loads this file before any dependency is installed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(root: Path) -> str | None:
    """``g<12-digit hash>`` of the checkout at ``root``, with ``.dirty`` when rmtprune/ has uncommitted
    changes; None where ``root`` is no git checkout (an installed copy) or git is missing."""
    if not (Path(root) / ".git").exists():  # not a folder inside some other repository
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "rmtprune"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"g{head.stdout.strip()}" + (".dirty" if dirty.stdout.strip() else "")
