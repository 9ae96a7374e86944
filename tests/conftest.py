"""Shared fixtures: an isolated data cache, the offline data mirror, and an in-process CLI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def offline_data_dir() -> Path | None:
    """The offline MNIST / Fashion-MNIST mirror: $RMTPRUNE_OFFLINE_DATA (relative to where pytest started,
    as the README's ``../shared/datasets``), else ../shared/datasets; absolute, since tests run from
    other folders."""
    env = os.environ.get("RMTPRUNE_OFFLINE_DATA")
    for cand in ([Path(env).expanduser()] if env else []) + [REPO.parent / "shared" / "datasets"]:
        if (cand / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return cand.resolve()
    return None


OFFLINE = offline_data_dir()
needs_real_data = pytest.mark.skipif(
    OFFLINE is None, reason="no offline MNIST mirror: set RMTPRUNE_OFFLINE_DATA to a folder with mnist/*.gz")


# the longest test (minutes): first, so that with ``-n auto`` (pytest-xdist) the others run beside it
LONGEST_FIRST = ("tests/test_gpu_check.py::test_dry_run_runs_every_stage_and_reports_it",)


def pytest_collection_modifyitems(config, items):
    """The longest tests first (:data:`LONGEST_FIRST`); tests marked ``cuda`` skip, with the reason, on a machine
    without a CUDA GPU."""
    import torch

    items.sort(key=lambda item: item.nodeid not in LONGEST_FIRST)   # stable: the others keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests use tiny tensors: one intra-op thread is fastest, and on a shared machine two OpenMP threads
    that wait for each other make a small training step over 100 times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _brief_latency_timing():
    """Runs that keep ``cost.latency=true`` time each model once for 20 ms: tests check the latency fields,
    not speed (tests/test_costs.py times the dense model against itself as runs do)."""
    import rmtprune.nn.costs

    before = rmtprune.nn.costs.MIN_RUN_TIME, rmtprune.nn.costs.ROUNDS
    rmtprune.nn.costs.MIN_RUN_TIME, rmtprune.nn.costs.ROUNDS = 0.02, 1
    yield
    rmtprune.nn.costs.MIN_RUN_TIME, rmtprune.nn.costs.ROUNDS = before


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_cache(tmp_path_factory):
    """Decompressed data goes to a temporary cache, never to the user's home or the mirror."""
    cache = tmp_path_factory.mktemp("data-cache")
    old = {k: os.environ.get(k) for k in ("RMTPRUNE_DATA_DIR", "RMTPRUNE_OFFLINE_DATA")}
    os.environ["RMTPRUNE_DATA_DIR"] = str(cache)
    if OFFLINE is not None:
        os.environ["RMTPRUNE_OFFLINE_DATA"] = str(OFFLINE)
    else:
        os.environ.pop("RMTPRUNE_OFFLINE_DATA", None)
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run ``rmtprune ARGS`` in-process from an empty folder; returns (exit code, stdout, stderr)."""
    from rmtprune.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_subprocess(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


FAST = ["dataset=synthetic", "progress=none", "magnitude_sweep.enabled=false", "cost.latency=false",
        "topology=784-256-128-10", "pruning=none"]
# Smaller still, for tests of the command line rather than of training (a second per run).
TINY = ["dataset=synthetic", "dataset.train_size=500", "dataset.test_size=200", "progress=none",
        "magnitude_sweep.enabled=false", "cost.latency=false", "topology=784-32-10", "pruning=none"]


def rmtprune_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m rmtprune``."""
    exe = Path(sys.executable).parent / "rmtprune"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "rmtprune"]


@contextlib.contextmanager
def interrupted_at(monkeypatch, epoch: int):
    """Inside the block, ``rmtprune train`` stops with Ctrl-C (KeyboardInterrupt) when epoch ``epoch`` starts
    (train.train_epoch patched); the real epoch is back after it."""
    import rmtprune.train.loop as train_mod

    original = train_mod.train_epoch

    def crash(*a, **kw):
        if a[-1] == epoch:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(train_mod, "train_epoch", crash)
    try:
        yield
    finally:
        monkeypatch.setattr(train_mod, "train_epoch", original)
