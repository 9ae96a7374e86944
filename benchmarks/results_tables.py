"""The tables of docs/results.md, printed from the comparison.csv files that `rmtprune compare` wrote.

    python benchmarks/results_tables.py main docs/results/mnist_fc_1000_1000_1000_500_cpu
    python benchmarks/results_tables.py frontier docs/results/frontier_mnist

``main``: one row per arm (none, control, rmt, magnitude, lowrank) with the tests against none, control
and, for a matched baseline, the rmt arm it was matched to. ``frontier``: the arms of the combined
frontier comparison, grouped by the rmt setting each baseline was matched to. Accuracies in percent,
differences in points; p-values as compare computed them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

METHODS = ("rmt", "magnitude", "lowrank")
LEVELS = {"rmt": "horizon 10 (main sweeps)", "rmt (horizon=5.0)": "horizon 5", "rmt (horizon=7.0)": "horizon 7"}
ONESHOT = "one shot after epoch 5"


def pct(v: float, sign: bool = True) -> str:
    if v != v:
        return "–"
    return (f"{100 * v:+.2f}" if sign else f"{100 * v:.2f}").replace("-", "−")


def pval(v: float) -> str:
    return "–" if v != v else (f"{v:.1e}" if v < 0.001 else f"{v:.2g}")


def size(r: pd.Series) -> str:
    if r["param_reduction_pct"] > 0:
        return f"{r['params_end']:,.0f} (−{r['param_reduction_pct']:.1f}%)"
    return f"{r['params_end']:,.0f}"


def versus_matched(r: pd.Series) -> str:
    if not isinstance(r.get("matched_arm"), str):
        return "–"
    return (f"{pct(r['matched_diff'])} [{pct(r['matched_diff_ci_low'])}, {pct(r['matched_diff_ci_high'])}] "
            f"({pval(r['matched_welch_p'])}, {pval(r['matched_paired_p'])})")


def ratio(r: pd.Series, prefix: str) -> str:
    v = r[prefix + "var_ratio"]
    if v != v:
        return "–"
    return (f"{v:.2g} [{r[prefix + 'var_ratio_ci_low']:.2g}, {r[prefix + 'var_ratio_ci_high']:.2g}] "
            f"({pval(r[prefix + 'f_p'])}, {pval(r[prefix + 'levene_p'])})")


def main_table(t: pd.DataFrame) -> list[str]:
    order = {"none": 0, "control": 1, **{m: 2 + i for i, m in enumerate(METHODS)}}
    t = t.assign(k=[order.get(a, 9) for a in t["arm"]]).sort_values("k", kind="stable")
    lines = ["| arm | seeds | final accuracy | parameters after | vs none: Δ (Welch p) | vs control: Δ (Welch p, "
             "paired p) | variance ratio vs control [bootstrap 95% CI] (F p, Levene p) | vs rmt: Δ [95% CI] "
             "(Welch p, paired p) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        vn = "–" if r["diff"] != r["diff"] else f"{pct(r['diff'])} ({pval(r['welch_p'])})"
        vc = ("–" if r["control_diff"] != r["control_diff"] else
              f"{pct(r['control_diff'])} ({pval(r['control_welch_p'])}, {pval(r['control_paired_p'])})")
        lines.append(f"| {r['arm']} | {r['n_seeds']} | {pct(r['final_mean'], False)} ± {pct(r['final_std'], False)} | "
                     f"{size(r)} | {vn} | {vc} | {ratio(r, 'control_')} | {versus_matched(r)} |")
    return lines


def _level(r: pd.Series) -> str:
    ref = r["matched_arm"] if isinstance(r.get("matched_arm"), str) else r["arm"]
    return LEVELS.get(ref, ONESHOT if "oneshot" in ref else ref)


def _short(arm: str) -> str:
    """The arm label without what the level column says (target folder, calendar, rmt schedule)."""
    arm = re.sub(r"(target_from|start_epoch|stop_epoch|horizon|schedule)=[^,)]*(, )?", "", arm)
    return arm.replace(", )", ")").replace(" ()", "")


def frontier_table(t: pd.DataFrame) -> list[str]:
    refs = ("none", "control")
    levels = ["", *LEVELS.values(), ONESHOT]
    t = t.assign(level=["" if a in refs else _level(r) for a, (_, r) in zip(t["arm"], t.iterrows())])
    t = t.assign(k=[refs.index(a) if a in refs else 2 + (levels.index(lv) if lv in levels else 99)
                    for a, lv in zip(t["arm"], t["level"])],
                 m=[METHODS.index(_short(a).split(" ")[0]) if _short(a).split(" ")[0] in METHODS else 0 for a in t["arm"]],
                 te=["target_epoch" in a for a in t["arm"]])
    t = t.sort_values(["k", "m", "te"], kind="stable")
    lines = ["| rmt setting | arm | seeds | parameters after | final accuracy | vs none: Δ (Welch p) | vs control: Δ "
             "(Welch p) | vs the rmt arm it matches: Δ [95% CI] (Welch p, paired p) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        vn = "–" if r["diff"] != r["diff"] else f"{pct(r['diff'])} ({pval(r['welch_p'])})"
        vc = "–" if r["control_diff"] != r["control_diff"] else f"{pct(r['control_diff'])} ({pval(r['control_welch_p'])})"
        lines.append(f"| {r['level']} | {_short(r['arm'])} | {r['n_seeds']} | {size(r)} | {pct(r['final_mean'], False)} ± "
                     f"{pct(r['final_std'], False)} | {vn} | {vc} | {versus_matched(r)} |")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("main", "frontier"):
        sys.exit("usage: python benchmarks/results_tables.py main|frontier COMPARE_OUTPUT_FOLDER")
    table = pd.read_csv(Path(sys.argv[2]) / "comparison.csv")
    print("\n".join(main_table(table) if sys.argv[1] == "main" else frontier_table(table)))
