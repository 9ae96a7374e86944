"""Data loading: the offline mirror with md5 checks, and the synthetic set."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch
from conftest import OFFLINE, REPO, needs_real_data
from omegaconf import OmegaConf

from rmtprune.config.build import data_settings
from rmtprune.config.schema import DatasetConfig
from rmtprune.data import load_data, make_synthetic
from rmtprune.errors import UserError


def dataset_cfg(name, **kw):
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(REPO / "rmtprune" / "conf" / "dataset" / f"{name}.yaml"))
    return OmegaConf.merge(cfg, kw)


def test_synthetic_is_mnist_shaped_fixed_and_independent_of_the_training_seed():
    cfg = dataset_cfg("synthetic")
    a = load_data(data_settings(cfg), torch.device("cpu"))
    b = load_data(data_settings(cfg), torch.device("cpu"))
    assert a.train_x.shape == (2000, 1, 28, 28) and a.test_x.shape == (1000, 1, 28, 28)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.min() >= -1 and a.train_x.max() <= 1 and a.num_classes == 10
    assert set(a.train_y.tolist()) == set(range(10))
    other = make_synthetic(data_settings(dataset_cfg("synthetic", synthetic={"data_seed": 5})))
    assert not torch.equal(other[0], a.train_x)


@pytest.mark.slow
@needs_real_data
def test_offline_mirror_is_decompressed_checked_and_scaled(tmp_path):
    cfg = dataset_cfg("mnist", root=str(tmp_path / "cache"), offline_dir=str(OFFLINE), test_size=500)
    d = load_data(data_settings(cfg), torch.device("cpu"))
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (500, 1, 28, 28)
    assert float(d.train_x.min()) == -1.0 and float(d.train_x.max()) == 1.0
    assert torch.bincount(d.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert (tmp_path / "cache" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


@pytest.mark.slow
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
        load_data(data_settings(cfg), torch.device("cpu"))
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="missing"):
        load_data(data_settings(cfg), torch.device("cpu"))
    with pytest.raises(UserError, match="RMTPRUNE_OFFLINE_DATA"):
        load_data(data_settings(dataset_cfg("mnist", root=str(tmp_path / "c2"), offline_dir=str(tmp_path / "nowhere"))),
                  torch.device("cpu"))


def test_no_mirror_and_no_network_is_a_clear_error(tmp_path):
    cfg = dataset_cfg("fashion_mnist", root=str(tmp_path / "cache"), offline_dir=None, download=False)
    with pytest.raises(UserError, match="RMTPRUNE_OFFLINE_DATA"):
        load_data(data_settings(cfg), torch.device("cpu"))


# --- CIFAR-10: a tiny archive in the official format --------------------------------------------------

def cifar_batch(n: int, seed: int) -> dict:
    """A batch as the official python pickles hold it: ``data`` (n, 3072) uint8, rows of the red, green and
    blue 32x32 planes in row-major order, and ``labels``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, size=n)], "batch_label": f"batch {seed}"}


def make_cifar_mirror(folder, archive: bool = True, n: int = 6) -> dict:
    """``folder/cifar10/`` holding a tiny ``cifar-10-python.tar.gz`` (or its extracted folder); returns the
    batches by file name."""
    import io
    import pickle
    import tarfile

    batches = {f"data_batch_{i}": cifar_batch(n, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n, 9)
    files = {name: pickle.dumps(b) for name, b in batches.items()}
    files["batches.meta"] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    root = folder / "cifar10"
    root.mkdir(parents=True)
    if archive:
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, blob in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (root / "cifar-10-batches-py").mkdir()
        for name, blob in files.items():
            (root / "cifar-10-batches-py" / name).write_bytes(blob)
    return batches


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_from_an_offline_archive_or_folder_in_the_official_format(tmp_path, archive):
    import numpy as np

    batches = make_cifar_mirror(tmp_path / "mirror", archive=archive)
    cfg = dataset_cfg("cifar10", root=str(tmp_path / "cache"), offline_dir=str(tmp_path / "mirror"), verify_md5=False)
    d = load_data(data_settings(cfg), torch.device("cpu"))
    assert d.train_x.shape == (30, 3, 32, 32) and d.test_x.shape == (6, 3, 32, 32) and d.input_shape == (3, 32, 32)
    # pixel (c, h, w) of image i is byte c * 1024 + h * 32 + w of its row, scaled by (x / 255 - 0.5) / 0.5
    raw = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    i, c, h, w = 7, 2, 5, 30
    assert float(d.train_x[i, c, h, w]) == pytest.approx((raw[i, c * 1024 + h * 32 + w] / 255 - 0.5) / 0.5)
    expected = torch.from_numpy(raw.reshape(30, 3, 32, 32).astype(np.float32) / 127.5 - 1)
    assert torch.allclose(d.train_x, expected, atol=1e-6)
    assert d.train_y.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert d.test_y.tolist() == batches["test_batch"]["labels"]
    assert (tmp_path / "cache" / "cifar-10-batches-py" / "test_batch").exists()


def test_cifar10_md5_check_refuses_an_archive_that_is_not_the_official_one(tmp_path):
    make_cifar_mirror(tmp_path / "mirror")
    cfg = dataset_cfg("cifar10", root=str(tmp_path / "cache"), offline_dir=str(tmp_path / "mirror"))
    assert cfg.verify_md5 is True and cfg.raw_md5["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    with pytest.raises(UserError, match="not the official archive.*c58f30108f718f92721af3b95e74349a"):
        load_data(data_settings(cfg), torch.device("cpu"))
    assert not (tmp_path / "cache" / "cifar-10-batches-py" / "test_batch").exists()


def test_cifar10_extracted_batches_are_checked_against_the_official_md5(tmp_path):
    make_cifar_mirror(tmp_path / "mirror", archive=False)
    cfg = dataset_cfg("cifar10", root=str(tmp_path / "cache"), offline_dir=str(tmp_path / "mirror"))
    with pytest.raises(UserError, match="corrupt batch files .*data_batch_1"):
        load_data(data_settings(cfg), torch.device("cpu"))


def test_cifar10_missing_or_broken_mirror_is_a_clear_error(tmp_path):
    (tmp_path / "mirror" / "cifar10").mkdir(parents=True)
    cfg = dataset_cfg("cifar10", root=str(tmp_path / "cache"), offline_dir=str(tmp_path / "mirror"), verify_md5=False)
    with pytest.raises(UserError, match="cifar-10-python.tar.gz"):
        load_data(data_settings(cfg), torch.device("cpu"))
    (tmp_path / "mirror" / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        load_data(data_settings(cfg), torch.device("cpu"))
    cfg = dataset_cfg("cifar10", root=str(tmp_path / "c2"), offline_dir=None, download=False)
    with pytest.raises(UserError, match="RMTPRUNE_OFFLINE_DATA"):
        load_data(data_settings(cfg), torch.device("cpu"))


def test_a_train_size_larger_than_the_data_set_is_an_error_naming_the_key(tmp_path):
    make_cifar_mirror(tmp_path / "mirror")
    cfg = dataset_cfg("cifar10", root=str(tmp_path / "cache"), offline_dir=str(tmp_path / "mirror"), verify_md5=False)
    assert len(load_data(data_settings(OmegaConf.merge(cfg, {"train_size": 30})), torch.device("cpu")).train_x) == 30
    with pytest.raises(UserError, match=r"dataset.train_size=31 exceeds the 30 training examples"):
        load_data(data_settings(OmegaConf.merge(cfg, {"train_size": 31})), torch.device("cpu"))
    with pytest.raises(UserError, match=r"dataset.test_size=7 exceeds the 6 test examples"):
        load_data(data_settings(OmegaConf.merge(cfg, {"test_size": 7})), torch.device("cpu"))


def test_reference_cnn_adapts_to_the_channels_and_size_of_cifar_images():
    from rmtprune.nn.models import build_model

    spec = {"kind": "cnn", "input_shape": [3, 32, 32], "num_classes": 10, "channels": [4, 4, 4, 4, 8],
            "kernel_size": 3, "pool_after": [3, 5], "hidden": 16, "conv_dropout": 0.0, "fc_dropout": 0.0}
    model = build_model(spec).eval()
    # 32 -> 30 -> 28 -> 26 -> pool 13 -> 11 -> 9 -> pool 4: 8 channels of 4 x 4 reach the classifier
    assert model.features[0].in_channels == 3 and model.classifier[1].in_features == 8 * 4 * 4
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    mnist = build_model({**spec, "input_shape": [1, 28, 28]})
    # 28 -> 26 -> 24 -> 22 -> pool 11 -> 9 -> 7 -> pool 3
    assert mnist.features[0].in_channels == 1 and mnist.classifier[1].in_features == 8 * 3 * 3


@pytest.mark.slow
def test_cifar10_trains_from_the_command_line_on_a_made_archive(cli, tmp_path):
    import json

    make_cifar_mirror(tmp_path / "mirror")
    args = ["dataset=cifar10", f"dataset.offline_dir={tmp_path / 'mirror'}", "dataset.verify_md5=false",
            "model=cnn", "model.channels=[4,4,4,4,4]", "model.hidden=16", "epochs=1", "pruning=none",
            "progress=none", "magnitude_sweep.enabled=false", "hydra.run.dir=run"]
    code, _, err = cli("train", *args)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dataset"] == "cifar10"
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["input_shape"] == [3, 32, 32]
    # a train_size beyond the data, or convolutions that eat the whole image: one line, exit 2
    code, _, err = cli("train", *args[:-1], "dataset.train_size=100", "hydra.run.dir=big")
    assert code == 2 and "dataset.train_size=100 exceeds the 30 training examples" in err
    code, _, err = cli("train", *args[:-1], "model.channels=[4,4,4,4,4,4,4]", "hydra.run.dir=small")
    assert code == 2 and "too small for 7 3x3 convs" in err and err.count("rmtprune: error:") == 1


@needs_real_data
@pytest.mark.parametrize("failure", ["full", "read-only"])
def test_a_full_or_read_only_data_cache_is_blamed_not_the_good_mirror(tmp_path, monkeypatch, failure):
    import errno

    import rmtprune.data

    def full(fin, fout, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open

    def read_only(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    if failure == "full":
        monkeypatch.setattr(rmtprune.data.shutil, "copyfileobj", full)
    else:
        monkeypatch.setattr("builtins.open", read_only)
    cfg = dataset_cfg("mnist", root=str(tmp_path / "cache"), offline_dir=str(OFFLINE))
    with pytest.raises(UserError) as info:
        load_data(data_settings(cfg), torch.device("cpu"))
    message = str(info.value)
    assert "cannot write the decompressed" in message and "RMTPRUNE_DATA_DIR" in message
    assert "not a readable gzip file" not in message
