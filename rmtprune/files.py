"""Writing files safely: atomically (a temporary file beside the target, then a rename), JSON and CSV in
one format, and the temporaries a killed process left behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

# The names atomic writes give their temporary files: ``.<name>.<random>.tmp`` (and ``.tmp.npz`` for spectra).
TEMPORARY_PATTERNS = (".*.tmp", ".*.tmp.npz")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files of atomic writes that a killed process left in ``folder``; call it only
    while holding the folder's RunLock. Returns what was removed."""
    removed = []
    for pattern in TEMPORARY_PATTERNS:
        for path in Path(folder).glob(pattern):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def mkstemp_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``path``'s folder, with the mode a plain ``open`` would give (0666 less the
    umask) instead of 0600: the file renamed into place is as readable as the run's other files."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    umask = os.umask(0o022)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and os.replace: never a half-written file."""
    path = Path(path)
    fd, tmp = mkstemp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return "" if v is None else v


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
