"""Where a run ran and with which code: recorded in every summary.json.

Floating-point sums depend on the thread count, the CPU and the BLAS, so a seed fixes a run's numbers
only for the same thread count on the same kind of machine; these records let ``compare`` tell when
an arm mixes machines.
"""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmtprune import __version__
from rmtprune.buildinfo import git_commit


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``rmtprune <version>`` plus the git commit (``+g<hash>``, ``.dirty`` with uncommitted changes): of the
    source tree when it is a checkout, else the one recorded when this copy was built (``pip install .``)."""
    commit = git_commit(Path(__file__).resolve().parents[2])  # the checkout: rmtprune/train/environment.py
    if commit is None:
        try:
            from rmtprune._version import commit  # type: ignore[no-redef]
        except ImportError:  # built without git (an sdist), or not built at all
            commit = None
    return f"{__version__}+{commit}" if commit else __version__


def versions() -> dict[str, str]:
    """Versions of rmtprune (with its commit) and of the libraries that compute a run."""
    import hydra

    return {"rmtprune": code_version(), "torch": torch.__version__, "numpy": np.__version__,
            "hydra": hydra.__version__, "python": platform.python_version()}


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def blas() -> str:
    """The BLAS torch was built with (``BLAS_INFO`` of ``torch.__config__.show()``), e.g. ``mkl``."""
    match = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return match.group(1) if match else "unknown"


def machine(device: torch.device) -> dict[str, Any]:
    """The facts that decide a run's floating-point results: device, torch threads, CPU, the kernels torch
    dispatches to on it (``cpu_capability``: two CPUs of one model name may round differently, e.g. AVX2
    against AVX512), BLAS, GPU."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": str(device), "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "blas": blas(), "gpu": gpu}
