"""The tables of docs/results.md, printed from the comparison.csv files that `rmtprune compare` wrote.

    python benchmarks/results_tables.py main docs/results/mnist_fc_1000_1000_1000_500_cpu
    python benchmarks/results_tables.py frontier docs/results/frontier_mnist
    python benchmarks/results_tables.py verdict docs/results/verdict_mnist
    python benchmarks/results_tables.py curves docs/results/long_fashion

``main``: one row per arm (none, control, rmt, magnitude, lowrank) with the tests against none, control
and, for a matched baseline, the rmt arm it was matched to. ``frontier``: the arms of the combined
frontier comparison, grouped by the rmt setting each baseline was matched to. Accuracies in percent,
differences in points; every cell formatted by rmtprune.report.compare as in comparison.md (p-values with their
Holm-adjusted twins in parentheses). ``verdict``: the remade verdict's arms (benchmarks/reproduce_verdict.sh),
each against ``control`` (Δ, Welch p, and the two one-sided test for "within the table's margin", Holm-adjusted)
and a baseline against the rmt arm it was matched to, with the costs: bytes, latency against the dense model.
``curves`` (compare's curves.csv): one row per arm, its test accuracy (mean ± std over the seeds) at a few epochs
of a long run, the epoch of its best mean validation accuracy, and how far the last epoch is below the best
epoch of the mean test curve: whether an arm degrades over long training (descriptive, selects nothing).
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import pandas as pd

from rmtprune.report.compare import control_named, cost_cell, diff_cell, fmt_p, fmt_value, p_cell, ratio_cell
from rmtprune.report.stats import ALPHA

METHODS = ("rmt", "magnitude", "neuron", "lowrank")
LEVELS = {"rmt": "horizon 10 (main sweeps)", "rmt (horizon=5.0)": "horizon 5", "rmt (horizon=7.0)": "horizon 7"}
ONESHOT = "one shot after epoch 5"


METRIC = "test_acc"


def mean_std(r: pd.Series) -> str:
    return f"{fmt_value(r['final_mean'], METRIC)} ± {fmt_value(r['final_std'], METRIC)}"


def size(r: pd.Series) -> str:
    if r["param_reduction_pct"] > 0:
        return f"{r['params_end']:,.0f} (−{r['param_reduction_pct']:.1f}%)"
    return f"{r['params_end']:,.0f}"


def versus(r: pd.Series, prefix: str, paired: bool = True) -> str:
    """Δ [95% CI] (Welch p[, paired p]) against none (prefix ""), control or the matched arm, as compare shows it;
    each p followed by its Holm-adjusted twin in parentheses where comparison.csv has it."""
    if r[prefix + "diff"] != r[prefix + "diff"]:
        return "–"
    ps = p_cell(r, prefix + "welch_p") + (f", {p_cell(r, prefix + 'paired_p')}" if paired else "")
    return f"{diff_cell(r, METRIC, prefix)} ({ps})"


def main_table(t: pd.DataFrame) -> list[str]:
    order = {"none": 0, "control": 1, **{m: 2 + i for i, m in enumerate(METHODS)}}
    t = t.assign(k=[order.get(a, 9) for a in t["arm"]]).sort_values("k", kind="stable")
    lines = ["| arm | seeds | final accuracy | parameters after | vs none: Δ [95% CI] (Welch p (Holm)) | vs control: "
             "Δ [95% CI] (Welch p (Holm), paired p (Holm)) | variance ratio vs control [bootstrap 95% CI] (F p, "
             "Levene p) | vs rmt: Δ [95% CI] (Welch p (Holm), paired p (Holm)) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        lines.append(f"| {r['arm']} | {r['n_seeds']} | {mean_std(r)} | {size(r)} | {versus(r, '', paired=False)} | "
                     f"{versus(r, 'control_')} | {ratio_cell(r, 'control_')} | {versus(r, 'matched_')} |")
    return lines


def _level(r: pd.Series) -> str:
    ref = r["matched_arm"] if isinstance(r.get("matched_arm"), str) else r["arm"]
    return LEVELS.get(ref, ONESHOT if "oneshot" in ref else ref)


def _bare(arm: str) -> str:
    """The arm label without what the level column says (target folder, calendar, rmt schedule)."""
    arm = re.sub(r"(target_from|start_epoch|stop_epoch|horizon|schedule)=[^,)]*(, )?", "", arm)
    return arm.replace(", )", ")").replace(" ()", "")


def frontier_table(t: pd.DataFrame) -> list[str]:
    refs = ("none", "control")
    levels = ["", *LEVELS.values(), ONESHOT]
    t = t.assign(level=["" if a in refs else _level(r) for a, (_, r) in zip(t["arm"], t.iterrows())])
    t = t.assign(k=[refs.index(a) if a in refs else 2 + (levels.index(lv) if lv in levels else 99)
                    for a, lv in zip(t["arm"], t["level"])],
                 m=[METHODS.index(_bare(a).split(" ")[0]) if _bare(a).split(" ")[0] in METHODS else 0 for a in t["arm"]],
                 te=["target_epoch" in a for a in t["arm"]])
    t = t.sort_values(["k", "m", "te"], kind="stable")
    lines = ["| rmt setting | arm | seeds | parameters after | final accuracy | vs none: Δ [95% CI] (Welch p (Holm)) "
             "| vs control: Δ [95% CI] (Welch p (Holm)) | vs the rmt arm it matches: Δ [95% CI] (Welch p (Holm), "
             "paired p (Holm)) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        lines.append(f"| {r['level']} | {_bare(r['arm'])} | {r['n_seeds']} | {size(r)} | {mean_std(r)} | "
                     f"{versus(r, '', paired=False)} | {versus(r, 'control_', paired=False)} | {versus(r, 'matched_')} |")
    return lines


def _setting(r: pd.Series) -> str:
    """The rmt setting an arm belongs to (an rmt arm's own, a baseline's matched rmt arm's): what its label
    says of the calendar and schedule, e.g. ``horizon=5.0``; ``""`` for the unpruned arms."""
    ref = r["matched_arm"] if isinstance(r.get("matched_arm"), str) else r["arm"]
    if not ref.startswith("rmt"):
        return ""
    if "(" not in ref:
        return "the table's one rmt setting"
    return ", ".join(x for x in ref[ref.find("(") + 1:-1].split(", ") if not x.startswith(("target_from", "match")))


def bytes_latency(r: pd.Series) -> str:
    """Two cells, bytes and latency ratios, of compare's cost cell ("bytes (CSR); FLOPs; ×b1 / ×b256")."""
    cell = cost_cell(r)
    if cell == "–":
        return "– | –"
    size_bytes, _, latency = cell.split("; ")
    return f"{size_bytes} | {latency}"


def tost(r: pd.Series, prefix: str) -> str:
    p = r.get(f"{prefix}tost_p_holm", float("nan"))
    if p != p:
        return "–"
    return f"{'yes' if p < ALPHA else 'not shown'} (Holm p {fmt_p(p)})"


def group_tags(groups: pd.Series) -> pd.Series:
    """What sets each row's group apart from the table's other groups (compare's group label: "key=value, ..."),
    e.g. "optimizer.l1=0.0, optimizer.l2=0.0"; "" where the table has one group."""
    parts = {g: dict(x.split("=", 1) for x in g.split(", ") if "=" in x) for g in groups.unique()}
    keys = {k for d in parts.values() for k in d}
    varying = sorted(k for k in keys if len({d.get(k) for d in parts.values()}) > 1)
    return groups.map(lambda g: ", ".join(f"{k}={parts[g][k]}" for k in varying if k in parts[g]))


def _tagged(arm: str, tag: str) -> str:
    return f"{arm} [{tag}]" if tag else arm


def _method(arm: str) -> str:
    return arm.split(" (")[0]


def verdict_table(t: pd.DataFrame) -> list[str]:
    """One row per arm: the unpruned arms first (each control arm labelled with its calendar when the table has
    several), then each rmt setting with the baselines matched to it; the "vs control" cell names the control
    arm it is against when that is not the plain ``control``."""
    delta = t["equivalence_delta"].dropna()
    margin = f"±{100 * delta.iloc[0]:g}" if len(delta) else "±δ"
    refs = ("none", "control")
    t = t.assign(setting=[_setting(r) for _, r in t.iterrows()])
    settings = list(dict.fromkeys(s for s in t["setting"] if s))
    t = t.assign(k=[refs.index(_method(a)) if _method(a) in refs else 2 + settings.index(st)
                    for a, st in zip(t["arm"], t["setting"])],
                 m=[METHODS.index(_method(a)) if _method(a) in METHODS else 9 for a in t["arm"]])
    t = t.sort_values(["k", "m", "arm"], kind="stable")
    tags = group_tags(t["group"]) if "group" in t else pd.Series("", index=t.index)
    lines = [f"| rmt setting | arm | seeds | parameters after | bytes | latency vs dense, batch 1 / 256 | final "
             f"accuracy | vs control: Δ [95% CI] (Welch p (Holm)) | within {margin} of control (TOST) | vs the rmt arm it "
             f"matches: Δ [95% CI] (Welch p (Holm), paired p (Holm)) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in t.iterrows():
        if _method(r["arm"]) in refs:
            arm = r["arm"]
        else:
            arm = _method(r["arm"]) + (" (uniform)" if "rank_rule=uniform" in r["arm"] else "")
        arm = _tagged(arm, tags[i])
        vs_control = versus(r, "control_", paired=False)
        lines.append(f"| {r['setting']} | {arm} | {r['n_seeds']} | {size(r)} | {bytes_latency(r)} | {mean_std(r)} | "
                     f"{control_named(r) if vs_control != '–' else ''}{vs_control} | {tost(r, 'control_')} | "
                     f"{versus(r, 'matched_')} |")
    return lines


def curves_table(c: pd.DataFrame, points: tuple[int, ...] = (1, 10, 25, 50, 75)) -> list[str]:
    """One row per arm of compare's curves.csv (rows: group, arm, epoch, n, test_acc_mean, ...): the mean test
    accuracy ± std at ``points`` and at the arm's last epoch, the epoch whose mean validation accuracy is
    highest (–: no split), and last − best epoch of the mean test curve, in points."""
    last = int(c["epoch"].max())
    shown = [e for e in points if e < last] + [last]
    head = " | ".join(f"epoch {e}" for e in shown)
    lines = [f"| arm | seeds | test accuracy at {head} | best validation epoch | last − best of the mean test curve |",
             "|---|---|" + "---|" * len(shown) + "---|---|"]
    c = c.assign(tag=group_tags(c["group"]))
    for (arm, tag), a in c.groupby(["arm", "tag"], sort=False):
        arm = _tagged(arm, tag)
        a = a.set_index("epoch")
        cells = [mean_std(pd.Series({"final_mean": a.loc[e, "test_acc_mean"], "final_std": a.loc[e, "test_acc_std"]}))
                 if e in a.index else "–" for e in shown]
        val = a["val_acc_mean"] if "val_acc_mean" in a else pd.Series(dtype=float)
        best_val = str(int(val.idxmax())) if val.notna().any() else "–"
        drop = 100 * (a["test_acc_mean"].iloc[-1] - a["test_acc_mean"].max())
        lines.append(f"| {arm} | {int(a['n'].iloc[-1])} | " + " | ".join(cells) + f" | {best_val} | {drop:.2f} "
                     f"(best: epoch {int(a['test_acc_mean'].idxmax())}) |")
    return lines


TABLES = {"main": main_table, "frontier": frontier_table, "verdict": verdict_table, "curves": curves_table}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in TABLES:
        sys.exit(f"usage: python benchmarks/results_tables.py {'|'.join(TABLES)} COMPARE_OUTPUT_FOLDER")
    warnings.simplefilter("ignore", pd.errors.PerformanceWarning)  # assign() on a 120-column frame
    source = Path(sys.argv[2]) / ("curves.csv" if sys.argv[1] == "curves" else "comparison.csv")
    if not source.is_file():
        sys.exit(f"results_tables.py: error: {source}: no such file (made by rmtprune compare --out {sys.argv[2]})")
    table = pd.read_csv(source)
    print("\n".join(TABLES[sys.argv[1]](table)))
