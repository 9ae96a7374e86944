"""Data sets as whole tensors on the training device.

Real data goes through torchvision's MNIST / FashionMNIST / CIFAR10 loaders (which download where a
network exists). Offline, a local mirror (a folder named by ``dataset.offline_dir`` or the environment
variable ``RMTPRUNE_OFFLINE_DATA``) is used instead:

* ``mnist/``, ``fashion_mnist/``: the gzip-compressed IDX files, decompressed into torchvision's raw
  folder under ``dataset.root`` and checked against the md5 sums of the config;
* ``cifar10/``: the official python archive ``cifar-10-python.tar.gz`` (checked against its official
  md5, ``dataset.raw_md5``) or its extracted ``cifar-10-batches-py/``; the batches are copied to
  ``dataset.root/cifar-10-batches-py`` and checked against torchvision's md5 of each file.

``dataset.verify_md5=false`` switches the checks off (for a home-made archive of the same format, as
the tests make; it is not part of a run's identity). Images are scaled to [-1, 1] per channel
(Normalize(0.5, 0.5), as in the paper) once, into (N, C, H, W) float32; batches are index slices, no
per-sample transforms.

Validation split (``dataset.val_size=N``, :func:`split_validation`): N images of the data set's training
split are held out, the positions ``sorted(randperm(n_train, generator seeded with dataset.val_seed)[:N])``
(a generator of its own: independent of the run's seed and of ``train_size``, hence the same images in
every arm and every seed). The training set is the rest, in the original order, of which ``train_size``
keeps the first. The synthetic set draws ``train_size + val_size`` training images to split.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import logging
import math
import os
import pickle
import shutil
import tarfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch

from rmtprune.errors import UserError
from rmtprune.files import mkstemp_beside

log = logging.getLogger(__name__)

_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_FIX = (
    "set RMTPRUNE_OFFLINE_DATA (or dataset.offline_dir) to a folder holding mnist/ and "
    "fashion_mnist/ with the IDX .gz files, or allow downloads (dataset.download=true, network needed)"
)
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FIX = (
    f"set RMTPRUNE_OFFLINE_DATA (or dataset.offline_dir) to a folder holding cifar10/ with the official "
    f"{CIFAR_ARCHIVE} (or its extracted {CIFAR_FOLDER}/), or allow downloads (dataset.download=true, network "
    f"needed)"
)


@dataclass(frozen=True)
class SyntheticSettings:
    """The synthetic set's generator (:func:`make_synthetic`)."""

    data_seed: int = 1234
    latent_dim: int = 16
    noise: float = 1.5
    separation: float = 0.9


@dataclass(frozen=True)
class DataSettings:
    """What :func:`load_data` loads: the ``dataset`` node of a run's config as plain values
    (``rmtprune.config.build.data_settings`` makes it; the keys are described in rmtprune/conf/dataset/)."""

    name: str
    input_shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10
    root: str = "~/.cache/rmtprune"
    offline_dir: str | None = None
    download: bool = True
    verify_md5: bool = True
    train_size: int | None = None
    test_size: int | None = None
    val_size: int = 0
    val_seed: int = 0
    raw_md5: Mapping[str, str] = field(default_factory=dict, hash=False)
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DataSettings":
        """From plain values (a resolved ``dataset`` node); keys not listed above are ignored."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in values.items() if k in known}
        kw["input_shape"] = tuple(int(d) for d in kw.get("input_shape", cls.input_shape))
        kw["raw_md5"] = dict(kw.get("raw_md5") or {})
        kw["synthetic"] = SyntheticSettings(**dict(kw.get("synthetic") or {}))
        for key in ("val_size", "val_seed"):
            kw[key] = int(kw.get(key) or 0)
        return cls(**kw)


@dataclass
class Data:
    """Train and test tensors on one device: x (N, C, H, W) float32 in [-1, 1], y (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    name: str
    val_x: torch.Tensor | None = None  # the validation split (None without dataset.val_size)
    val_y: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_data(ds: DataSettings, device: torch.device) -> Data:
    """Load the data set ``ds`` (mnist | fashion_mnist | cifar10 | synthetic) onto ``device``."""
    if ds.name == "synthetic":
        tx, ty, vx, vy = make_synthetic(ds)
    else:
        tx, ty, vx, vy = _load_cifar10(ds) if ds.name == "cifar10" else _load_torchvision(ds)
        tx, vx = _scale(tx), _scale(vx)
    val_size = ds.val_size
    held_out = None
    if val_size:
        train_idx, val_idx = split_validation(len(tx), val_size, ds.val_seed, ds.name)
        held_out = (tx[val_idx].to(device), ty[val_idx].to(device))
        tx, ty = tx[train_idx], ty[train_idx]
    tx, ty = _subset(tx, ty, ds.train_size, "train_size", ds.name, val_size)
    vx, vy = _subset(vx, vy, ds.test_size, "test_size", ds.name)
    return Data(tx.to(device), ty.to(device), vx.to(device), vy.to(device), int(ds.num_classes), ds.name,
                *(held_out or (None, None)))


def split_validation(n_train: int, val_size: int, val_seed: int, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(training positions, validation positions) of a training split of ``n_train`` images, both ascending
    and disjoint, covering all: validation = ``sorted(randperm(n_train, Generator().manual_seed(val_seed))
    [:val_size])``. A UserError unless 0 < val_size < n_train."""
    if not 0 < val_size < n_train:
        raise UserError(f"dataset.val_size={val_size} must be below the {n_train} training images of dataset={name} "
                        f"(and positive; 0: no validation split)")
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(val_seed))
    held = torch.zeros(n_train, dtype=torch.bool)
    held[perm[:val_size]] = True
    return (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)


def _scale(images_uint8: torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) uint8 -> (N, C, H, W) float32 in [-1, 1]: (x / 255 - 0.5) / 0.5 in every
    channel."""
    x = images_uint8.float().div_(255.0).sub_(0.5).div_(0.5)
    return x.unsqueeze(1) if x.ndim == 3 else x


def _subset(x: torch.Tensor, y: torch.Tensor, size: int | None, key: str = "train_size",
            name: str = "", val_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` examples (all for None); more than the data set holds is a UserError naming the key."""
    if size is None:
        return x, y
    if size > len(x):
        part = "training" if key == "train_size" else "test"
        held = f" left beside dataset.val_size={val_size}" if val_size else ""
        raise UserError(f"dataset.{key}={size} exceeds the {len(x)} {part} examples{held} of dataset={name}; use at "
                        f"most {len(x)}, or dataset.{key}=null for all of them")
    return x[:size].contiguous(), y[:size].contiguous()


def make_synthetic(ds: DataSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A learnable MNIST-shaped set: x = tanh(P z_y + noise * e) / scale, fixed by its own seed.

    Class prototypes z_c ~ N(0, I_k) in a k-dimensional latent space are mapped to the
    input space by a random matrix P (d x k); the noise e is isotropic in the input space.
    Values are squashed into [-1, 1] like the real images.
    """
    gen = torch.Generator().manual_seed(int(ds.synthetic.data_seed))
    shape = tuple(int(d) for d in ds.input_shape)
    d = math.prod(shape)
    k, c = int(ds.synthetic.latent_dim), int(ds.num_classes)
    n_train = int(ds.train_size or 2000) + ds.val_size
    n_test = int(ds.test_size or 1000)
    proj = torch.randn(d, k, generator=gen) / math.sqrt(k)
    protos = torch.randn(c, k, generator=gen) * float(ds.synthetic.separation)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, c, (n,), generator=gen)
        z = protos[y] + torch.randn(n, k, generator=gen)
        x = z @ proj.T + float(ds.synthetic.noise) * torch.randn(n, d, generator=gen)
        return torch.tanh(x / 2.0).reshape(n, *shape), y

    tx, ty = draw(n_train)
    vx, vy = draw(n_test)
    return tx, ty, vx, vy


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_offline(ds: DataSettings, root: Path) -> None:
    """Decompress ``offline_dir/<name>/*.gz`` into ``root/<TorchvisionName>/raw`` and verify md5s.

    Files already in place with the right md5 are kept; a wrong one is rewritten from the
    mirror; a mirror file that is missing or whose content has the wrong md5 is a UserError.
    """
    src = Path(os.path.expanduser(str(ds.offline_dir))) / ds.name
    raw = root / _TORCHVISION_FOLDER[ds.name] / "raw"
    if not src.is_dir():
        raise UserError(f"dataset={ds.name}: offline folder {src} does not exist; {_FIX}")
    raw.mkdir(parents=True, exist_ok=True)
    verify = bool(ds.verify_md5)
    for stem, md5 in dict(ds.raw_md5).items():
        dest = raw / stem
        if dest.exists() and (not verify or _md5(dest) == md5):
            continue
        gz = src / f"{stem}.gz"
        plain = src / stem
        if gz.exists():
            # a temporary name of this process's own: jobs of a parallel sweep may fill the same cache
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            try:
                with gzip.open(gz, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            except (OSError, EOFError) as exc:
                tmp.unlink(missing_ok=True)
                if _cache_write_error(exc, tmp):
                    raise UserError(f"dataset={ds.name}: cannot write the decompressed {stem} into the data cache "
                                    f"{raw} ({exc.strerror}); free space there, or set RMTPRUNE_DATA_DIR (or "
                                    f"dataset.root) to another folder") from None
                raise UserError(f"dataset={ds.name}: {gz} is not a readable gzip file ({exc}); {_FIX}") from None
            os.replace(tmp, dest)
        elif plain.exists():
            shutil.copyfile(plain, dest)
        else:
            raise UserError(f"dataset={ds.name}: {gz} is missing from the offline folder; {_FIX}")
        if verify and _md5(dest) != md5:
            dest.unlink()
            raise UserError(f"dataset={ds.name}: {gz} is corrupt (md5 of its content is not {md5}); {_FIX}")


def _cache_write_error(exc: BaseException, tmp: Path) -> bool:
    """Whether ``exc`` came from writing ``tmp`` (a full or read-only cache), not from reading the mirror: the
    file system's own codes (a gzip format error has none)."""
    full = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
    return isinstance(exc, OSError) and (exc.errno in full or exc.filename == str(tmp))


def _data_root(ds: DataSettings) -> Path:
    """``dataset.root`` (the decompressed data cache), created if needed."""
    root = Path(os.path.expanduser(str(ds.root)))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"dataset.root={root} cannot be created ({exc.strerror})") from None
    return root


def _load_torchvision(ds: DataSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[ds.name]
    root = _data_root(ds)
    download = bool(ds.download)
    if ds.offline_dir:
        prepare_offline(ds, root)
        download = False
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"dataset={ds.name}: could not load from {root} ({first}); {_FIX}") from None
    return train.data, train.targets.long(), test.data, test.targets.long()


def _cifar_files() -> dict[str, str]:
    """The files of ``cifar-10-batches-py/`` with torchvision's (the official) md5 of each."""
    from torchvision.datasets import CIFAR10

    files = {name: md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list}
    files[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    return files


def _cifar_complete(folder: Path, verify: bool) -> list[str]:
    """The files of the CIFAR-10 batches missing from ``folder`` (or, if ``verify``, with a wrong md5)."""
    return [name for name, md5 in _cifar_files().items()
            if not (folder / name).is_file() or (verify and _md5(folder / name) != md5)]


def prepare_offline_cifar10(ds: DataSettings, root: Path) -> None:
    """Put the CIFAR-10 batches of ``offline_dir/cifar10/`` into ``root/cifar-10-batches-py``.

    The mirror holds the official ``cifar-10-python.tar.gz`` (its md5 checked against
    ``dataset.raw_md5``, then its batches extracted) or the extracted ``cifar-10-batches-py/`` (copied).
    With ``dataset.verify_md5`` every batch file is then checked against its official md5. Batches already
    in place (and right) are kept. A missing, unreadable or wrong mirror is a UserError.
    """
    verify = bool(ds.verify_md5)
    src = Path(os.path.expanduser(str(ds.offline_dir))) / "cifar10"
    dest = root / CIFAR_FOLDER
    if not _cifar_complete(dest, verify):
        return
    archive, extracted = src / CIFAR_ARCHIVE, src / CIFAR_FOLDER
    if not src.is_dir():
        raise UserError(f"dataset=cifar10: offline folder {src} does not exist; {_CIFAR_FIX}")
    dest.mkdir(parents=True, exist_ok=True)
    if archive.is_file():
        official = dict(ds.raw_md5).get(CIFAR_ARCHIVE)
        if verify and official and _md5(archive) != official:
            raise UserError(f"dataset=cifar10: {archive} is not the official archive (its md5 is not {official}: "
                            f"corrupt, truncated or another file); {_CIFAR_FIX}")
        _extract_cifar(archive, dest)
    elif extracted.is_dir():
        for name in _cifar_files():
            if (extracted / name).is_file():
                shutil.copyfile(extracted / name, dest / name)
    else:
        raise UserError(f"dataset=cifar10: neither {archive} nor {extracted}/ is in the offline folder; {_CIFAR_FIX}")
    bad = _cifar_complete(dest, verify)
    if bad:
        where = archive if archive.is_file() else extracted
        for name in bad:
            (dest / name).unlink(missing_ok=True)
        raise UserError(f"dataset=cifar10: {where} lacks or has corrupt batch files ({', '.join(bad)}: missing, or "
                        f"not their official md5); {_CIFAR_FIX}")


def _extract_cifar(archive: Path, dest: Path) -> None:
    """The batch files of ``cifar-10-batches-py/`` inside ``archive`` (a .tar.gz) into ``dest``; nothing
    else of the archive is written (no paths outside ``dest``, no links)."""
    wanted = {f"{CIFAR_FOLDER}/{name}": name for name in _cifar_files()}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name.lstrip("./"))
                if name is None or not member.isfile():
                    continue
                source = tar.extractfile(member)
                assert source is not None
                fd, tmp = mkstemp_beside(dest / name, suffix="")
                with source, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.replace(tmp, dest / name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"dataset=cifar10: {archive} is not a readable .tar.gz archive ({exc}); {_CIFAR_FIX}") from None


def _load_cifar10(ds: DataSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CIFAR-10 through torchvision's loader: (N, 3, 32, 32) uint8 images, (N,) int64 labels."""
    from torchvision import datasets

    root = _data_root(ds)
    download = bool(ds.download)
    cls = datasets.CIFAR10
    if ds.offline_dir:
        prepare_offline_cifar10(ds, root)
        download = False
    if ds.offline_dir or not ds.verify_md5:
        # checked above (or the check is off): torchvision's loader need not hash the files again
        class Unchecked(datasets.CIFAR10):
            train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
            test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
            meta = {**datasets.CIFAR10.meta, "md5": None}

        cls = Unchecked
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"dataset=cifar10: could not load from {root} ({first}); {_CIFAR_FIX}") from None

    def tensors(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()  # torchvision gives (N, H, W, C)
        return images, torch.as_tensor(split.targets, dtype=torch.long)

    return (*tensors(train), *tensors(test))
