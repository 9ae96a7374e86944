"""Files of a run folder: writing them atomically, and finding earlier runs.

A run folder holds ``metrics.csv`` (one row per epoch), ``layers.csv`` (the pruning ledger),
``summary.json`` (status, results, versions, the resolved config), ``checkpoint.pt`` and
``model.pt``, ``magnitude_sweep.csv``, ``spectra.npz`` (singular values of each fitted layer at
each pruning event), ``DONE`` once finished, and Hydra's ``.hydra/`` (config, overrides).
A job that continued or skipped to another folder leaves ``redirect.json`` naming it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from omegaconf import DictConfig, OmegaConf

METRICS_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "n_params",
                   "n_params_after", "pruned_layers", "lr", "test_loss_after_event", "test_acc_after_event",
                   "seconds",
                   "val_loss", "val_acc"]  # empty without a validation split (dataset.val_size=0)
# summary.json fields of the final model's cost (rmtprune.costs), averaged per arm by compare (``<field>_mean``)
COST_FIELDS = ("model_bytes", "model_bytes_csr", "flops", "latency_b1_s", "latency_b256_s", "latency_b1_ratio",
               "latency_b256_ratio")

# Keys that do not change what a run computes (where it runs, how it reports, how it was launched, what is
# measured after training).
NOT_IDENTITY = {"resume", "skip_done", "device", "progress", "output_root", "checkpoint", "eval_batch_size",
                "threads", "deterministic", "logger", "magnitude_sweep", "cost"}
DATASET_NOT_IDENTITY = {"root", "offline_dir", "download", "verify_md5"}
# Bumped when the same config computes something else than before (a method fix): runs made by older code
# then have other keys, and skip_done / resume never mistake them for runs of this code.
IDENTITY_VERSION = 2
# Keys (dotted) added since IDENTITY_VERSION 2 with a default that computes what runs made before them
# computed: left out of the identity at that default, so those runs keep their identity (resume and
# skip_done find them). A new key goes here with the default that reproduces the old behaviour.
KEYS_SINCE: dict[str, Any] = {
    "pruning.target_epoch": None,
    "pruning.margin": None,
    "dataset.val_size": 0,
    "optimizer.anneal": "none",
    "pruning.match": "final",
    "pruning.target_trajectory": None,
    "pruning.include": None,
    "pruning.exclude": None,
    "pruning.split": "always",
    "pruning.recalibrate_bn": 0,
}
# Keys (dotted) that compute nothing while another key has its "off" value: left out of the identity then.
INERT_WHEN: dict[str, tuple[str, Any]] = {"dataset.val_seed": ("dataset.val_size", 0),
                                          "optimizer.anneal_epochs": ("optimizer.anneal", "none")}


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

        from .errors import UserError

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


def identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines a run's results: the one definition of "the same run".

    Left out: ``NOT_IDENTITY`` (and the data set's location keys), the pruning keys the chosen option
    does not use (config.PRUNING_KEYS), the schedule unless the option uses one (config.USES_SCHEDULE) and
    then only its own keys, ``topology`` unless the model is the MLP, ``pruning.target_from``
    (what counts is the ``target_params`` it resolves to), ``pruning.recalibrate_bn`` for the MLP (no BatchNorm
    to recalibrate), keys added since IDENTITY_VERSION 2 at the default that reproduces earlier runs
    (``KEYS_SINCE``), and keys inert while another is off (``INERT_WHEN``: ``dataset.val_seed`` without a
    validation split, ``optimizer.anneal_epochs`` without an anneal). ``cfg`` is a DictConfig or the plain
    ``config`` dict of a summary.json.
    """
    from .config import PRUNING_KEYS, SCHEDULE_KEYS, USES_SCHEDULE

    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if isinstance(cfg, DictConfig) \
        else json.loads(json.dumps(cfg, default=str))
    if not isinstance(data, dict):
        raise ValueError("a run config must be a mapping")
    data = {k: v for k, v in data.items() if k not in NOT_IDENTITY and k != "hydra"}
    if isinstance(data.get("dataset"), dict):
        data["dataset"] = {k: v for k, v in data["dataset"].items() if k not in DATASET_NOT_IDENTITY}
    pruning = data.get("pruning")
    if isinstance(pruning, dict):
        used = PRUNING_KEYS.get(str(pruning.get("name")), tuple(pruning))
        data["pruning"] = {k: v for k, v in pruning.items() if k in used and k != "target_from"}
        if pruning.get("name") not in USES_SCHEDULE:
            data.pop("schedule", None)
    schedule = data.get("schedule")
    if isinstance(schedule, dict):
        used = SCHEDULE_KEYS.get(str(schedule.get("name")), tuple(schedule))
        data["schedule"] = {k: v for k, v in schedule.items() if k in used}
    if isinstance(data.get("model"), dict) and data["model"].get("name", "mlp") != "mlp":
        data.pop("topology", None)
    elif isinstance(data.get("pruning"), dict):  # the MLP has no BatchNorm: recalibrating it changes nothing
        data["pruning"].pop("recalibrate_bn", None)
    for dotted, (switch, off) in INERT_WHEN.items():
        parent, leaf = _node(data, dotted)
        if parent is not None and _get(data, switch, off) == off:
            parent.pop(leaf, None)
    for dotted, default in KEYS_SINCE.items():
        node, leaf = _node(data, dotted)
        if node is not None and leaf in node and node[leaf] == default:
            del node[leaf]
    return data


def _node(data: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """(the dict holding the dotted key's leaf, the leaf), or (None, leaf) when a parent is missing."""
    *parents, leaf = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def _get(data: dict[str, Any], dotted: str, default: Any) -> Any:
    node, leaf = _node(data, dotted)
    return node.get(leaf, default) if node is not None else default


def config_key(cfg: DictConfig | dict[str, Any]) -> str:
    """A short hash of :func:`identity` (and IDENTITY_VERSION): two runs with the same key compute the same thing."""
    blob = json.dumps({"identity_version": IDENTITY_VERSION, **identity(cfg)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def identity_differences(a: DictConfig | dict[str, Any], b: DictConfig | dict[str, Any]) -> list[str]:
    """Dotted keys of the identity whose values differ between two configs (sorted)."""
    from .runs import flatten

    fa, fb = flatten(identity(a)), flatten(identity(b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


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
