"""Data sets as whole tensors on the training device.

Real data goes through torchvision's MNIST / FashionMNIST loaders (which download where a
network exists). Offline, the gzip-compressed IDX files of a local mirror (a folder holding
``mnist/`` and ``fashion_mnist/``, named by ``dataset.offline_dir`` or the environment variable
``RMTPRUNE_OFFLINE_DATA``) are decompressed into torchvision's raw folder under ``dataset.root``
and checked against the md5 sums of the config. Images are scaled to [-1, 1]
(Normalize(0.5, 0.5), as in the paper) once; batches are index slices, no per-sample transforms.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from .errors import UserError

log = logging.getLogger(__name__)

_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_FIX = (
    "set RMTPRUNE_OFFLINE_DATA (or dataset.offline_dir) to a folder holding mnist/ and "
    "fashion_mnist/ with the IDX .gz files, or allow downloads (dataset.download=true, network needed)"
)


@dataclass
class Data:
    """Train and test tensors on one device: x (N, C, H, W) float32 in [-1, 1], y (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_data(cfg: DictConfig, device: torch.device) -> Data:
    """Load ``cfg.dataset`` (mnist | fashion_mnist | synthetic) onto ``device``."""
    ds = cfg
    if ds.name == "synthetic":
        tx, ty, vx, vy = make_synthetic(ds)
    else:
        tx, ty, vx, vy = _load_torchvision(ds)
        tx, vx = _scale(tx), _scale(vx)
    tx, ty = _subset(tx, ty, ds.train_size)
    vx, vy = _subset(vx, vy, ds.test_size)
    return Data(tx.to(device), ty.to(device), vx.to(device), vy.to(device), int(ds.num_classes), ds.name)


def _scale(images_uint8: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [-1, 1]: (x / 255 - 0.5) / 0.5."""
    return (images_uint8.float().div_(255.0).sub_(0.5).div_(0.5)).unsqueeze(1)


def _subset(x: torch.Tensor, y: torch.Tensor, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None or size >= len(x):
        return x, y
    return x[:size].contiguous(), y[:size].contiguous()


def make_synthetic(ds: DictConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A learnable MNIST-shaped set: x = tanh(P z_y + noise * e) / scale, fixed by its own seed.

    Class prototypes z_c ~ N(0, I_k) in a k-dimensional latent space are mapped to the
    input space by a random matrix P (d x k); the noise e is isotropic in the input space.
    Values are squashed into [-1, 1] like the real images.
    """
    gen = torch.Generator().manual_seed(int(ds.synthetic.data_seed))
    shape = tuple(int(d) for d in ds.input_shape)
    d = math.prod(shape)
    k, c = int(ds.synthetic.latent_dim), int(ds.num_classes)
    n_train = int(ds.train_size or 2000)
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


def prepare_offline(ds: DictConfig, root: Path) -> None:
    """Decompress ``offline_dir/<name>/*.gz`` into ``root/<TorchvisionName>/raw`` and verify md5s.

    Files already in place with the right md5 are kept; a wrong one is rewritten from the
    mirror; a mirror file that is missing or whose content has the wrong md5 is a UserError.
    """
    src = Path(os.path.expanduser(str(ds.offline_dir))) / ds.name
    raw = root / _TORCHVISION_FOLDER[ds.name] / "raw"
    if not src.is_dir():
        raise UserError(f"dataset={ds.name}: offline folder {src} does not exist; {_FIX}")
    raw.mkdir(parents=True, exist_ok=True)
    for stem, md5 in ds.raw_md5.items():
        dest = raw / stem
        if dest.exists() and _md5(dest) == md5:
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
                raise UserError(f"dataset={ds.name}: {gz} is not a readable gzip file ({exc}); {_FIX}") from None
            os.replace(tmp, dest)
        elif plain.exists():
            shutil.copyfile(plain, dest)
        else:
            raise UserError(f"dataset={ds.name}: {gz} is missing from the offline folder; {_FIX}")
        if _md5(dest) != md5:
            dest.unlink()
            raise UserError(f"dataset={ds.name}: {gz} is corrupt (md5 of its content is not {md5}); {_FIX}")


def _load_torchvision(ds: DictConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[ds.name]
    root = Path(os.path.expanduser(str(ds.root)))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"dataset.root={root} cannot be created ({exc.strerror})") from None
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
