"""Data loading: the offline mirror with md5 checks, and the synthetic set."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from conftest import OFFLINE, REPO, needs_real_data
from rmtprune.config import DatasetConfig
from rmtprune.data import load_data, make_synthetic
from rmtprune.errors import UserError


def dataset_cfg(name, **kw):
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(REPO / "conf" / "dataset" / f"{name}.yaml"))
    return OmegaConf.merge(cfg, kw)


def test_synthetic_is_mnist_shaped_fixed_and_independent_of_the_training_seed():
    cfg = dataset_cfg("synthetic")
    a = load_data(cfg, torch.device("cpu"))
    b = load_data(cfg, torch.device("cpu"))
    assert a.train_x.shape == (2000, 1, 28, 28) and a.test_x.shape == (1000, 1, 28, 28)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.min() >= -1 and a.train_x.max() <= 1 and a.num_classes == 10
    assert set(a.train_y.tolist()) == set(range(10))
    other = make_synthetic(dataset_cfg("synthetic", synthetic={"data_seed": 5}))
    assert not torch.equal(other[0], a.train_x)


@needs_real_data
def test_offline_mirror_is_decompressed_checked_and_scaled(tmp_path):
    cfg = dataset_cfg("mnist", root=str(tmp_path / "cache"), offline_dir=str(OFFLINE), test_size=500)
    d = load_data(cfg, torch.device("cpu"))
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (500, 1, 28, 28)
    assert float(d.train_x.min()) == -1.0 and float(d.train_x.max()) == 1.0
    assert torch.bincount(d.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert (tmp_path / "cache" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


@needs_real_data
def test_corrupt_or_missing_mirror_files_are_clear_errors(tmp_path):
    mirror = tmp_path / "mirror" / "mnist"
    shutil.copytree(OFFLINE / "mnist", mirror)
    with gzip.open(mirror / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        data = bytearray(f.read())
    data[100] ^= 0xFF
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    with gzip.open(mirror / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(data))
    cfg = dataset_cfg("mnist", root=str(tmp_path / "cache"), offline_dir=str(tmp_path / "mirror"))
    with pytest.raises(UserError, match="corrupt"):
        load_data(cfg, torch.device("cpu"))
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="missing"):
        load_data(cfg, torch.device("cpu"))
    with pytest.raises(UserError, match="RMTPRUNE_OFFLINE_DATA"):
        load_data(dataset_cfg("mnist", root=str(tmp_path / "c2"), offline_dir=str(tmp_path / "nowhere")),
                  torch.device("cpu"))


def test_no_mirror_and_no_network_is_a_clear_error(tmp_path):
    cfg = dataset_cfg("fashion_mnist", root=str(tmp_path / "cache"), offline_dir=None, download=False)
    with pytest.raises(UserError, match="RMTPRUNE_OFFLINE_DATA"):
        load_data(cfg, torch.device("cpu"))
