"""A run folder: every file it holds, named once (:class:`RunFolder`), written atomically, the lock and the
claim of a folder by one run, the one walker over folders of runs and the one reader of ``redirect.json``.

A run folder holds ``metrics.csv`` (one row per epoch), ``layers.csv`` (the pruning ledger),
``summary.json`` (the run record: status, results, versions, the resolved config; ``rmtprune train`` and
``rmtprune prune`` write the same schema, :func:`summarise`), ``checkpoint.pt`` and ``model.pt``,
``magnitude_sweep.csv``, ``spectra.npz`` (singular values of each fitted layer at each pruning event),
``DONE`` once finished, Hydra's log (``train.log``, ``prune.log``) and ``.hydra/`` (config, overrides).
A job that continued or skipped to another folder leaves ``redirect.json`` naming it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rmtprune.errors import UserError
from rmtprune.files import mkstemp_beside, read_json, remove_stale_temporaries, write_csv, write_json

METRICS_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "n_params",
                   "n_params_after", "pruned_layers", "lr", "test_loss_after_event", "test_acc_after_event",
                   "seconds",
                   "val_loss", "val_acc"]  # empty without a validation split (dataset.val_size=0)


# magnitude_sweep.csv: one row per sparsity level of the post-training sweep (rmtprune.train.sweep)
MAGNITUDE_COLUMNS = ["sparsity", "tau", "n_nonzero", "n_params", "test_loss", "test_acc"]


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


class RunFolder:
    """One run folder: the name of every file in it (declared here once), reading and writing them (atomically:
    a temporary file beside the target, then a rename), the redirect a job leaves, the lock and the claim.

    ``RunFolder(path).summary_json`` is the path of its summary.json, and so on for every file below.
    """

    SUMMARY = "summary.json"
    METRICS = "metrics.csv"
    LEDGER = "layers.csv"
    SPECTRA = "spectra.npz"
    CHECKPOINT = "checkpoint.pt"
    MODEL = "model.pt"
    MAGNITUDE = "magnitude_sweep.csv"
    DONE = "DONE"
    REDIRECT = "redirect.json"
    LOG = "train.log"  # Hydra's log of the job (``<hydra.job.name>.log``: prune.log for rmtprune prune)
    HYDRA = ".hydra"
    POSTHOC_MAGNITUDE = "posthoc_magnitude.csv"  # compare's cache of the post-training magnitude baseline
    LOCK = ".lock"
    SWEEP_LOCK = ".sweep.lock"
    # The files a run writes: a folder holding one of them belongs to that run.
    RESULTS = (METRICS, LEDGER, SPECTRA, MODEL, CHECKPOINT)
    # What a run that stopped before its first checkpoint leaves: removed when it starts again there.
    PARTIAL = (METRICS, LEDGER, SPECTRA)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    summary_json = property(lambda self: self.path / self.SUMMARY)
    metrics_csv = property(lambda self: self.path / self.METRICS)
    layers_csv = property(lambda self: self.path / self.LEDGER)
    spectra_npz = property(lambda self: self.path / self.SPECTRA)
    checkpoint_pt = property(lambda self: self.path / self.CHECKPOINT)
    model_pt = property(lambda self: self.path / self.MODEL)
    magnitude_csv = property(lambda self: self.path / self.MAGNITUDE)
    done_file = property(lambda self: self.path / self.DONE)
    redirect_json = property(lambda self: self.path / self.REDIRECT)
    hydra_dir = property(lambda self: self.path / self.HYDRA)

    # -- the run record and the tables ----------------------------------------------------------------------

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json's content, or None when it is absent, unreadable or not a JSON object."""
        try:
            data = read_json(self.summary_json)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_json, summary)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_csv(self.metrics_csv, rows, METRICS_COLUMNS)

    def write_ledger(self, rows: list[dict[str, Any]]) -> None:
        from rmtprune.prune.events import LEDGER_COLUMNS

        write_csv(self.layers_csv, rows, LEDGER_COLUMNS)

    def write_magnitude(self, rows: list[dict[str, Any]]) -> None:
        write_csv(self.magnitude_csv, rows, MAGNITUDE_COLUMNS)

    def append_spectra(self, epoch: int, spectra: dict[str, Any]) -> None:
        append_spectra(self.spectra_npz, epoch, spectra)

    def repair_spectra(self) -> str | None:
        return repair_spectra(self.spectra_npz)

    def mark_done(self, finished_at: str) -> None:
        self.done_file.write_text(finished_at + "\n")

    def clear_done(self) -> None:
        """A finished run continued to more epochs is running again."""
        self.done_file.unlink(missing_ok=True)

    def remove_partial(self) -> None:
        """A run of this config stopped before its first checkpoint: nothing to continue, it starts again here."""
        for name in self.PARTIAL:
            (self.path / name).unlink(missing_ok=True)

    # -- redirects -------------------------------------------------------------------------------------------

    def write_redirect(self, target: Path, reason: str) -> None:
        """Say that this job's results are in ``target`` (an earlier run it resumed, or skipped to)."""
        write_json(self.redirect_json, {"run_dir": str(Path(target).resolve()), "reason": reason})

    def redirect(self) -> tuple[Path | None, str | None]:
        """(the folder redirect.json names, None), or (None, why it leads nowhere), or (None, None) without one."""
        if not self.redirect_json.exists():
            return None, None
        try:
            data = read_json(self.redirect_json)
        except (OSError, ValueError) as exc:
            return None, f"{self.REDIRECT} unreadable ({type(exc).__name__})"
        target = data.get("run_dir") if isinstance(data, dict) else None
        if not isinstance(target, str) or not target:
            return None, f"{self.REDIRECT} names no run folder (no \"run_dir\" text)"
        if not Path(target).is_dir():
            return None, f"{self.REDIRECT} points to {target}, which is not a folder here"
        return Path(target), None

    def resolve(self) -> "RunFolder":
        """The folder holding this job's results: the one its redirect names, else itself."""
        target, _ = self.redirect()
        return RunFolder(target) if target is not None else self

    # -- one run per folder ----------------------------------------------------------------------------------

    def lock(self) -> RunLock:
        return RunLock(self.path, self.LOCK)

    def present(self, names: tuple[str, ...]) -> list[str]:
        """The files of ``names`` that exist here, in that order."""
        return [n for n in names if (self.path / n).exists()]

    def check_writable(self, hint: str) -> None:
        """The folder exists (made if needed) and a file can be written there; else a UserError with ``hint``."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"output folder {self.path} is not writable ({exc.strerror}); {hint}") from None

    def own_run(self, key: str) -> dict[str, Any] | None:
        """The summary of the run of config ``key`` this folder holds (finished or not), else None."""
        summary = self.read_summary()
        return summary if summary is not None and summary.get("config_key") == key else None

    def finished(self, key: str) -> bool:
        """Whether this folder holds the finished run of config ``key``: then nothing is written here again."""
        own = self.own_run(key)
        return own is not None and own.get("status") == "completed"

    def claim(self, key: str | None) -> None:
        """A run folder belongs to one run: refuse (UserError) a folder holding another run's files.

        ``key``: the config key of the ``rmtprune train`` run about to write here, which may take a folder holding
        a finished run of its own config (nothing is trained again) or one that stopped before its first
        checkpoint (it starts again); None for ``rmtprune prune``, whose folder must hold no run at all.
        A run being resumed here does not claim the folder: its config was compared with the one here."""
        if key is None:
            taken = self.present((self.SUMMARY, *self.RESULTS))
            if taken:
                raise UserError(f"{self.path} already holds the results of another run ({', '.join(taken)}); "
                                f"choose another folder (hydra.run.dir=...)")
            return
        if not self.summary_json.exists():
            leftovers = self.present(self.RESULTS)
            if leftovers:
                raise UserError(f"{self.path} already holds files of another run ({', '.join(leftovers)}); choose "
                                f"another folder (hydra.run.dir=...) or remove them")
            return
        other = self.read_summary() or {}
        if other.get("config_key") != key:
            raise UserError(f"{self.path} holds another run (config key {other.get('config_key', '?')}, this one "
                            f"{key}); choose another folder (hydra.run.dir=...)")
        if other.get("status") != "completed" and self.checkpoint_pt.exists():
            raise UserError(f"{self.path} holds an unfinished run of this config (status {other.get('status')}); "
                            f"continue it with resume=true or resume={self.path}, or choose another folder")


def walk(root: Path) -> list[RunFolder]:
    """The one walk over run folders: ``root`` and every folder under it holding a summary.json or a
    redirect.json, sorted by path (redirects not followed: :meth:`RunFolder.resolve`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = {p.parent for name in (RunFolder.SUMMARY, RunFolder.REDIRECT) for p in root.rglob(name)}
    return [RunFolder(f) for f in sorted(found)]


def find_runs(root: Path, key: str) -> list[tuple[Path, dict[str, Any]]]:
    """Run folders under ``root`` whose summary.json has config ``key``, newest first."""
    found = []
    for folder in walk(root):
        summary = folder.own_run(key)
        if summary is not None:
            found.append((folder.path, summary))
    found.sort(key=lambda fd: fd[1].get("started_at", ""), reverse=True)
    return found


def resolve_redirect(folder: Path) -> Path:
    """The folder a job's results are in (a resumed or skipped job points to the earlier one)."""
    return RunFolder(folder).resolve().path


def _has_val(row: dict[str, Any]) -> bool:
    v = row.get("val_acc")
    return isinstance(v, float) and v == v


def summarise(summary: dict[str, Any], metrics: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """The run record (summary.json) of ``summary`` and the epoch rows so far, as ``train`` and ``prune`` write it:
    ``epochs_completed``, ``wall_time_s``, and from the last row ``final_test_acc``, ``final_train_acc``,
    ``final_test_loss``, ``n_params_final`` (its ``n_params_after``) and ``param_reduction_pct`` =
    100 (1 - n_params_final / n_params_initial); the best epoch (``best_epoch``, ``best_test_acc``) chosen on
    validation when there is a split (``best_on``: val, with ``final_val_*`` and ``best_val_acc``), else on test.
    The config goes last: the results are what a reader looks for first."""
    out = dict(summary)
    out["epochs_completed"] = len(metrics)
    out["wall_time_s"] = round(wall, 3)
    if metrics:
        last = metrics[-1]
        on = "val" if _has_val(last) else "test"
        best = max(metrics, key=lambda r: r[f"{on}_acc"])
        out.update(final_test_acc=last["test_acc"], final_train_acc=last["train_acc"],
                   final_test_loss=last["test_loss"], best_test_acc=best["test_acc"], best_epoch=best["epoch"],
                   best_on=on, n_params_final=last["n_params_after"],
                   param_reduction_pct=100.0 * (1 - last["n_params_after"] / out["n_params_initial"]))
        if on == "val":
            out.update(final_val_acc=last["val_acc"], final_val_loss=last["val_loss"], best_val_acc=best["val_acc"])
    out["accuracy_unit"] = "fraction"
    out["config"] = out.pop("config")
    return out


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
