"""A pruned Lightning checkpoint read back: by ``rmtprune inspect``, and in a fresh process through
``Module.load_from_checkpoint`` and ``trainer.validate/test/predict(ckpt_path=)``."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

pytest.importorskip("lightning.pytorch")

from conftest import REPO  # noqa: E402
from tests_support.lightning_nets import Classifier, loader, trainer  # noqa: E402

from rmtprune.integrations.lightning import RMTPruning  # noqa: E402
from rmtprune.nn.layers import LowRankLinear  # noqa: E402


@pytest.fixture
def pruned_ckpt(tmp_path):
    """A checkpoint of Classifier after 2 epochs with one one-shot event (net.0 split at its 6 spikes), and
    the module's outputs on fixed inputs."""
    module = Classifier()
    t = trainer(2, [RMTPruning(schedule="oneshot", min_size=1000)], str(tmp_path))
    t.fit(module, loader())
    assert isinstance(module.net[0], LowRankLinear) and module.net[0].rank == 6
    path = tmp_path / "pruned.ckpt"
    t.save_checkpoint(path)
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.save({"x": x, "y": module(x)}, tmp_path / "expected.pt")
    return path, module


def test_inspect_reads_a_lightning_checkpoint(cli, pruned_ckpt, tmp_path):
    path, module = pruned_ckpt
    code, out, err = cli("inspect", str(path), "--format", "csv", "--min-size", "1000")
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "inspect.csv").set_index("layer")
    assert list(rows.index) == ["net.0", "net.2", "total"]  # the split layer is one layer, of rank 6
    assert rows.loc["net.0", "rank_now"] == 6 and rows.loc["net.0", "n_known_spikes"] == 6  # callback state read
    assert rows.loc["total", "params_now"] == sum(p.numel() for p in module.parameters())


SCRIPT = """
import sys, torch
from rmtprune.integrations.lightning import RMTPruning
from rmtprune.nn.layers import LowRankLinear
from tests_support.lightning_nets import Classifier, LoadableClassifier, loader, trainer

path, expected = sys.argv[1], torch.load(sys.argv[2], weights_only=True)

def same(module):
    assert isinstance(module.net[0], LowRankLinear) and module.net[0].rank == 6, module
    with torch.no_grad():
        assert torch.allclose(module(expected["x"]), expected["y"], atol=1e-6)

same(LoadableClassifier.load_from_checkpoint(path))
for stage in ("validate", "test", "predict"):
    module = Classifier()  # dense: the callback splits it before Lightning loads the weights
    getattr(trainer(1, [RMTPruning()], sys.argv[3]), stage)(module, loader(), ckpt_path=path)
    same(module)
print("loaded")
"""


@pytest.mark.slow
def test_a_pruned_lightning_checkpoint_loads_in_a_fresh_process(pruned_ckpt, tmp_path):
    path, _ = pruned_ckpt
    paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]  # this checkout's rmtprune
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(tmp_path / "expected.pt"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-3000:]
