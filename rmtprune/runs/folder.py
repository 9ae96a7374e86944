"""Files of a run folder: writing them atomically, and finding earlier runs.

A run folder holds ``metrics.csv`` (one row per epoch), ``layers.csv`` (the pruning ledger),
``summary.json`` (status, results, versions, the resolved config), ``checkpoint.pt`` and
``model.pt``, ``magnitude_sweep.csv``, ``spectra.npz`` (singular values of each fitted layer at
each pruning event), ``DONE`` once finished, and Hydra's ``.hydra/`` (config, overrides).
A job that continued or skipped to another folder leaves ``redirect.json`` naming it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rmtprune.files import mkstemp_beside, read_json, remove_stale_temporaries

METRICS_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "n_params",
                   "n_params_after", "pruned_layers", "lr", "test_loss_after_event", "test_acc_after_event",
                   "seconds",
                   "val_loss", "val_acc"]  # empty without a validation split (dataset.val_size=0)


# summary.json fields of the final model's cost (rmtprune.nn.costs), averaged per arm by compare (``<field>_mean``)
COST_FIELDS = ("model_bytes", "model_bytes_csr", "flops", "latency_b1_s", "latency_b256_s", "latency_b1_ratio",
               "latency_b256_ratio")


class RunLock:
    """An exclusive lock on a run folder while a run writes to it (``<folder>/.lock``, flock); a sweep
    holds ``<sweep folder>/.sweep.lock`` from before Hydra writes ``multirun.yaml`` until its last job ended.

    A second process that tries to use the folder gets a UserError naming the holder's pid; the lock
    goes with the process, so a killed run never leaves the folder locked. Within one process the lock
    is re-entrant (the command holds it while Hydra writes ``.hydra/``, the run takes it again). Whoever
    takes it first also removes the temporary files a killed write left (:func:`remove_stale_temporaries`):
    nobody else writes there while the lock is held.
    """

    _held: dict[str, list[int]] = {}  # lock file -> [fd, depth], in this process

    def __init__(self, folder: Path, name: str = ".lock") -> None:
        self.path = Path(folder) / name
        self._key = os.path.realpath(self.path)

    def __enter__(self) -> "RunLock":
        import fcntl

        from rmtprune.errors import UserError

        held = RunLock._held.get(self._key)
        if held is not None:
            held[1] += 1
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{self.path.parent} is in use by another rmtprune run (pid {holder}); wait for it, "
                            f"or choose another folder (hydra.run.dir=...)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        RunLock._held[self._key] = [fd, 1]
        remove_stale_temporaries(self.path.parent)
        return self

    def __exit__(self, *exc: Any) -> None:
        held = RunLock._held.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del RunLock._held[self._key]
            self.path.unlink(missing_ok=True)
            os.close(held[0])


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if absent), waiting for it: one process at a time in
    the block, across the processes of a sweep."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def find_runs(root: Path, key: str) -> list[tuple[Path, dict[str, Any]]]:
    """Run folders under ``root`` whose summary.json has config ``key``, newest first."""
    found = []
    if not root.is_dir():
        return found
    for summary in root.rglob("summary.json"):
        folder = summary.parent
        try:
            data = read_json(summary)
        except (OSError, ValueError):
            continue
        if data.get("config_key") == key:
            found.append((folder, data))
    found.sort(key=lambda fd: fd[1].get("started_at", ""), reverse=True)
    return found


def resolve_redirect(folder: Path) -> Path:
    """The folder a job's results are in (a resumed or skipped job points to the earlier one)."""
    red = folder / "redirect.json"
    if red.exists():
        try:
            target = Path(read_json(red)["run_dir"])
            if target.is_dir():
                return target
        except (OSError, ValueError, KeyError):
            pass
    return folder


def append_spectra(path: Path, epoch: int, spectra: dict[str, Any]) -> None:
    """Add one event's singular values to ``spectra.npz`` (keys ``e{epoch}/{layer}``), atomically.

    The new file is made beside it and moved over it (os.replace), so a kill at any byte leaves the
    previous file, with every earlier event, in place. The earlier events are copied as bytes, not
    recompressed: the arrays go in as new deflated ``.npy`` members (what ``np.savez_compressed``
    writes) appended to the copy. Only when the archive already holds this epoch (a resumed run repeating
    the event it wrote before it was stopped) is it rewritten without the old entries.
    """
    import shutil
    import zipfile

    import numpy as np

    members = {f"e{epoch}/{layer}.npy": np.asanyarray(values) for layer, values in spectra.items()}
    fd, tmp = mkstemp_beside(path, suffix=".tmp.npz")
    os.close(fd)
    try:
        if path.exists():
            with zipfile.ZipFile(path) as zf:
                stale = set(zf.namelist()) & set(members)
            if stale:
                with np.load(path, allow_pickle=False) as old:
                    np.savez_compressed(tmp, **{k: old[k] for k in old.files if f"{k}.npy" not in stale})
            else:
                shutil.copyfile(path, tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, values in members.items():
                with zf.open(name, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, values, allow_pickle=False)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def repair_spectra(path: Path) -> str | None:
    """A ``spectra.npz`` that cannot be read (damaged on disk, or cut by a kill while an older rmtprune
    appended to it in place) is moved aside to ``spectra.npz.damaged`` so that the run can go on; returns the
    warning for summary.json, or None when the file is fine or absent."""
    import zipfile

    if not path.exists():
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.testzip() is None:
                return None
    except (zipfile.BadZipFile, OSError, EOFError):
        pass
    os.replace(path, path.with_name(path.name + ".damaged"))
    return (f"{path.name} was damaged: moved to {path.name}.damaged; the spectra of the events from here on "
            f"start a new {path.name}")


def read_spectra(path: Path) -> dict[int, dict[str, Any]]:
    """{epoch: {layer: singular values}} from ``spectra.npz``."""
    import numpy as np

    out: dict[int, dict[str, Any]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            epoch, layer = key.split("/", 1)
            out.setdefault(int(epoch[1:]), {})[layer] = data[key]
    return out
