"""``rmtprune compare`` on hand-written run folders: the control arm, one run per seed, damaged runs,
machines that must not be pooled, the frontier and the drop at each event. No training: every
number a test checks is written into the folders by the test itself."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from tests_support.runs import edit_summary, fake_run

from rmtprune.report.compare import COLUMNS, FRONTIER_COLUMNS, compare, markdown
from rmtprune.runs.folder import METRICS_COLUMNS

INITIAL = 100_000


def write_run(folder: Path, seed: int, pruning: str = "none", final: float = 0.9, params: int = INITIAL,
              epochs: int = 3, after: dict[int, float] | None = None, pruning_cfg: dict[str, Any] | None = None,
              summary: dict[str, Any] | None = None, old_columns: bool = False) -> Path:
    """A finished run folder: test accuracy final - 0.01 * (epochs - epoch) per epoch, ``after``
    {epoch: test accuracy right after that epoch's event}, ``params`` parameters at the end."""
    cfg = {"topology": "784-100-10", "seed": seed, "epochs": epochs,
           "dataset": {"name": "synthetic", "train_size": 200, "test_size": 100},
           "model": {"name": "mlp"}, "pruning": {"name": pruning, **(pruning_cfg or {})},
           "schedule": {"name": "linear", "horizon": 3.0}}
    after = after or {}
    rows = []
    for e in range(1, epochs + 1):
        acc = final - 0.01 * (epochs - e)
        n = params if e == epochs else INITIAL
        rows.append({"epoch": e, "train_loss": 0.5, "train_acc": acc + 0.05, "test_loss": 1 - acc, "test_acc": acc,
                     "n_params": n, "n_params_after": n, "pruned_layers": 0, "lr": 0.02, "seconds": 1.0,
                     "test_acc_after_event": after.get(e), "test_loss_after_event": (1 - after[e]) if e in after else None})
    columns = METRICS_COLUMNS if not old_columns else [c for c in METRICS_COLUMNS if "after_event" not in c]
    head = {"started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T01:00:00+00:00", "seed": seed,
            "pruning": pruning, "device": "cpu", "final_test_acc": final}
    return fake_run(folder, cfg, rows, {**head, **(summary or {})}, columns, n_params_initial=INITIAL).path


RMT = {"lr_factor": 0.96, "every": 1, "tolerance": 0.05}


def test_the_control_arm_is_its_own_arm_and_every_pruned_arm_is_tested_against_it(tmp_path, cli):
    values = {"none": [0.90, 0.92, 0.91], "control": [0.89, 0.90, 0.92], "rmt": [0.88, 0.87, 0.90],
              "rmt (horizon=9.0)": [0.85, 0.86, 0.84]}
    for seed in range(3):
        write_run(tmp_path / f"none{seed}", seed, "none", values["none"][seed])
        write_run(tmp_path / f"control{seed}", seed, "control", values["control"][seed], pruning_cfg=RMT)
        write_run(tmp_path / f"rmt{seed}", seed, "rmt", values["rmt"][seed], params=30_000, pruning_cfg=RMT)
    for seed in range(3):  # a second rmt setting: only the schedule differs
        f = write_run(tmp_path / f"rmt9_{seed}", seed, "rmt", values["rmt (horizon=9.0)"][seed], params=20_000,
                      pruning_cfg=RMT)
        edit_summary(f, lambda d: {**d, "config": {**d["config"], "schedule": {"name": "linear", "horizon": 9.0}}})
    code, stdout, err = cli("compare", str(tmp_path), "--no-plots")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("arm")
    assert list(table.index) == ["none", "control", "rmt", "rmt (horizon=9.0)"]
    mean = {arm: float(np.mean(v)) for arm, v in values.items()}
    for arm in ("rmt", "rmt (horizon=9.0)"):
        assert table.loc[arm, "diff"] == pytest.approx(mean[arm] - mean["none"])
        assert table.loc[arm, "control_diff"] == pytest.approx(mean[arm] - mean["control"])
        assert table.loc[arm, "control_var_ratio"] == pytest.approx(
            np.var(values[arm], ddof=1) / np.var(values["control"], ddof=1))
        assert table.loc[arm, "control_paired_p"] == pytest.approx(
            st.ttest_rel(values[arm], values["control"]).pvalue)
        assert table.loc[arm, "control_var_ratio_ci_low"] < table.loc[arm, "control_var_ratio_ci_high"]
    # the control is tested against normal, and against nothing else
    assert table.loc["control", "diff"] == pytest.approx(mean["control"] - mean["none"])
    assert all(math.isnan(table.loc["control", c]) for c in COLUMNS if c.startswith("control_"))
    assert all(math.isnan(table.loc["none", c]) for c in ("diff", "control_diff", "var_ratio_ci_low"))
    md = (tmp_path / "comparison.md").read_text()
    assert "Δ vs control" in md and "| control | 3 |" in md


def test_a_seed_given_twice_counts_once_the_newest_run(tmp_path, cli):
    for seed in range(2):
        write_run(tmp_path / f"none{seed}", seed, "none", 0.9)
    # seed 0 twice, seed 1 twice: the later runs (finished later) must be the ones kept
    write_run(tmp_path / "old0", 0, "rmt", 0.50, summary={"finished_at": "2026-01-01T00:00:00+00:00"})
    write_run(tmp_path / "new0", 0, "rmt", 0.80, summary={"finished_at": "2026-02-01T00:00:00+00:00"})
    write_run(tmp_path / "new1", 1, "rmt", 0.84, summary={"finished_at": "2026-03-01T00:00:00+00:00"})
    write_run(tmp_path / "old1", 1, "rmt", 0.60, summary={"finished_at": "2026-02-15T00:00:00+00:00"})
    cmp = compare([tmp_path])
    row = cmp.table.set_index("arm").loc["rmt"]
    assert row["n_seeds"] == 2 and row["seeds"] == "0 1" and row["n_pairs"] == 2
    assert row["final_mean"] == pytest.approx(0.82)
    assert "duplicate" in row["note"]
    dropped = {Path(p["folder"]).name for p in cmp.problems}
    assert dropped == {"old0", "old1"}
    assert all("newest" in p["reason"] for p in cmp.problems)
    assert {len(rs) for arms in cmp.groups.values() for rs in arms.values()} == {2}
    curves = cmp.curves[cmp.curves["arm"] == "rmt"]
    assert set(curves["n"]) == {2}
    assert curves[curves["epoch"] == 3]["test_acc_mean"].iloc[0] == pytest.approx(0.82)


def _cut_mid_row(f: Path) -> None:
    text = (f / "metrics.csv").read_text()
    (f / "metrics.csv").write_text(text[: len(text) - 7])


def _extra_field(f: Path) -> None:
    with open(f / "metrics.csv", "a") as fh:
        fh.write("4,1,2,3,4,5,6,7,8,9,10,11,12\n")


def _non_numeric_accuracy(f: Path) -> None:
    lines = (f / "metrics.csv").read_text().splitlines()
    cells = lines[2].split(",")
    cells[4] = "high"
    lines[2] = ",".join(cells)
    (f / "metrics.csv").write_text("\n".join(lines) + "\n")


DAMAGE = {
    "metrics cut mid-row": (_cut_mid_row, "cut mid-row"),
    "metrics row with extra fields": (_extra_field, "fields"),
    "metrics non-numeric accuracy": (_non_numeric_accuracy, "test_acc='high' is not a number"),
    "metrics rows missing": (lambda f: (f / "metrics.csv").write_text(
        "\n".join((f / "metrics.csv").read_text().splitlines()[:-1]) + "\n"), "epoch rows"),
    "summary null": (lambda f: edit_summary(f, lambda d: None), "holds null"),
    "summary list": (lambda f: edit_summary(f, lambda d: [1, 2]), "holds a list"),
    "config a string": (lambda f: edit_summary(f, lambda d: {**d, "config": "seed=2"}), "config is a str"),
    "summary non-numeric accuracy": (lambda f: edit_summary(f, lambda d: {**d, "final_test_acc": "high"}),
                                     "final_test_acc='high' is not a number"),
    "summary non-numeric params": (lambda f: edit_summary(f, lambda d: {**d, "n_params_final": "many"}),
                                   "n_params_final"),
    "seed a string": (lambda f: edit_summary(f, lambda d: {**d, "config": {**d["config"], "seed": "two"}}), "seed"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_run_is_reported_and_never_counted(tmp_path, cli, damage):
    edit, reason = DAMAGE[damage]
    for seed in range(3):
        write_run(tmp_path / f"none{seed}", seed, "none", 0.9 + 0.01 * seed)
        write_run(tmp_path / f"rmt{seed}", seed, "rmt", 0.8 + 0.01 * seed, params=30_000)
    edit(tmp_path / "rmt2")
    code, stdout, err = cli("compare", str(tmp_path), "--no-plots")
    assert code == 0, err
    assert "Traceback" not in stdout + err
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("arm")
    assert table.loc["rmt", "n_seeds"] == 2 and table.loc["rmt", "seeds"] == "0 1"
    assert table.loc["rmt", "final_mean"] == pytest.approx(0.805)
    flat = " ".join(stdout.split())
    assert "warning" in flat and "rmt2" in flat and "damaged" in flat and reason in flat
    assert reason in (tmp_path / "comparison.md").read_text()


def test_a_damaged_spectra_file_costs_only_the_figures(tmp_path, cli):
    for seed in range(3):
        write_run(tmp_path / f"none{seed}", seed, "none", 0.9 + 0.01 * seed)
        write_run(tmp_path / f"rmt{seed}", seed, "rmt", 0.8 + 0.01 * seed, params=30_000)
    (tmp_path / "rmt2" / "spectra.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    code, stdout, err = cli("compare", str(tmp_path), "--no-plots")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("arm")
    assert table.loc["rmt", "n_seeds"] == 3 and table.loc["rmt", "final_mean"] == pytest.approx(0.81)
    md = (tmp_path / "comparison.md").read_text()
    warning = md.split("Warnings:")[1]
    assert "rmt2" in warning and "spectra.npz unreadable" in warning and "figures are skipped" in warning
    assert "Runs left out" not in md


@pytest.mark.parametrize("content, reason", [
    ("{ not json", "redirect.json unreadable"),
    ("[1, 2]", "names no run folder"),
    ('{"run_dir": 5}', "names no run folder"),
    ('{"run_dir": "/nowhere/at/all"}', "not a folder here"),
])
def test_a_bad_redirect_is_reported_and_a_good_one_followed(tmp_path, cli, content, reason):
    write_run(tmp_path / "runs" / "none0", 0, "none", 0.9)
    write_run(tmp_path / "runs" / "none1", 1, "none", 0.9)
    sweep = tmp_path / "sweep"
    for job, text in (("0", content), ("1", json.dumps({"run_dir": str(tmp_path / "runs" / "none1")}))):
        (sweep / job).mkdir(parents=True)
        (sweep / job / "redirect.json").write_text(text)
    code, stdout, err = cli("compare", str(sweep), "--no-plots")
    assert code == 0, err
    assert pd.read_csv(sweep / "comparison.csv", dtype={"seeds": str})["seeds"].tolist() == ["1"]
    flat = " ".join(stdout.split())
    assert reason in flat and "Traceback" not in flat + err


def test_an_unwritable_out_folder_is_one_error_line(tmp_path, cli):
    write_run(tmp_path / "runs" / "none0", 0, "none", 0.9)
    (tmp_path / "afile").write_text("")
    code, stdout, err = cli("compare", str(tmp_path / "runs"), "--out", str(tmp_path / "afile" / "sub"))
    assert code == 2
    assert err.startswith("rmtprune: error:") and len(err.strip().splitlines()) == 1 and "--out" in err


def test_cpu_and_gpu_runs_are_never_pooled_and_mixed_machines_are_named(tmp_path, cli):
    for seed in range(4):
        gpu = ({"device": "cuda:0", "gpu": "NVIDIA H200", "threads": 4} if seed >= 2
               else {"threads": 1 + seed, "cpu": "AMD EPYC", "cpu_capability": ("AVX2", "AVX512")[seed]})
        write_run(tmp_path / f"none{seed}", seed, "none", 0.9 + 0.01 * seed, summary=gpu)
        write_run(tmp_path / f"rmt{seed}", seed, "rmt", 0.8 + 0.01 * seed, params=30_000, summary=gpu)
    code, stdout, err = cli("compare", str(tmp_path), "--no-plots")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "comparison.csv")
    cpu = table[table["group"].str.endswith("device=cpu")]
    gpu = table[table["group"].str.endswith("device=cuda")]
    assert len(table) == 4 and cpu["seeds"].tolist() == ["0 1"] * 2 and gpu["seeds"].tolist() == ["2 3"] * 2
    assert set(cpu["device"]) == {"cpu"} and set(gpu["device"]) == {"cuda"}
    assert cpu.set_index("arm").loc["rmt", "final_mean"] == pytest.approx(0.805)
    # CPU runs with 1 and 2 threads are pooled, but said to differ
    assert "threads 1 (1), 2 (1)" in cpu.set_index("arm").loc["rmt", "note"]
    assert "cpu_capability AVX2 (1), AVX512 (1)" in cpu.set_index("arm").loc["rmt", "note"]  # one CPU name, two roundings
    assert isinstance(gpu["note"].iloc[0], float)  # empty: the GPU runs agree
    flat = " ".join(stdout.split())
    assert "warning" in flat and "mixes machines" in flat and "threads 1 (1), 2 (1)" in flat
    md = (tmp_path / "comparison.md").read_text()
    assert "Warnings:" in md and "threads 1 (1), 2 (1)" in md


def test_old_runs_without_machine_records_are_not_flagged(tmp_path):
    for seed in range(2):
        write_run(tmp_path / f"none{seed}", seed, "none", 0.9, summary={"device": None} if seed else {})
        write_run(tmp_path / f"old{seed}", seed, "rmt", 0.8, params=30_000, old_columns=True)
    cmp = compare([tmp_path])
    assert len(cmp.groups) == 1 and not cmp.warnings
    assert "test_acc_after_event_mean" not in cmp.curves


@pytest.mark.slow
def test_the_frontier_table_and_figure_hold_the_per_arm_statistics(tmp_path, cli):
    settings = {"none": ("none", None, INITIAL), "control": ("control", None, INITIAL),
                "rmt": ("rmt", 3.0, 30_000), "rmt9": ("rmt", 9.0, 12_000), "magnitude": ("magnitude", None, 29_000)}
    for tag, (name, horizon, params) in settings.items():
        for seed in range(3):
            f = write_run(tmp_path / f"{tag}{seed}", seed, name, 0.8 + 0.02 * seed + 0.001 * len(tag),
                          params=params + 100 * seed, pruning_cfg=RMT if name in ("rmt", "control") else {})
            if horizon is not None:
                edit_summary(f, lambda d: {**d, "config": {**d["config"], "schedule": {"name": "linear",
                                                                                    "horizon": horizon}}})
    code, stdout, err = cli("compare", str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "comparison.csv").set_index("arm")
    front = pd.read_csv(tmp_path / "out" / "frontier.csv")
    assert list(front.columns) == FRONTIER_COLUMNS
    assert set(front["arm"]) == set(table.index) == {"none", "control", "rmt", "rmt (horizon=9.0)", "magnitude"}
    front = front.set_index("arm")
    assert front.loc["rmt (horizon=9.0)", "pruning_method"] == "rmt"
    assert front.loc["rmt (horizon=9.0)", "setting"] == "horizon=9.0"
    for arm in table.index:
        assert front.loc[arm, "n_seeds"] == table.loc[arm, "n_seeds"] == 3
        assert front.loc[arm, "params_mean"] == pytest.approx(table.loc[arm, "params_end"])
        assert front.loc[arm, "acc_mean"] == pytest.approx(table.loc[arm, "final_mean"])
        assert front.loc[arm, "acc_std"] == pytest.approx(table.loc[arm, "final_std"])
        assert front.loc[arm, "params_std"] == pytest.approx(100.0)
    pngs = [p.name for p in (tmp_path / "out").glob("*_frontier.png")]
    assert len(pngs) == 1 and (tmp_path / "out" / pngs[0]).stat().st_size > 5000


@pytest.mark.slow
def test_no_frontier_with_a_single_pruned_configuration(tmp_path):
    for seed in range(2):
        write_run(tmp_path / f"none{seed}", seed, "none", 0.9)
        write_run(tmp_path / f"control{seed}", seed, "control", 0.9, pruning_cfg=RMT)
        write_run(tmp_path / f"rmt{seed}", seed, "rmt", 0.8, params=30_000, pruning_cfg=RMT)
    cmp = compare([tmp_path])
    assert cmp.frontier.empty
    from rmtprune.report.compare import write_outputs
    written = write_outputs(cmp, tmp_path / "out", ["csv"], plots=True)
    assert not (tmp_path / "out" / "frontier.csv").exists() and not any("frontier" in p.name for p in written)


def test_the_drop_at_each_event_is_in_the_curves(tmp_path):
    after = {0: {1: 0.60, 2: 0.70}, 1: {1: 0.64, 2: 0.74}}
    for seed in range(2):
        write_run(tmp_path / f"none{seed}", seed, "none", 0.9)
        write_run(tmp_path / f"rmt{seed}", seed, "rmt", 0.8, params=30_000, after=after[seed])
    cmp = compare([tmp_path])
    rmt = cmp.curves[cmp.curves["arm"] == "rmt"].set_index("epoch")
    assert rmt.loc[1, "test_acc_after_event_mean"] == pytest.approx(0.62)
    assert rmt.loc[2, "test_acc_after_event_mean"] == pytest.approx(0.72)
    assert rmt.loc[2, "test_acc_after_event_std"] == pytest.approx(np.std([0.70, 0.74], ddof=1))
    assert rmt.loc[1, "test_loss_after_event_mean"] == pytest.approx(0.38)
    assert math.isnan(rmt.loc[3, "test_acc_after_event_mean"])
    none = cmp.curves[cmp.curves["arm"] == "none"]
    assert none["test_acc_after_event_mean"].isna().all()

    import matplotlib.pyplot as plt

    from rmtprune.report.plots import _event_drops
    fig, ax = plt.subplots()
    _event_drops(ax, rmt.reset_index(), "test_acc", "C1")
    lines = {tuple(np.round(ln.get_ydata(), 6)) for ln in ax.get_lines()}
    plt.close(fig)
    # a segment from the epoch's accuracy (before the event) down to the one right after it, per event
    assert (0.78, 0.62) in lines and (0.79, 0.72) in lines and (0.62, 0.72) in lines


@pytest.mark.slow
def test_control_columns_only_against_a_control_with_the_arms_calendar(tmp_path):
    """An arm whose event calendar (every, start_epoch, stop_epoch, lr_factor, momentum) differs from the
    control's gets no control_* numbers, and a note naming the keys; a control arm with its calendar is used."""
    values = {"none": [0.90, 0.92, 0.91], "control": [0.89, 0.90, 0.92], "rmt": [0.88, 0.87, 0.90],
              "slow": [0.85, 0.86, 0.84], "slow control": [0.80, 0.83, 0.81]}
    slow = {**RMT, "every": 2, "lr_factor": 0.99}
    first, second = tmp_path / "a", tmp_path / "b"
    for root in (first, second):
        for seed in range(3):
            write_run(root / f"none{seed}", seed, "none", values["none"][seed])
            write_run(root / f"control{seed}", seed, "control", values["control"][seed], pruning_cfg=RMT)
            write_run(root / f"rmt{seed}", seed, "rmt", values["rmt"][seed], params=30_000, pruning_cfg=RMT)
            write_run(root / f"slow{seed}", seed, "rmt", values["slow"][seed], params=30_000, pruning_cfg=slow)
    for seed in range(3):  # the second folder also holds a control on the slow calendar
        write_run(second / f"slowcontrol{seed}", seed, "control", values["slow control"][seed], pruning_cfg=slow)
    mean = {arm: float(np.mean(v)) for arm, v in values.items()}

    table = compare([first]).table.set_index("arm")
    assert table.loc["rmt", "control_diff"] == pytest.approx(mean["rmt"] - mean["control"])
    slow_arm = "rmt (every=2, lr_factor=0.99)"
    assert all(math.isnan(table.loc[slow_arm, c]) for c in COLUMNS if c.startswith("control_"))
    assert table.loc[slow_arm, "diff"] == pytest.approx(mean["slow"] - mean["none"])
    assert "control has another calendar: every, lr_factor" in table.loc[slow_arm, "note"]
    assert "calendar" not in str(table.loc["rmt", "note"])

    assert math.isnan(table.loc[slow_arm, "control_arm"]) and table.loc["rmt", "control_arm"] == "control"

    cmp = compare([second], equivalence=0.3)
    table = cmp.table.set_index("arm")
    assert table.loc[slow_arm, "control_diff"] == pytest.approx(mean["slow"] - mean["slow control"])
    assert table.loc["rmt", "control_diff"] == pytest.approx(mean["rmt"] - mean["control"])
    assert "calendar" not in str(table.loc[slow_arm, "note"])
    # each arm names the control it was tested against, in comparison.csv and in comparison.md
    slow_control = "control (every=2, lr_factor=0.99)"
    assert table.loc[slow_arm, "control_arm"] == slow_control and table.loc["rmt", "control_arm"] == "control"
    assert list(cmp.table["arm"])[:3] == ["none", "control", slow_control]   # the references first
    md = markdown(cmp)
    row = next(line for line in md.splitlines() if line.startswith(f"| {slow_arm} |"))
    assert f"| {slow_control}: {100 * (mean['slow'] - mean['slow control']):.2f} [" in row
    assert f"- {slow_arm} vs {slow_control}: " in md and "- rmt vs control: " in md


def test_a_matched_baseline_is_tested_against_the_arm_it_was_matched_to(tmp_path, cli):
    """Two sweeps, each an rmt arm with a magnitude arm matched to it (target_from names the sweep folder),
    compared together: each baseline's matched_* columns are against its own rmt arm, seed by seed."""
    values = {"main": {"rmt": [0.88, 0.87, 0.90], "magnitude": [0.89, 0.89, 0.91]},
              "h5": {"rmt": [0.80, 0.84, 0.83], "magnitude": [0.85, 0.84, 0.88]}}
    for sweep, horizon, params in (("main", 3.0, 30_000), ("h5", 5.0, 10_000)):
        for seed in range(3):
            if sweep == "main":
                write_run(tmp_path / sweep / f"none_seed{seed}", seed, "none", 0.9)
            f = write_run(tmp_path / sweep / f"rmt_seed{seed}", seed, "rmt", values[sweep]["rmt"][seed],
                          params=params, pruning_cfg=RMT)
            edit_summary(f, lambda d: {**d, "config": {**d["config"], "schedule": {"name": "linear", "horizon": horizon}}})
            write_run(tmp_path / sweep / f"magnitude_seed{seed}", seed, "magnitude", values[sweep]["magnitude"][seed],
                      params=params, pruning_cfg={**RMT, "target_from": f"outputs/paper/{sweep}/",
                                                  "target_params": params})
    code, stdout, err = cli("compare", str(tmp_path / "main"), str(tmp_path / "h5"), "--no-plots",
                            "--out", str(tmp_path / "out"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "comparison.csv").set_index("arm")
    # the magnitude label names target_from where it differs from the usual one (a tie: the first in order)
    arms = {"main": ("rmt", "magnitude (target_from=main)"), "h5": ("rmt (horizon=5.0)", "magnitude")}
    assert set(table.index) == {"none", *arms["main"], *arms["h5"]}
    for sweep, (rmt, magnitude) in arms.items():
        base, ref = values[sweep]["magnitude"], values[sweep]["rmt"]
        assert table.loc[magnitude, "matched_arm"] == rmt
        assert table.loc[magnitude, "matched_diff"] == pytest.approx(np.mean(base) - np.mean(ref))
        assert table.loc[magnitude, "matched_paired_p"] == pytest.approx(st.ttest_rel(base, ref).pvalue)
        assert table.loc[magnitude, "matched_welch_p"] == pytest.approx(st.ttest_ind(base, ref, equal_var=False).pvalue)
        assert table.loc[magnitude, "matched_n_pairs"] == 3
        assert pd.isna(table.loc[rmt, "matched_arm"]) and pd.isna(table.loc[rmt, "matched_diff"])
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "vs the arm it matches" in md and "| rmt (horizon=5.0): " in md
    # the frontier's curves: rmt's settings along one, the matched magnitude arms along another
    front = pd.read_csv(tmp_path / "out" / "frontier.csv").set_index("arm")
    assert front.loc["rmt (horizon=5.0)", "series"] == front.loc["rmt", "series"] == "rmt"
    assert set(front.loc[[arms["main"][1], arms["h5"][1]], "series"]) == {"magnitude"}


def test_a_baseline_variant_is_a_curve_of_its_own_in_the_frontier():
    from rmtprune.report.compare import _series

    assert _series("rmt", "horizon=5.0, schedule=oneshot") == "rmt"
    assert _series("magnitude", "start_epoch=5, stop_epoch=5, target_from=frontier_oneshot") == "magnitude"
    assert _series("lowrank", "target_epoch=5, target_from=h5") == "lowrank (target_epoch=5)"
    assert _series("magnitude", "scope=layer") == "magnitude (scope=layer)"
    assert _series("magnitude", "") == "magnitude"


def test_the_report_tables_print_the_comparison(tmp_path):
    """benchmarks/results_tables.py: the rows of docs/results.md come from comparison.csv unchanged."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_tables", Path(__file__).parents[1] / "benchmarks" /
                                                  "results_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    for seed, (rmt, mag) in enumerate(((0.88, 0.89), (0.87, 0.89), (0.90, 0.91))):
        write_run(tmp_path / "main" / f"none_seed{seed}", seed, "none", 0.9)
        write_run(tmp_path / "main" / f"rmt_seed{seed}", seed, "rmt", rmt, params=30_000, pruning_cfg=RMT)
        write_run(tmp_path / "main" / f"magnitude_seed{seed}", seed, "magnitude", mag, params=30_000,
                  pruning_cfg={**RMT, "target_from": "outputs/main", "target_params": 30_000})
    cmp = compare([tmp_path / "main"])
    rows = {line.split(" | ")[0].strip("| "): line for line in tables.main_table(cmp.table)[2:]}
    assert list(rows) == ["none", "rmt", "magnitude"]
    assert "| 88.33 ± 1.53 | 30,000 (−70.0%) |" in rows["rmt"]
    base, ref = [0.89, 0.89, 0.91], [0.88, 0.87, 0.90]
    welch = st.ttest_ind(base, ref, equal_var=False).pvalue
    pair = st.ttest_rel(base, ref).pvalue
    # each p with its Holm twin: the magnitude arm is the only test against the arm it matches (family of one)
    assert f"| 1.33 [" in rows["magnitude"] and rows["magnitude"].endswith(
        f"] ({welch:.3f} ({welch:.3f}), {pair:.3f} ({pair:.3f})) |")
    # the verdict's table: the same test of the matched baseline, the arms ordered by the rmt setting they belong to
    verdict = [line.split(" | ") for line in tables.verdict_table(cmp.table)[2:]]
    assert [(cells[0].strip("| "), cells[1]) for cells in verdict] == [
        ("", "none"), ("the table's one rmt setting", "rmt"), ("the table's one rmt setting", "magnitude")]
    assert " | ".join(verdict[2]).endswith(f"] ({welch:.3f} ({welch:.3f}), {pair:.3f} ({pair:.3f})) |")
    # the long regime's curves: accuracy at chosen epochs, and how far the end is below the best epoch
    for seed, final in enumerate((0.80, 0.82)):
        f = write_run(tmp_path / "long" / f"none_seed{seed}", seed, "none", final, epochs=12)
        rows = pd.read_csv(f / "metrics.csv")
        rows.loc[rows["epoch"] == 6, "test_acc"] = 0.95  # a peak in the middle, then a decline
        rows.to_csv(f / "metrics.csv", index=False)
    curves = [line.split(" | ") for line in tables.curves_table(compare([tmp_path / "long"]).curves, points=(1, 6))]
    assert curves[0][2:5] == ["test accuracy at epoch 1", "epoch 6", "epoch 12"]
    at1 = [0.80 - 0.11, 0.82 - 0.11]
    assert curves[2][:5] == ["| none", "2", f"{100 * np.mean(at1):.2f} ± {100 * np.std(at1, ddof=1):.2f}",
                             "95.00 ± 0.00", "81.00 ± 1.41"]
    assert curves[2][5:] == ["–", "-14.00 (best: epoch 6) |"]
    # arms of several groups (the long regime's none with and without L1+L2) are told apart by what differs
    groups = pd.Series(["dataset.name=f, optimizer.l1=5e-06", "dataset.name=f, optimizer.l1=0.0"])
    assert tables.group_tags(groups).tolist() == ["optimizer.l1=5e-06", "optimizer.l1=0.0"]
    assert tables.group_tags(groups[:1]).tolist() == [""]


def test_a_baseline_is_not_tested_against_a_guess_when_two_arms_fit(tmp_path):
    """target_from names a folder by its last part: two rmt arms in folders of that name give no matched_* numbers."""
    for parent, horizon in (("a", 3.0), ("b", 5.0)):
        for seed in range(2):
            f = write_run(tmp_path / parent / "main" / f"rmt_seed{seed}", seed, "rmt", 0.88, params=30_000,
                          pruning_cfg=RMT)
            edit_summary(f, lambda d: {**d, "config": {**d["config"], "schedule": {"name": "linear", "horizon": horizon}}})
    for seed in range(2):
        write_run(tmp_path / "a" / "main" / f"magnitude_seed{seed}", seed, "magnitude", 0.89, params=30_000,
                  pruning_cfg={**RMT, "target_from": "outputs/main", "target_params": 30_000})
    table = compare([tmp_path / "a", tmp_path / "b"]).table.set_index("arm")
    assert table["matched_arm"].isna().all()
    table = compare([tmp_path / "a"]).table.set_index("arm")
    assert table.loc["magnitude", "matched_arm"] == "rmt"


def test_trajectory_matched_neuron_and_magnitude_seeds_are_one_arm_tested_against_rmt(tmp_path):
    """match=trajectory: each seed has its own per-event counts (pruning.target_trajectory), yet the seeds of
    one matched baseline are one arm, tested against the rmt arm it matched (matched_* columns)."""
    values = {"rmt": [0.88, 0.87, 0.90], "neuron": [0.86, 0.85, 0.89], "magnitude": [0.89, 0.88, 0.90]}
    for seed in range(3):
        params = 30_000 + 100 * seed
        write_run(tmp_path / "main" / f"rmt_seed{seed}", seed, "rmt", values["rmt"][seed], params=params,
                  pruning_cfg=RMT)
        for name in ("neuron", "magnitude"):
            write_run(tmp_path / "main" / f"{name}_seed{seed}", seed, name, values[name][seed], params=params,
                      pruning_cfg={**RMT, "target_from": "outputs/main", "target_params": params,
                                   "match": "trajectory", "target_trajectory": [60_000 + seed, params]})
    cmp = compare([tmp_path / "main"])
    table = cmp.table.set_index("arm")
    assert set(table.index) == {"rmt", "neuron", "magnitude"}  # the only setting of each: no label needed
    for name in ("neuron", "magnitude"):
        row = table.loc[name]
        assert row["matched_arm"] == "rmt" and row["n_seeds"] == 3
        assert row["matched_diff"] == pytest.approx(np.mean(values[name]) - np.mean(values["rmt"]))
    from rmtprune.report.compare import _series

    assert _series("neuron", "match=trajectory, target_from=main") == "neuron (match=trajectory)"


def test_group_labels_name_the_data_set_not_the_checksums_of_its_files(tmp_path, cli):
    """MNIST runs record the md5 of each raw file, synthetic runs none: the labels say dataset.name only."""
    for seed in range(2):
        write_run(tmp_path / f"syn{seed}", seed)
        run = write_run(tmp_path / f"mnist{seed}", seed)
        mnist = {"name": "mnist", "raw_md5": {"train-images-idx3-ubyte": "6bbc9ace", "t10k-images-idx3-ubyte": "2646ac64"}}
        edit_summary(run, lambda d: {**d, "config": {**d["config"], "dataset": {**d["config"]["dataset"], **mnist}}})
    cmp = compare([tmp_path])
    assert sorted(sorted(label.split(", ")) for label in cmp.groups) == [
        ["dataset.name=mnist", "model.name=mlp", "topology=784-100-10"],
        ["dataset.name=synthetic", "model.name=mlp", "topology=784-100-10"]]
