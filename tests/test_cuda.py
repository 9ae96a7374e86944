"""Checks that need a CUDA GPU (marker ``cuda``: skipped without one; benchmarks/gpu_check.sh runs
them with ``pytest -m cuda``). Small synthetic runs, seconds each on a GPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, interrupted_at

from rmtprune.config.build import data_settings, optimizer_settings, run_settings

pytestmark = pytest.mark.cuda

GPU = [*FAST, "device=cuda", "dataset.train_size=1024", "dataset.test_size=512"]
RMT = ["pruning=rmt", "schedule.horizon=4", "pruning.min_size=1000"]


def metrics(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def tensors_in(obj) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_in(v)]
    return []


def test_same_seed_twice_is_bitwise_identical_with_deterministic(cli, tmp_path):
    args = [*GPU, *RMT, "epochs=3", "deterministic=true"]
    for name in ("a", "b"):
        code, _, err = cli("train", *args, f"hydra.run.dir={name}")
        assert code == 0, err
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert summary(tmp_path / "a")["device"].startswith("cuda")


def test_the_cnn_trains_deterministically_on_the_gpu(cli, tmp_path):
    """Every op of the CNN (conv, batch norm, max-pool, dropout) has a deterministic CUDA kernel."""
    args = [*GPU, "model=cnn", "model.channels=[8,8,16,16,16]", "model.hidden=32", "epochs=2",
            "deterministic=true", "pruning=rmt", "pruning.conv_tolerance=1", "pruning.min_size=500",
            "schedule=oneshot"]
    for name in ("a", "b"):
        code, _, err = cli("train", *args, f"hydra.run.dir={name}")
        assert code == 0, err
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    with open(tmp_path / "a" / "layers.csv") as f:
        assert {r["kind"] for r in csv.DictReader(f)} == {"conv", "linear"}


def test_interrupted_gpu_run_resumes_to_identical_metrics(cli, tmp_path, monkeypatch):
    args = [*GPU, *RMT, "epochs=4", "deterministic=true"]
    assert cli("train", *args, "hydra.run.dir=full")[0] == 0
    with interrupted_at(monkeypatch, 3):
        assert cli("train", *args, "output_root=part", "hydra.run.dir=part/first")[0] == 130
    code, _, err = cli("train", *args, "output_root=part", "resume=true", "hydra.run.dir=part/second")
    assert code == 0, err
    assert metrics(tmp_path / "part" / "first") == metrics(tmp_path / "full")


@pytest.mark.parametrize("first,second", [("cpu", "cuda"), ("cuda", "cpu")])
def test_resume_across_devices(cli, tmp_path, monkeypatch, first, second):
    """A run interrupted on one device continues on the other: its first epochs are kept, the
    optimizer state moves with the parameters, and it ends as the uninterrupted run does (close, not
    bitwise: CPU and GPU kernels round differently)."""
    base = [a for a in GPU if not a.startswith("device=")] + [*RMT, "epochs=4", "deterministic=true"]
    code, _, err = cli("train", *base, f"device={first}", "hydra.run.dir=full")
    assert code == 0, err
    with interrupted_at(monkeypatch, 3):
        assert cli("train", *base, f"device={first}", "output_root=part", "hydra.run.dir=part/first")[0] == 130
    code, _, err = cli("train", *base, f"device={second}", "output_root=part", "resume=true", "hydra.run.dir=part/x")
    assert code == 0, err
    part, full = metrics(tmp_path / "part" / "first"), metrics(tmp_path / "full")
    assert [r["epoch"] for r in part] == ["1", "2", "3", "4"] and part[:2] == full[:2]
    for p, f in zip(part[2:], full[2:]):
        assert abs(float(p["test_acc"]) - float(f["test_acc"])) < 0.03
        assert float(p["train_loss"]) == pytest.approx(float(f["train_loss"]), rel=0.05)
    assert summary(tmp_path / "part" / "first")["device"].startswith(second)


def test_gpu_checkpoint_loads_on_a_machine_without_cuda(cli, tmp_path):
    code, _, err = cli("train", *GPU, "epochs=1", "hydra.run.dir=run")
    assert code == 0, err
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    found = tensors_in(ckpt)
    assert found and all(t.device.type == "cpu" for t in found)
    assert tensors_in(ckpt["optimizer"]["state"])  # the momentum buffers are there, on the CPU
    script = ("import torch, sys; from rmtprune.train.checkpoint import rebuild_model\n"
              "assert not torch.cuda.is_available()\n"
              "c = torch.load(sys.argv[1], weights_only=True)\n"
              "rebuild_model(c)\n"
              "print('loaded', c['epoch'])\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run" / "checkpoint.pt")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "loaded 1" in res.stdout, res.stderr[-2000:]


def test_optimizer_state_goes_back_onto_the_gpu(tmp_path):
    from rmtprune.train.checkpoint import save_atomic

    model = torch.nn.Linear(8, 4).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 8, device="cuda")).sum().backward()
    opt.step()
    save_atomic({"optimizer": opt.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["optimizer"]
    assert all(t.device.type == "cpu" for t in tensors_in(state))
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(state)
    for p in model.parameters():
        assert opt2.state[p]["momentum_buffer"].is_cuda
        assert torch.equal(opt2.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_runs_learn(cli, tmp_path, precision):
    code, _, err = cli("train", *GPU, *RMT, "epochs=3", f"precision={precision}", "hydra.run.dir=run")
    assert code == 0, err
    assert summary(tmp_path / "run")["final_test_acc"] > 0.6


def test_tf32_setting_changes_gpu_matmuls():
    from omegaconf import OmegaConf

    from rmtprune.config.schema import RunConfig
    from rmtprune.train.step import configure_numerics

    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(1024, 1024, device="cuda", generator=gen)
    b = torch.randn(1024, 1024, device="cuda", generator=gen)
    exact = (a.double() @ b.double())
    try:
        configure_numerics(run_settings(OmegaConf.merge(OmegaConf.structured(RunConfig), {"precision": "fp32"})), torch.device("cuda"))
        err32 = (a @ b - exact).abs().max().item()
        configure_numerics(run_settings(OmegaConf.merge(OmegaConf.structured(RunConfig), {"precision": "tf32"})), torch.device("cuda"))
        err_tf32 = (a @ b - exact).abs().max().item()
    finally:
        configure_numerics(run_settings(OmegaConf.structured(RunConfig)), torch.device("cuda"))
    # TF32 keeps 10 mantissa bits (relative error ~5e-4 per product), fp32 23
    assert err_tf32 > 10 * err32


def test_compiled_step_on_the_gpu_matches_eager(cli, tmp_path):
    args = [*GPU, "epochs=2", "deterministic=false"]
    assert cli("train", *args, "hydra.run.dir=eager")[0] == 0
    code, _, err = cli("train", *args, "compile=true", "hydra.run.dir=compiled")
    assert code == 0, err
    for e, c in zip(metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")):
        assert float(c["train_loss"]) == pytest.approx(float(e["train_loss"]), rel=1e-3)


def test_an_epoch_waits_for_the_gpu_only_at_logging_points():
    """45 batches: logging points after batches 20, 40 and 45 read the running loss and accuracy
    (two syncs each), the epoch's result two more, the order upload one: at most 9, not one per batch."""
    from omegaconf import OmegaConf

    from rmtprune.config.schema import DatasetConfig, OptimizerConfig
    from rmtprune.data import load_data
    from rmtprune.nn.models import build_model
    from rmtprune.train.progress import BatchProgress
    from rmtprune.train.state import make_optimizer
    from rmtprune.train.step import train_epoch

    ds = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"name": "synthetic", "train_size": 45 * 32})
    data = load_data(data_settings(ds), torch.device("cuda"))
    model = build_model({"kind": "mlp", "widths": [784, 64, 10]}).cuda()
    opt = make_optimizer(model, optimizer_settings(OmegaConf.structured(OptimizerConfig)), 0.05)
    gen = torch.Generator().manual_seed(0)
    with BatchProgress("none") as progress:
        train_epoch(model, data, opt, gen, 32, 1e-5, progress, 1)  # warm-up: first-step allocations
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_epoch(model, data, opt, gen, 32, 1e-5, progress, 2)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 9, [str(w.message)[:120] for w in syncs]


def test_prune_a_gpu_run_on_the_gpu(cli, tmp_path):
    assert cli("train", *GPU, "epochs=2", "hydra.run.dir=trained")[0] == 0
    code, _, err = cli("prune", "trained", *GPU, "pruning=rmt", "pruning.min_size=1000", "schedule=constant",
                       "schedule.value=0.5", "finetune_epochs=1", "hydra.run.dir=pruned")
    assert code == 0, err
    s = summary(tmp_path / "pruned")
    assert s["n_params_after"] < s["n_params_before"] and s["test_acc_finetuned"] > 0.5
