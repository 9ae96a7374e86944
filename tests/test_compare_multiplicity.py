"""``rmtprune compare``: Holm-adjusted p-values per table, equivalence (TOST) within ``--equivalence`` points,
and no variance test below 3 seeds; on hand-written run folders, against statsmodels' reference values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_ind, ttost_paired
from test_compare_arms import RMT, write_run
from tests_support.runs import edit_summary

from rmtprune.report.compare import P_COLUMNS, compare, markdown

# group 784-100-10: rmt is close to control (equivalent within 0.3 points), rmt at horizon 9 is not
VALUES = {"none": [0.9810, 0.9822, 0.9801, 0.9815], "control": [0.9800, 0.9810, 0.9805, 0.9795],
          "rmt": [0.9802, 0.9808, 0.9800, 0.9799], "rmt (horizon=9.0)": [0.9700, 0.9650, 0.9720, 0.9600]}
SMALL = {"none": [0.951, 0.962, 0.944], "control": [0.948, 0.957, 0.950], "rmt": [0.931, 0.940, 0.929]}
PARAMS = {"none": 100_000, "control": 100_000, "rmt": 30_000}


def _write_group(root, values: dict[str, list[float]], topology: str) -> None:
    """One run per arm and seed (the final accuracy given), all of ``topology``: one group."""
    for arm, finals in values.items():
        name = arm.split(" ")[0]
        for seed, v in enumerate(finals):
            f = write_run(root / f"{topology}_{name}{len(arm)}_{seed}", seed, name, v, params=PARAMS[name],
                          pruning_cfg=None if name == "none" else RMT)
            horizon = 9.0 if "horizon=9.0" in arm else 3.0
            edit_summary(f, lambda d: {**d, "config": {**d["config"], "topology": topology,
                                                    "schedule": {"name": "linear", "horizon": horizon}}})


@pytest.fixture
def two_groups(tmp_path):
    _write_group(tmp_path, VALUES, "784-100-10")
    _write_group(tmp_path, SMALL, "784-50-10")
    return tmp_path


@pytest.mark.slow
def test_every_p_value_column_has_a_holm_twin_whose_family_is_its_table(two_groups, cli):
    code, _, err = cli("compare", str(two_groups), "--no-plots", "--equivalence", "0.3")
    assert code == 0, err
    table = pd.read_csv(two_groups / "comparison.csv")
    assert table["group"].nunique() == 2
    tested = 0
    for col in P_COLUMNS:
        assert f"{col}_holm" in table
        for _, part in table.groupby("group"):
            p, adjusted = part[col].to_numpy(), part[f"{col}_holm"].to_numpy()
            defined = ~np.isnan(p)
            assert np.array_equal(np.isnan(adjusted), ~defined), col
            if defined.sum() > 1:
                assert adjusted[defined] == pytest.approx(multipletests(p[defined], method="holm")[1]), col
                tested += 1
    assert tested >= 10   # welch, paired, f, levene, tost, paired tost against none and control, in the big group
    md = (two_groups / "comparison.md").read_text()
    assert "the family is every test in the same column of the same group's table" in md
    big = table[table["group"].str.contains("784-100-10")].set_index("arm")
    cell = f"{big.loc['rmt', 'control_welch_p']:.3f} ({big.loc['rmt', 'control_welch_p_holm']:.3f})"
    assert cell in md


@pytest.mark.slow
def test_equivalence_within_delta_points_against_statsmodels(two_groups, cli):
    code, _, err = cli("compare", str(two_groups), "--no-plots", "--equivalence", "0.3")
    assert code == 0, err
    table = pd.read_csv(two_groups / "comparison.csv")
    table = table[table["group"].str.contains("784-100-10")].set_index("arm")
    delta = 0.003   # 0.3 points of accuracy
    assert table["equivalence_delta"].to_numpy() == pytest.approx([delta] * 4)
    for arm in ("rmt", "rmt (horizon=9.0)"):
        x, y = np.array(VALUES[arm]), np.array(VALUES["control"])
        r = table.loc[arm]
        assert r["control_tost_p"] == pytest.approx(ttost_ind(x, y, -delta, delta, usevar="unequal")[0])
        assert r["control_paired_tost_p"] == pytest.approx(ttost_paired(x, y, -delta, delta)[0])
        assert r["tost_p"] == pytest.approx(ttost_ind(x, np.array(VALUES["none"]), -delta, delta, usevar="unequal")[0])
        d = x - y
        half = st.t.ppf(0.95, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        assert (r["control_paired_diff_ci90_low"], r["control_paired_diff_ci90_high"]) == pytest.approx(
            (d.mean() - half, d.mean() + half))
        ci = st.ttest_ind(x, y, equal_var=False).confidence_interval(0.90)
        assert (r["control_diff_ci90_low"], r["control_diff_ci90_high"]) == pytest.approx((ci.low, ci.high))
    md = (two_groups / "comparison.md").read_text()
    assert "Equivalence within ±0.3 points" in md
    assert "- rmt vs control: equivalent (Welch: 90% CI [" in md
    assert "- rmt (horizon=9.0) vs control: not shown (" in md
    assert table.loc["rmt", "control_tost_p_holm"] < 0.05 <= table.loc["rmt (horizon=9.0)", "control_tost_p_holm"]


@pytest.mark.slow
def test_without_a_margin_only_the_90_percent_intervals(two_groups):
    cmp = compare([two_groups])
    assert cmp.table["tost_p"].isna().all() and cmp.table["control_paired_tost_p_holm"].isna().all()
    assert cmp.table["equivalence_delta"].isna().all()
    rmt = cmp.table[cmp.table["arm"] == "rmt"]
    assert (rmt["control_diff_ci90_low"] < rmt["control_diff"]).all()
    assert (rmt["control_diff"] < rmt["control_diff_ci90_high"]).all()
    assert "Equivalence within" not in markdown(cmp)


def test_no_f_or_levene_test_below_three_seeds_a_dash_a_note_and_no_warning(tmp_path):
    _write_group(tmp_path, {"none": [0.951, 0.962], "control": [0.948, 0.957], "rmt": [0.931, 0.940, 0.929]},
                 "784-100-10")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cmp = compare([tmp_path])
        md = markdown(cmp)
    table = cmp.table.set_index("arm")
    for col in ("f_p", "levene_p", "control_f_p", "control_levene_p"):
        assert table[col].isna().all() and table[f"{col}_holm"].isna().all()
    ratio = np.var([0.931, 0.940, 0.929], ddof=1) / np.var([0.951, 0.962], ddof=1)
    assert table.loc["rmt", "var_ratio"] == pytest.approx(ratio)
    assert "no F or Levene test against none, control: fewer than 3 seeds in an arm" in table.loc["rmt", "note"]
    assert "no F or Levene test against none" in table.loc["control", "note"]
    assert "(F p –, Levene p –)" in md and "- rmt: " in md


@pytest.mark.parametrize("value", ["-0.3", "0", "nan", "inf", "abc"])
def test_a_bad_equivalence_margin_is_one_error_line(two_groups, cli, capsys, value):
    try:
        code, _, err = cli("compare", str(two_groups), "--no-plots", "--equivalence", value)
    except SystemExit as exc:   # argparse's own check (not a number) exits there
        code, err = exc.code, capsys.readouterr().err
    assert code == 2 and err.startswith("rmtprune: error:") and "--equivalence" in err
    assert len(err.strip().splitlines()) == 1 and not (two_groups / "comparison.csv").exists()
