"""``rmtprune compare`` on real tiny sweeps, and the launchers that make them."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST

from rmtprune.report.compare import COLUMNS, compare

SWEEP = [*FAST, "topology=784-256-256-10", "epochs=3", "optimizer.lr=0.1", "schedule.horizon=3",
         "magnitude_sweep.enabled=true", "magnitude_sweep.n_thresholds=8"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """3 seeds x {none, rmt} on synthetic data, 3 epochs (made once for the module)."""
    from rmtprune.cli import main

    folder = tmp_path_factory.mktemp("sweep")
    code = main(["train", "-m", *SWEEP, "seed=0,1,2", "pruning=none,rmt", f"hydra.sweep.dir={folder}/multirun",
                 f"output_root={folder}"])
    assert code == 0
    return folder / "multirun"


@pytest.mark.slow
def test_compare_writes_tables_and_figures(cli, sweep, tmp_path):
    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", str(sweep), "--out", str(out))
    assert code == 0, err
    table = pd.read_csv(out / "comparison.csv")
    assert list(table.columns) == COLUMNS
    assert list(table["arm"]) == ["none", "rmt"] and list(table["n_seeds"]) == [3, 3]
    # the numbers are the statistics of the runs' own final accuracies
    finals = {arm: [json.loads(p.read_text())["final_test_acc"] for p in sweep.glob("*/summary.json")
                    if json.loads(p.read_text())["pruning"] == arm] for arm in ("none", "rmt")}
    normal, pruned = table.iloc[0], table.iloc[1]
    assert normal["final_mean"] == pytest.approx(sum(finals["none"]) / 3)
    assert pruned["diff"] == pytest.approx(sum(finals["rmt"]) / 3 - sum(finals["none"]) / 3)
    assert pruned["params_end"] < normal["params_end"] and pruned["param_reduction_pct"] > 10
    assert 0 <= pruned["welch_p"] <= 1 and pruned["n_pairs"] == 3 and pruned["var_ratio"] > 0
    assert 0 < pruned["magnitude_at_same_params_mean"] <= 1 and pruned["magnitude_at_same_params_n"] == 3
    assert math.isnan(normal["welch_p"])
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["epoch"]) == {1, 2, 3} and {"test_acc_mean", "test_acc_std", "train_acc_mean"} <= set(curves)
    md = (out / "comparison.md").read_text()
    assert "| rmt | 3 |" in md and "Welch p" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert any(p.endswith("_curves.png") for p in pngs) and any(p.endswith("_params.png") for p in pngs)
    assert any("_esd_layers_0" in p for p in pngs)
    assert all((out / p).stat().st_size > 5000 for p in pngs)
    assert "rmt" in stdout


@pytest.mark.slow
def test_a_corrupted_run_is_reported_not_fatal(cli, sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    broken = next(p for p in copy.glob("*/summary.json") if '"seed": 2' in p.read_text() and '"rmt"' in p.read_text())
    broken.write_text("{ not json")
    code, stdout, err = cli("compare", str(copy), "--format", "csv", "--no-plots")
    assert code == 0, err
    table = pd.read_csv(copy / "comparison.csv")
    assert list(table["n_seeds"]) == [3, 2]
    assert "warning" in stdout and "summary.json unreadable" in stdout and "damaged" in stdout
    assert "arm rmt: no finished run for seed 2" in stdout


@pytest.mark.slow
def test_groups_never_mix_topologies_and_single_seeds_have_no_variance(cli, sweep, tmp_path):
    from rmtprune.cli import main
    other = tmp_path / "other"
    assert main(["train", *FAST, "topology=784-64-10", "epochs=1", f"hydra.run.dir={other}"]) == 0
    cmp = compare([sweep, other], by=["seed"])
    groups = set(cmp.table["group"])
    assert any("784-64-10" in g for g in groups) and any("784-256-256-10" in g for g in groups)
    single = cmp.table[cmp.table["group"].str.contains("784-64-10")]
    assert single["n_seeds"].tolist() == [1] and math.isnan(single["final_std"].iloc[0])
    assert "no variance" in single["note"].iloc[0]


def test_compare_bad_input(cli, tmp_path):
    code, _, err = cli("compare", str(tmp_path / "missing"))
    assert code == 2 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("compare", str(tmp_path / "empty"))
    assert code == 2 and "no finished runs" in err
    code, _, err = cli("compare", str(tmp_path), "--format", "xlsx")
    assert code == 2 and "--format" in err


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_parallel", "submitit_local"])
def test_parallel_launchers_finish_and_are_comparable(tmp_path, launcher):
    import sys

    from conftest import run_subprocess
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "local_parallel" else ["hydra.launcher.timeout_min=5"]
    res = run_subprocess([sys.executable, "-m", "rmtprune", "train", "-m", f"hydra/launcher={launcher}", *extra,
                          *FAST, "topology=784-32-10", "epochs=1", "seed=0,1", "hydra.sweep.dir=sw"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "sw").glob("*/summary.json")) == \
        ["completed", "completed"]
    assert len(list((tmp_path / "sw").glob("*/DONE"))) == 2
    cmp = compare([tmp_path / "sw"])
    assert cmp.table["n_seeds"].tolist() == [2]


def test_arm_labels_name_only_what_differs_from_the_usual_pruned_run():
    from rmtprune.report.compare import group_runs
    from rmtprune.runs.walk import Run

    def run(seed, **cfg):
        config = {"dataset.name": "mnist", "model.name": "mlp", "topology": "784-10", "seed": seed,
                  "pruning.name": "rmt", "pruning.tolerance": 0.05, "schedule.horizon": 10.0, **cfg}
        return Run(Path("."), {}, config, pd.DataFrame(), None, None)

    runs = [run(s) for s in range(3)] + [run(s, **{"pruning.name": "none"}) for s in range(3)] + \
        [run(0, **{"schedule.horizon": 300.0}), run(0, **{"pruning.tolerance": 1.0})]
    groups = group_runs(runs, None)
    assert len(groups) == 1
    arms = next(iter(groups.values()))
    assert set(arms) == {"none", "rmt", "rmt (horizon=300.0)", "rmt (tolerance=1.0)"}
    assert len(arms["rmt"]) == 3 and len(arms["none"]) == 3


def test_a_cnn_run_is_not_labelled_with_the_mlp_topology_it_does_not_use():
    from rmtprune.report.compare import group_runs, slug
    from rmtprune.runs.walk import Run, run_config

    def config(seed, pruning, channels):
        return run_config({"dataset": {"name": "fashion_mnist"}, "model": {"name": "cnn", "channels": channels},
                           "topology": "784-1000-1000-500-10", "seed": seed, "pruning": {"name": pruning}})

    runs = [Run(Path("."), {}, config(s, p, c), pd.DataFrame(), None, None)
            for s in range(2) for p in ("none", "rmt") for c in ([16, 32], [32, 64])]
    groups = group_runs(runs, None)
    assert set(groups) == {"dataset.name=fashion_mnist, model.name=cnn, model.channels=[16, 32]",
                           "dataset.name=fashion_mnist, model.name=cnn, model.channels=[32, 64]"}
    assert all("784" not in slug(g) for g in groups)
    assert run_config({"model": {"name": "mlp"}, "topology": "784-10"})["topology"] == "784-10"


@pytest.mark.slow
def test_a_tie_between_pruned_settings_is_labelled_the_same_way_in_every_process(tmp_path):
    import subprocess
    import sys

    code = """
from pathlib import Path
import pandas as pd
from rmtprune.report.compare import group_runs
from rmtprune.runs.walk import Run
runs = [Run(Path("."), {}, {"model.name": "mlp", "seed": s, "pruning.name": p, "pruning.tolerance": t},
            pd.DataFrame(), None, None) for s in range(2) for p, t in (("none", 0.05), ("rmt", 0.05), ("rmt", 1.0))]
print(sorted(next(iter(group_runs(runs, None).values()))))
"""
    # string hashing (and with it set order) differs between processes unless PYTHONHASHSEED is fixed
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert outs == {"['none', 'rmt', 'rmt (tolerance=1.0)']\n"}


@pytest.mark.slow
def test_the_magnitude_baseline_prunes_each_normal_model_to_the_same_seed_count(cli, sweep, tmp_path):
    from rmtprune.report.baseline import CACHE

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    for cache in copy.glob(f"*/{CACHE}"):  # made by other tests of this module
        cache.unlink()
    summaries = {p.parent: json.loads(p.read_text()) for p in copy.glob("*/summary.json")}
    folder = {(s["pruning"], s["seed"]): f for f, s in summaries.items()}
    target = {s["seed"]: s["n_params_final"] for s in summaries.values() if s["pruning"] == "rmt"}

    row = compare([copy], finetune=True).table.set_index("arm").loc["rmt"]
    assert row["magnitude_at_same_params_n"] == 3 and row["magnitude_finetuned_n"] == 3
    assert row["magnitude_note"] == "exact from model.pt: 3"
    cached = {}
    for seed in range(3):
        cache = pd.read_csv(folder["none", seed] / CACHE)
        assert cache["target_params"].tolist() == [target[seed]]
        assert abs(cache["n_nonzero"].iloc[0] - target[seed]) <= 1e-3 * target[seed]
        # 3 epochs, events after epochs 1 and 2: one epoch of training after the last event
        assert cache["finetune_epochs"].tolist() == [1]
        assert cache["finetuned_n_nonzero"].iloc[0] == cache["n_nonzero"].iloc[0]
        cached[seed] = cache.iloc[0]
    assert row["magnitude_at_same_params_mean"] == pytest.approx(sum(c["test_acc"] for c in cached.values()) / 3)
    assert row["magnitude_finetuned_mean"] == pytest.approx(
        sum(c["finetuned_test_acc"] for c in cached.values()) / 3)

    for seed in range(3):
        (folder["none", seed] / "model.pt").unlink()
    code, _, err = cli("compare", str(copy), "--finetune", "--no-plots", "--format", "csv")
    assert code == 0, err
    again = pd.read_csv(copy / "comparison.csv").set_index("arm").loc["rmt"]
    assert again["magnitude_note"] == "exact from cache: 3"
    for col in ("magnitude_at_same_params_mean", "magnitude_at_same_params_std", "magnitude_finetuned_mean"):
        assert again[col] == pytest.approx(row[col], rel=1e-12)

    for seed in range(3):
        (folder["none", seed] / CACHE).unlink()
    fallback = compare([copy]).table.set_index("arm").loc["rmt"]
    assert fallback["magnitude_at_same_params_n"] == 3 and "interpolated" in fallback["magnitude_note"]
    assert math.isnan(fallback["magnitude_finetuned_mean"])


@pytest.mark.slow
def test_the_terminal_and_comparison_md_give_the_variance_in_one_unit(cli, tmp_path):
    """percent² in both (fraction² x 10^4): the same number for every arm of a committed sweep."""
    from conftest import REPO

    runs = REPO / "docs" / "results" / "runs" / "mnist_fc_1000_1000_1000_500_cpu"
    code, out, err = cli("compare", str(runs), "--no-plots", "--format", "md,csv", "--out", str(tmp_path / "o"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "o" / "comparison.csv")
    md = (tmp_path / "o" / "comparison.md").read_text()
    assert "var (%²)" in out
    for arm, var in zip(table["arm"], table["final_var"]):
        cell = f"{var * 1e4:.3g}"
        assert f"| {arm} | " in md and f" | {cell} | " in md.split(f"| {arm} | ", 1)[1].split("\n")[0]
        row = next(line for line in out.splitlines() if line.startswith(f"│ {arm} "))
        assert row.split("│")[4].strip() == cell
