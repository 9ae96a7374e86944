"""``rmtprune inspect`` and ``rmtprune prune`` on saved models."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import FAST
from rmtprune.checkpoint import model_payload, save_atomic
from rmtprune.models import build_model


def planted(out, inp, rank, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    critical = sigma * (out * inp) ** 0.25
    u = torch.linalg.qr(torch.randn(out, rank, generator=g))[0]
    v = torch.linalg.qr(torch.randn(inp, rank, generator=g))[0]
    return sigma * torch.randn(out, inp, generator=g) + (u * torch.linspace(4.0, 2.0, rank) * critical) @ v.T


PLANTED = {"layers.0": (400, 784, 6), "layers.1": (300, 400, 3)}


def planted_model():
    model = build_model({"kind": "mlp", "widths": [784, 400, 300, 10]})
    with torch.no_grad():
        for i, (name, (out, inp, rank)) in enumerate(PLANTED.items()):
            model.get_submodule(name).weight.copy_(planted(out, inp, rank, 0.05, i))
    return model


@pytest.mark.parametrize("form", ["checkpoint", "state_dict"])
def test_inspect_reports_the_planted_spike_counts(cli, tmp_path, form):
    model = planted_model()
    path = tmp_path / "m.pt"
    if form == "checkpoint":
        save_atomic(model_payload(model, {"kind": "mlp", "widths": [784, 400, 300, 10]}, 10, [1, 28, 28]), path)
    else:
        torch.save(model.state_dict(), path)
    code, out, err = cli("inspect", str(path), "--plots", "--out", str(tmp_path / "view"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "view" / "inspect.csv")
    rows = table.set_index("layer")
    for name, (_, _, rank) in PLANTED.items():
        assert rows.loc[name, "n_spikes"] == rank
        assert rows.loc[name, "rank_after_prune"] == rank and rows.loc[name, "action"] == "split"
        assert bool(rows.loc[name, "good_fit"])
    assert rows.loc["total", "params_after"] < rows.loc["total", "params_now"]
    assert (tmp_path / "view" / "inspect.md").read_text().count("| layers.") == 3
    assert (tmp_path / "view" / "esd_layers_0.png").stat().st_size > 5000


def test_prune_a_trained_model_keeps_accuracy_and_shrinks_it(cli, tmp_path):
    args = [*FAST, "topology=784-512-512-10", "optimizer.lr=0.1"]  # FAST trains the normal arm
    assert cli("train", *args, "epochs=6", "hydra.run.dir=trained")[0] == 0
    code, out, err = cli("prune", "trained", *args, "pruning=rmt", "schedule=oneshot", "finetune_epochs=2", "hydra.run.dir=pruned")
    assert code == 0, err
    s = json.loads((tmp_path / "pruned" / "summary.json").read_text())
    assert s["n_params_after"] < 0.2 * s["n_params_before"]
    # stated tolerance: within 5 points of the unpruned model after two epochs of fine-tuning
    assert s["test_acc_finetuned"] >= s["test_acc_before"] - 0.05
    ledger = pd.read_csv(tmp_path / "pruned" / "layers.csv")
    assert set(ledger["action"]) >= {"split"}
    from rmtprune.loading import load_model
    model, info = load_model(tmp_path / "pruned")
    assert sum(p.numel() for p in model.parameters()) == s["n_params_after"] and info["kind"] == "rmtprune"


def test_prune_a_plain_state_dict_with_the_architecture_from_the_config(cli, tmp_path):
    model = build_model({"kind": "mlp", "widths": [784, 256, 10]})
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    code, _, err = cli("prune", "sd.pt", *FAST, "pruning=rmt", "topology=784-256-10", "hydra.run.dir=p")
    assert code == 0, err
    code, _, err = cli("prune", "sd.pt", *FAST, "pruning=rmt", "topology=784-100-10", "hydra.run.dir=q")
    assert code == 2 and "does not fit" in err and "Traceback" not in err


def test_bad_files_are_refused_cleanly(cli, tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"bn.running_mean": torch.zeros(3)}, tmp_path / "no_layers.pt")
    save_atomic({"format": "rmtprune-checkpoint", "version": 1, "spec": {"kind": "transformer"}, "state_dict": {}},
                tmp_path / "arch.pt")
    ckpt = model_payload(build_model({"kind": "mlp", "widths": [784, 32, 10]}), {"kind": "mlp", "widths": [784, 64, 10]},
                         10, [1, 28, 28])
    save_atomic(ckpt, tmp_path / "mismatch.pt")
    cases = {"text.pt": "not a readable PyTorch file", "list.pt": "holds a list", "no_layers.pt": "no Linear or Conv2d",
             "arch.pt": "does not match its architecture", "mismatch.pt": "does not match its architecture",
             "missing.pt": "no such file"}
    for name, needle in cases.items():
        code, _, err = cli("inspect", str(tmp_path / name))
        assert code == 2 and needle in err and "Traceback" not in err, (name, err)
    code, _, err = cli("prune", str(tmp_path / "text.pt"), *FAST, "pruning=rmt")
    assert code == 2 and "not a readable PyTorch file" in err
    code, _, err = cli("inspect", str(tmp_path / "list.pt"), "--tolerance", "3")
    assert code == 2 and "--tolerance" in err
