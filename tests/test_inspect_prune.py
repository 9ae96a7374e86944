"""``rmtprune inspect`` and ``rmtprune prune`` on saved models."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import FAST, TINY
from tests_support.spikes import planted

from rmtprune.nn.models import build_model
from rmtprune.train.checkpoint import model_payload, save_atomic

PLANTED = {"layers.0": (400, 784, 6), "layers.1": (300, 400, 3)}


def planted_model():
    model = build_model({"kind": "mlp", "widths": [784, 400, 300, 10]})
    with torch.no_grad():
        for i, (name, (out, inp, rank)) in enumerate(PLANTED.items()):
            model.get_submodule(name).weight.copy_(planted(out, inp, rank, 0.05, i))
    return model


@pytest.mark.slow
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


@pytest.mark.slow
def test_prune_a_trained_model_keeps_accuracy_and_shrinks_it(cli, tmp_path):
    args = [*FAST, "topology=784-512-512-10", "optimizer.lr=0.1"]  # FAST trains the normal arm
    assert cli("train", *args, "epochs=6", "hydra.run.dir=trained")[0] == 0
    # fine-tuning at the run's lr of 0.1 overshoots on this small synthetic task; 0.02 is the paper's lr
    code, out, err = cli("prune", "trained", *args, "pruning=rmt", "schedule=oneshot", "finetune_epochs=2",
                         "optimizer.lr=0.02", "hydra.run.dir=pruned")
    assert code == 0, err
    s = json.loads((tmp_path / "pruned" / "summary.json").read_text())
    assert s["n_params_after"] < 0.2 * s["n_params_before"]
    # stated tolerance: within 5 points of the unpruned model after two epochs of fine-tuning
    assert s["test_acc_finetuned"] >= s["test_acc_before"] - 0.05
    ledger = pd.read_csv(tmp_path / "pruned" / "layers.csv")
    assert set(ledger["action"]) >= {"split"}
    from rmtprune.train.loading import load_model
    model, info = load_model(tmp_path / "pruned")
    assert sum(p.numel() for p in model.parameters()) == s["n_params_after"] and info["kind"] == "rmtprune"


@pytest.mark.slow
def test_prune_a_plain_state_dict_with_the_architecture_from_the_config(cli, tmp_path):
    model = build_model({"kind": "mlp", "widths": [784, 256, 10]})
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    code, _, err = cli("prune", "sd.pt", *FAST, "pruning=rmt", "topology=784-256-10", "hydra.run.dir=p")
    assert code == 0, err
    code, _, err = cli("prune", "sd.pt", *FAST, "pruning=rmt", "topology=784-100-10", "hydra.run.dir=q")
    assert code == 2 and "does not fit" in err and "Traceback" not in err


@pytest.mark.slow
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


@pytest.mark.slow
def test_prune_takes_the_runs_epoch_and_final_lr_unless_lr_is_given(cli, tmp_path):
    """A 3-epoch run pruned at horizon 6 gets f = 1 - 3/6 = 0.5; fine-tuning continues at the run's next
    lr (0.04 * 0.5^3 after three epochs with lr_decay 0.5), or at optimizer.lr given on the command line."""
    assert cli("train", *TINY, "epochs=3", "optimizer.lr=0.04", "optimizer.lr_decay=0.5", "hydra.run.dir=run")[0] == 0
    prune = [*TINY, "pruning=rmt", "schedule=linear", "schedule.horizon=6", "finetune_epochs=1"]
    code, _, err = cli("prune", "run", *prune, "hydra.run.dir=p1")
    assert code == 0, err
    s = json.loads((tmp_path / "p1" / "summary.json").read_text())
    assert s["prune_epoch"] == 3 and s["keep_fraction"] == pytest.approx(0.5)
    assert s["finetune_lr"] == pytest.approx(0.04 * 0.5 ** 3)
    assert float(pd.read_csv(tmp_path / "p1" / "metrics.csv")["lr"].iloc[0]) == pytest.approx(0.005)
    code, _, err = cli("prune", "run", *prune, "optimizer.lr=0.01", "hydra.run.dir=p2")
    assert code == 0, err
    assert json.loads((tmp_path / "p2" / "summary.json").read_text())["finetune_lr"] == pytest.approx(0.01)


@pytest.mark.slow
def test_inspect_accepts_every_key_of_pruning_rmt(cli, tmp_path):
    """pruning.KEY=VALUE as for `rmtprune train pruning=rmt`: every layer fitted (min_size 0), then the
    output layer left out and the rank floor raised, and the table follows."""
    path = tmp_path / "m.pt"
    torch.save(planted_model().state_dict(), path)
    code, _, err = cli("inspect", str(path), "pruning.min_size=0", "--out", str(tmp_path / "all"))
    assert code == 0, err
    assert "layers.2" in set(pd.read_csv(tmp_path / "all" / "inspect.csv")["layer"])  # min_size 0: every layer
    code, _, err = cli("inspect", str(path), "pruning.min_size=0", "pruning.include_output_layer=false",
                       "pruning.min_rank=5", "--tolerance", "0.1", "--out", str(tmp_path / "view"))
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "view" / "inspect.csv").set_index("layer")
    assert "layers.2" not in rows.index  # the output layer left out
    assert rows.loc["layers.1", "rank_after_prune"] == 5  # 3 planted spikes, floor 5
    assert rows.loc["layers.0", "rank_after_prune"] == 6 and set(rows["tolerance"].dropna()) == {0.1}


@pytest.mark.parametrize("args,needle", [
    (["--conv-tolerance", "-3"], "--conv-tolerance: pruning.conv_tolerance=-3.0"),
    (["pruning.alpha=0.7"], "pruning.alpha=0.7"),
    (["pruning.target_params=1000"], "pruning.target_params is not used by pruning=rmt"),
    (["pruning.tolerence=0.1"], "did you mean pruning.tolerance"),
    (["seed=3"], "pruning.KEY=VALUE settings only"),
    (["--tolerance", "0.1", "pruning.tolerance=0.2"], "both given"),
])
def test_inspect_refuses_bad_pruning_settings_in_one_line(cli, tmp_path, args, needle):
    path = tmp_path / "m.pt"
    torch.save(planted_model().state_dict(), path)
    code, out, err = cli("inspect", str(path), *args)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err


@pytest.mark.slow
def test_inspect_refuses_a_state_dict_key_that_is_no_module_path(cli, tmp_path):
    torch.save({"a..b.weight": torch.zeros(20, 30), "fc.weight": torch.zeros(10, 20)}, tmp_path / "odd.pt")
    code, out, err = cli("inspect", str(tmp_path / "odd.pt"))
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "'a..b.weight'" in lines[0] and "Traceback" not in err, err


@pytest.mark.slow
def test_compare_command_errors_are_one_line(cli, tmp_path, monkeypatch):
    """An unwritable --out, and an error inside the reader nobody foresaw (simulated): one line each."""
    assert cli("train", *TINY, "epochs=1", "hydra.run.dir=runs/a")[0] == 0
    (tmp_path / "file").write_text("")
    code, out, err = cli("compare", "runs", "--out", str(tmp_path / "file" / "out"), "--no-plots")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "--out" in lines[0], err
    import rmtprune.report.compare

    def broken(*a, **k):
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(rmtprune.report.compare, "compare", broken)
    code, out, err = cli("compare", "runs")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "runs" in lines[0] and "Traceback" not in err, err


@pytest.mark.slow
def test_prune_reads_the_pruner_state_saved_beside_a_state_dict(cli, tmp_path):
    """The README's {"model", "pruner"} file: the pruner state (the layer's known spikes) is read with the
    weights, so a layer cut halfway (8 spikes + half its sub-edge values) is cut to its 8 spikes by a one-shot
    prune, not taken as 'all survivors are spikes' (keep_no_bulk)."""
    from rmtprune import RMTPruner

    model = build_model({"kind": "mlp", "widths": [784, 256, 10]})
    with torch.no_grad():
        model.layers[0].weight.copy_(planted(256, 784, 8, 0.02, seed=1))
    pruner = RMTPruner(schedule=lambda epoch: 0.5, tolerance=1.0, include_output_layer=False)
    first = pruner.step(model, 1).records[0]
    assert first["n_spikes"] == 8 and 8 < first["rank_after"] < 256
    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, tmp_path / "pruned.pt")
    code, _, err = cli("prune", "pruned.pt", *FAST, "pruning=rmt", "topology=784-256-10", "schedule=oneshot",
                       "pruning.tolerance=1.0", "pruning.include_output_layer=false", "hydra.run.dir=p")
    assert code == 0, err
    row = pd.read_csv(tmp_path / "p" / "layers.csv").set_index("layer").loc["layers.0"]
    assert row["rank_before"] == first["rank_after"] and row["rank_after"] == 8


@pytest.mark.slow
def test_factor_pairs_that_do_not_chain_are_refused_cleanly(cli, tmp_path):
    """A state_dict whose ``X.first`` / ``X.second`` factors cannot be multiplied (or have rank 0) is a damaged
    file: one error line, exit 2, never a RuntimeError or a division by zero."""
    bad = {"mismatch.pt": {"l.first.weight": torch.zeros(6, 40), "l.second.weight": torch.zeros(30, 5)},
           "rank0.pt": {"l.first.weight": torch.zeros(0, 40), "l.second.weight": torch.zeros(30, 0)},
           "bias.pt": {"l.first.weight": torch.zeros(6, 40), "l.second.weight": torch.zeros(30, 6),
                       "l.second.bias": torch.zeros(7)}}
    for name, state in bad.items():
        torch.save(state, tmp_path / name)
        code, _, err = cli("inspect", name)
        assert code == 2 and err.count("rmtprune: error:") == 1 and "two factors of one layer" in err, (name, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("keep_fraction", [0.0, 0.5, 0.95])  # splits, then truncations in place at 0.95
def test_plan_gives_the_rows_of_step_from_singular_values_alone(monkeypatch, keep_fraction):
    """RMTPruner.plan (what inspect runs) decides as step does, on a 200 x 1000 layer (the Gram matrix's path)
    and a 150 x 200 one (svdvals), without a singular vector and without touching the model."""
    import copy

    from torch import nn

    from rmtprune import RMTPruner

    model = nn.Sequential(nn.Linear(1000, 200), nn.ReLU(), nn.Linear(200, 150), nn.ReLU(), nn.Linear(150, 10))
    with torch.no_grad():
        model[0].weight.copy_(planted(200, 1000, 5, 0.05, 0))
        model[2].weight.copy_(planted(150, 200, 4, 0.05, 1))
    before = copy.deepcopy(model)
    done = RMTPruner(schedule=lambda e: keep_fraction, min_size=1000).step(copy.deepcopy(model), 0).records

    def no_vectors(*args, **kwargs):
        raise AssertionError("plan computed singular vectors")

    monkeypatch.setattr(torch.linalg, "svd", no_vectors)
    seen = []
    pruner = RMTPruner(schedule=lambda e: keep_fraction, min_size=1000)
    planned = pruner.plan(model, 0, each=lambda name, module: seen.append(name)).records
    assert seen == ["0", "2", "4"]
    expected = {"0": 5, "2": 4}
    for a, b in zip(planned, done):
        assert a["layer"] == b["layer"]
        for key in ("action", "rank_before", "rank_after", "params_before", "params_after", "n_spikes"):
            assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), (a["layer"], key)
        if a["layer"] in expected:
            assert a["n_spikes"] == expected[a["layer"]]
            assert a["fit_error"] == pytest.approx(b["fit_error"], abs=1e-5)
            assert a["sigma2"] == pytest.approx(b["sigma2"], rel=1e-5)
    assert {r["action"] for r in planned if r["layer"] in expected} == ({"truncate"} if keep_fraction > 0.9
                                                                       else {"split"})
    assert [type(m) for m in model] == [type(m) for m in before]
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), before.state_dict().values()))


def test_inspect_says_what_it_fits_before_it_starts(cli, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(planted_model().state_dict(), path)
    code, out, err = cli("inspect", str(path), "--out", str(tmp_path / "view"))
    assert code == 0, err
    line = next(ln for ln in err.splitlines() if ln.startswith("inspect: "))
    assert "to 3 layers (436,600 weights)" in line and "singular values only, about" in line


@pytest.mark.slow
def test_prune_counts_a_magnitude_models_non_zero_parameters_as_its_run_did(cli, tmp_path):
    """A model whose smallest weights are zeroed (what pruning=magnitude saves) has its non-zero parameters,
    not its dense size, before the cut (and after it, in the layers a cut leaves sparse)."""
    from rmtprune.nn.masks import count_nonzero, prune_to_count

    dense = build_model({"kind": "mlp", "widths": [784, 256, 10]})
    with torch.no_grad():  # trained biases are not zero
        for name, p in dense.named_parameters():
            if name.endswith("bias"):
                p.fill_(0.01)
    sparse, kept = prune_to_count(dense, 60_000)
    assert kept == 60_000 == count_nonzero(sparse) < sum(p.numel() for p in sparse.parameters())
    torch.save(sparse.state_dict(), tmp_path / "sd.pt")
    code, _, err = cli("prune", "sd.pt", *FAST, "pruning=rmt", "topology=784-256-10", "hydra.run.dir=p")
    assert code == 0, err
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["n_params_before"] == 60_000


@pytest.mark.slow
def test_a_nan_loss_while_fine_tuning_keeps_the_pruned_model(cli, tmp_path):
    """Fine-tuning at an lr that makes the loss NaN fails the command (exit 1) but the pruned model, its ledger
    and a summary (status failed, the accuracy right after the cut) are saved."""
    model = build_model({"kind": "mlp", "widths": [784, 256, 10]})
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    code, _, err = cli("prune", "sd.pt", *FAST, "pruning=rmt", "topology=784-256-10", "finetune_epochs=2",
                       "optimizer.lr=1e30", "hydra.run.dir=p")
    assert code == 1 and "nan" in err.lower() and "pruned model before fine-tuning is saved" in err, err
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["status"] == "failed" and "fine-tuning failed" in s["error"] and s["test_acc_finetuned"] is None
    from rmtprune.train.loading import load_model

    saved, _ = load_model(tmp_path / "p")
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert sum(p.numel() for p in saved.parameters()) == s["n_params_after"]
    assert (tmp_path / "p" / "layers.csv").exists()


PRUNE = ["pruning=rmt", "schedule=oneshot", "pruning.tolerance=1.0", "pruning.min_size=100", "progress=none",
         "cost.latency=false"]


def test_a_pruned_model_folder_is_a_run_that_compare_and_inspect_read(cli, tmp_path):
    """``rmtprune prune`` writes the run record ``train`` writes (every field of it, plus its own), so compare
    lists the pruned models beside the runs that trained them (one arm, paired by seed), never as damaged."""
    from rmtprune.report.compare import compare

    for seed in (0, 1):
        assert cli("train", *TINY, "epochs=2", f"seed={seed}", f"hydra.run.dir=runs/none{seed}")[0] == 0
        code, _, err = cli("prune", f"runs/none{seed}", *PRUNE, "finetune_epochs=1", f"hydra.run.dir=runs/pruned{seed}")
        assert code == 0, err
    trained = json.loads((tmp_path / "runs" / "none0" / "summary.json").read_text())
    s = json.loads((tmp_path / "runs" / "pruned0" / "summary.json").read_text())
    assert set(trained) <= set(s) and list(s)[-1] == "config"
    assert s["status"] == "completed" and (tmp_path / "runs" / "pruned0" / "DONE").exists()
    assert (s["n_params_initial"], s["n_params_final"]) == (s["n_params_before"], s["n_params_after"])
    assert s["n_params_final"] < s["n_params_initial"] == trained["n_params_final"]
    assert s["final_test_acc"] == s["test_acc_finetuned"] and s["epochs_completed"] == 1
    assert s["source_config"]["seed"] == 0 and s["source_config"]["pruning"]["name"] == "none"

    code, out, err = cli("compare", "runs", "--no-plots")
    assert code == 0, err
    cmp = compare([tmp_path / "runs"])
    assert not [p for p in cmp.problems if "damaged" in p["reason"]], cmp.problems
    table = cmp.table.set_index("arm")
    assert list(table.index) == ["none", "rmt"] and list(table["seeds"]) == ["0 1", "0 1"]
    pruned = [json.loads((tmp_path / "runs" / f"pruned{k}" / "summary.json").read_text()) for k in (0, 1)]
    assert table.loc["rmt", "n_pairs"] == 2
    assert table.loc["rmt", "params_end"] == pytest.approx(sum(p["n_params_final"] for p in pruned) / 2)
    assert table.loc["rmt", "final_mean"] == pytest.approx(sum(p["test_acc_finetuned"] for p in pruned) / 2)

    code, _, err = cli("inspect", "runs/pruned0", "--out", "view")
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "view" / "inspect.csv")) >= 2


def test_a_pruned_model_without_fine_tuning_records_the_cut_as_its_result(cli, tmp_path):
    assert cli("train", *TINY, "epochs=1", "hydra.run.dir=run")[0] == 0
    code, _, err = cli("prune", "run", *PRUNE, "hydra.run.dir=p")
    assert code == 0, err
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert (s["final_test_acc"], s["best_test_acc"], s["best_epoch"], s["epochs_completed"]) == \
        (s["test_acc_after"], s["test_acc_after"], 0, 0)
    assert s["n_params_final"] == s["n_params_after"] and s["config_key"] and s["versions"]
    from rmtprune.runs.walk import load_run

    run = load_run(tmp_path / "p")
    assert run.summary["n_params_initial"] == s["n_params_before"]  # read, not damaged
    # compare counts it: its result is the cut model at epoch 0, not "no test_acc in metrics.csv"
    assert run.metrics[["epoch", "test_acc", "n_params"]].values.tolist() == \
        [[0, s["test_acc_after"], s["n_params_after"]]]
    from rmtprune.report.compare import compare

    cmp = compare([tmp_path / "p", tmp_path / "run"])
    assert [p for p in cmp.problems if "metrics.csv" in p["reason"]] == []
    assert cmp.table.set_index("arm").loc["rmt", "final_mean"] == pytest.approx(s["test_acc_after"])


def test_prune_into_a_folder_holding_a_run_is_refused_and_writes_nothing(cli, tmp_path):
    assert cli("train", *TINY, "epochs=1", "hydra.run.dir=run")[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    code, _, err = cli("prune", "run", *PRUNE, "hydra.run.dir=run")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "already holds the results of another run (summary.json" in lines[0], err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
