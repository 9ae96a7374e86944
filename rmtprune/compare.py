"""``rmtprune compare``: a seed sweep turned into tables, tests and figures.

Runs are grouped by every config key that differs between them except the seed and the pruning
settings (or by ``--by`` keys; data set, model and topology always separate groups). Inside a
group, each pruning setting is an *arm*; ``none`` is the normal baseline every other arm is
tested against: difference of means (Welch t interval and test), paired t-test over shared
seeds, variance ratio (F-test, Levene), and magnitude pruning of the normal arm at the pruned
arm's parameter count.
"""

from __future__ import annotations

import logging
import sys
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .outputs import write_csv
from .runs import Run, load_runs
from .stats import describe, interpolate_at, paired, variance_ratio, welch

log = logging.getLogger("rmtprune")

ALWAYS_SEPARATE = ("dataset.name", "model.name", "topology")
NORMAL = "none"


@dataclass
class Comparison:
    table: pd.DataFrame                       # comparison.csv
    curves: pd.DataFrame                      # curves.csv
    problems: list[dict[str, str]] = field(default_factory=list)
    groups: dict[str, dict[str, list[Run]]] = field(default_factory=dict)
    metric: str = "test_acc"
    command: str = ""


def _arm_keys(k: str) -> bool:
    return k.startswith("pruning.") or k.startswith("schedule.")


def _varying(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


def _short(key: str) -> str:
    return "schedule" if key == "schedule.name" else key.split(".", 1)[-1]


def arm_label(run: Run, arm_keys: list[str], usual: dict[str, Any] | None = None) -> str:
    """``none``, or the pruning name plus the settings in which this run differs from the usual
    (most common) pruned run, e.g. ``rmt (horizon=300.0)``."""
    name = str(run.config.get("pruning.name", "none"))
    if name == NORMAL:
        return NORMAL
    usual = usual or {}
    extra = [f"{_short(k)}={run.config.get(k)}" for k in arm_keys
             if k != "pruning.name" and (k not in usual or run.config.get(k) != usual[k])]
    return name + (f" ({', '.join(extra)})" if extra else "")


def group_runs(runs: list[Run], by: list[str] | None) -> dict[str, dict[str, list[Run]]]:
    """{group label: {arm label: runs}}."""
    varying = _varying(runs)
    pruned = [r for r in runs if r.config.get("pruning.name", "none") != NORMAL]
    arm_keys = [k for k in _varying(pruned) if _arm_keys(k)] if len(pruned) > 1 else []
    usual = {}
    for k in arm_keys:
        counts = Counter(repr(r.config.get(k)) for r in pruned)
        modal = min(counts, key=lambda v: (-counts[v], v))  # ties: the same choice in every process
        usual[k] = next(r.config.get(k) for r in pruned if repr(r.config.get(k)) == modal)
    if by:
        keys = list(by) + [k for k in ALWAYS_SEPARATE if k in varying and k not in by]
    else:
        keys = [k for k in varying if k != "seed" and not _arm_keys(k)]
    # name the data set and the architecture in every label, varying or not
    keys = [k for k in ALWAYS_SEPARATE if k not in keys and any(k in r.config for r in runs)] + keys
    groups: dict[str, dict[str, list[Run]]] = {}
    for r in sorted(runs, key=lambda r: r.seed):
        label = ", ".join(f"{k}={r.config.get(k)}" for k in keys) or "all runs"
        groups.setdefault(label, {}).setdefault(arm_label(r, arm_keys, usual), []).append(r)
    return groups


def _final_and_best(run: Run, metric: str) -> tuple[float, float]:
    col = run.metrics[metric]
    best = col.min() if "loss" in metric else col.max()
    return float(col.iloc[-1]), float(best)


def _magnitude_at(normal_runs: list[Run], n_params: float, metric: str) -> list[float]:
    values = []
    col = metric if metric in ("test_acc", "test_loss") else "test_acc"
    for r in normal_runs:
        if r.magnitude is not None and len(r.magnitude):
            v = interpolate_at(n_params, r.magnitude["n_nonzero"], r.magnitude[col])
            if v == v:
                values.append(v)
    return values


def compare(paths: list[Path], by: list[str] | None = None, metric: str = "test_acc") -> Comparison:
    runs, problems = load_runs(paths)
    finished = []
    for r in runs:
        if r.status != "completed":
            problems.append({"folder": str(r.folder), "seed": str(r.seed),
                             "reason": f"status {r.status}: {r.summary.get('error', 'not finished')}"})
        elif metric not in r.metrics.columns or r.metrics.empty:
            problems.append({"folder": str(r.folder), "seed": str(r.seed), "reason": f"no {metric} in metrics.csv"})
        else:
            finished.append(r)
    groups = group_runs(finished, by)
    rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    for group, arms in groups.items():
        all_seeds = sorted({r.seed for rs in arms.values() for r in rs})
        normal = arms.get(NORMAL, [])
        normal_final = {r.seed: _final_and_best(r, metric)[0] for r in normal}
        for arm, rs in arms.items():
            missing = sorted(set(all_seeds) - {r.seed for r in rs})
            for s in missing:
                problems.append({"folder": group, "seed": str(s), "reason": f"arm {arm}: no finished run for this seed"})
            finals = {r.seed: _final_and_best(r, metric)[0] for r in rs}
            bests = [_final_and_best(r, metric)[1] for r in rs]
            fd, bd = describe(list(finals.values())), describe(bests)
            p_start = sum(r.summary["n_params_initial"] for r in rs) / len(rs)
            p_end = sum(r.summary["n_params_final"] for r in rs) / len(rs)
            row: dict[str, Any] = {
                "group": group, "arm": arm, "metric": metric, "n_seeds": len(rs),
                "seeds": " ".join(str(r.seed) for r in rs),
                **{f"final_{k}": v for k, v in fd.items() if k != "n"},
                **{f"best_{k}": v for k, v in bd.items() if k != "n"},
                "params_start": p_start, "params_end": p_end,
                "param_reduction_pct": 100.0 * (1 - p_end / p_start) if p_start else math.nan,
                "wall_time_s": sum(float(r.summary.get("wall_time_s", math.nan)) for r in rs) / len(rs),
                "note": "one seed: no variance" if len(rs) == 1 else "",
            }
            if arm != NORMAL and normal:
                row.update(welch(list(finals.values()), list(normal_final.values())))
                row.update(paired(finals, normal_final))
                row.update(variance_ratio(list(finals.values()), list(normal_final.values())))
                mag = describe(_magnitude_at(normal, p_end, metric))
                row.update(magnitude_at_same_params_mean=mag["mean"], magnitude_at_same_params_std=mag["std"],
                           magnitude_n=mag["n"])
            rows.append(row)
            curve_rows.extend(_curves(group, arm, rs))
    table = pd.DataFrame(rows, columns=COLUMNS)
    return Comparison(table, pd.DataFrame(curve_rows), problems, groups, metric)


COLUMNS = [
    "group", "arm", "metric", "n_seeds", "seeds",
    "final_mean", "final_std", "final_var", "final_min", "final_max", "final_ci_low", "final_ci_high",
    "best_mean", "best_std", "best_var", "best_min", "best_max", "best_ci_low", "best_ci_high",
    "params_start", "params_end", "param_reduction_pct", "wall_time_s",
    "diff", "diff_ci_low", "diff_ci_high", "welch_p", "n_pairs", "paired_diff", "paired_p",
    "var_ratio", "f_p", "levene_p", "magnitude_at_same_params_mean", "magnitude_at_same_params_std", "magnitude_n",
    "note",
]


def _curves(group: str, arm: str, runs: list[Run]) -> list[dict[str, Any]]:
    frames = pd.concat([r.metrics.assign(seed=r.seed) for r in runs])
    out = []
    for epoch, part in frames.groupby("epoch"):
        row = {"group": group, "arm": arm, "epoch": int(epoch), "n": len(part)}
        for col in ("test_acc", "train_acc", "test_loss", "train_loss", "n_params_after"):
            if col in part:
                row[f"{col}_mean"] = float(part[col].mean())
                row[f"{col}_std"] = float(part[col].std(ddof=1)) if len(part) > 1 else math.nan
        out.append(row)
    return out


def slug(group: str) -> str:
    """A short file name for a group label: values of the data set / model / topology, key-value otherwise."""
    parts = []
    for item in group.split(", "):
        key, _, value = item.partition("=")
        parts.append(value if key in ALWAYS_SEPARATE else f"{key.rsplit('.', 1)[-1]}-{value}")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)).strip("_")[:100] or "all"


def _pct(v: float, metric: str) -> str:
    if v != v:
        return "–"
    return f"{100 * v:.2f}" if "acc" in metric else f"{v:.4f}"


def _p(v: float) -> str:
    return "–" if v != v else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def markdown(cmp: Comparison) -> str:
    """comparison.md: one table per group, ready for a README or paper."""
    unit = " (%)" if "acc" in cmp.metric else ""
    lines = [f"# Comparison of normal and pruned training ({cmp.metric})", ""]
    if cmp.command:
        lines += [f"Made by `{cmp.command}` from {len(cmp.table)} arm(s) over "
                  f"{sum(len(rs) for arms in cmp.groups.values() for rs in arms.values())} runs; "
                  f"every run's full config is in its summary.json.", ""]
    for group, part in cmp.table.groupby("group", sort=False):
        lines += [f"## {group}", "",
                  f"| arm | seeds | final{unit} mean ± std | variance | best{unit} mean | params start → end "
                  f"(reduction) | Δ vs normal [95% CI] | Welch p | paired p | var ratio (F p, Levene p) | "
                  f"magnitude pruning at same params{unit} |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in part.iterrows():
            scale = 1e4 if "acc" in cmp.metric else 1.0
            var = "–" if r["final_var"] != r["final_var"] else f"{r['final_var'] * scale:.3g}"
            diff = "–" if r["diff"] != r["diff"] else (
                f"{_pct(r['diff'], cmp.metric)} [{_pct(r['diff_ci_low'], cmp.metric)}, {_pct(r['diff_ci_high'], cmp.metric)}]")
            vr = "–" if r["var_ratio"] != r["var_ratio"] else f"{r['var_ratio']:.2f} ({_p(r['f_p'])}, {_p(r['levene_p'])})"
            mag = "–" if r["magnitude_at_same_params_mean"] != r["magnitude_at_same_params_mean"] else (
                f"{_pct(r['magnitude_at_same_params_mean'], cmp.metric)} ± {_pct(r['magnitude_at_same_params_std'], cmp.metric)}")
            lines.append(
                f"| {r['arm']} | {r['n_seeds']} | {_pct(r['final_mean'], cmp.metric)} ± {_pct(r['final_std'], cmp.metric)} "
                f"| {var} | {_pct(r['best_mean'], cmp.metric)} | {r['params_start']:,.0f} → {r['params_end']:,.0f} "
                f"({r['param_reduction_pct']:.1f}%) | {diff} | {_p(r['welch_p'])} | {_p(r['paired_p'])} | {vr} | {mag} |")
        lines.append("")
    if "acc" in cmp.metric:
        lines.append("Accuracies in percent; variance in percent² (fraction² × 10⁴). Δ = pruned − normal.")
    if cmp.problems:
        lines += ["", "Runs left out:", ""] + [f"- {p['folder']} (seed {p.get('seed', '?')}): {p['reason']}"
                                                for p in cmp.problems]
    return "\n".join(lines) + "\n"


def write_outputs(cmp: Comparison, out: Path, formats: list[str], plots: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "csv" in formats:
        write_csv(out / "comparison.csv", cmp.table.to_dict("records"), COLUMNS)
        write_csv(out / "curves.csv", cmp.curves.to_dict("records"), list(cmp.curves.columns))
        written += [out / "comparison.csv", out / "curves.csv"]
    if "md" in formats:
        (out / "comparison.md").write_text(markdown(cmp), encoding="utf-8")
        written.append(out / "comparison.md")
    if plots:
        from .plots import esd_figures, group_figures

        for group, arms in cmp.groups.items():
            written += group_figures(cmp.curves[cmp.curves["group"] == group], group, out / f"{slug(group)}", cmp.metric)
            written += esd_figures(arms, out / f"{slug(group)}")
    return written


def print_table(cmp: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    for group, part in cmp.table.groupby("group", sort=False):
        t = Table(title=group, title_justify="left")
        for c in ("arm", "seeds", f"final {cmp.metric}", "var", "params end (red.)", "Δ vs normal", "Welch p",
                  "var ratio (F p)", "magnitude"):
            t.add_column(c, justify="left" if c == "arm" else "right")
        for _, r in part.iterrows():
            t.add_row(
                str(r["arm"]), str(r["n_seeds"]), f"{_pct(r['final_mean'], cmp.metric)} ± {_pct(r['final_std'], cmp.metric)}",
                "–" if r["final_var"] != r["final_var"] else f"{r['final_var']:.2e}",
                f"{r['params_end']:,.0f} ({r['param_reduction_pct']:.0f}%)", _pct(r["diff"], cmp.metric), _p(r["welch_p"]),
                "–" if r["var_ratio"] != r["var_ratio"] else f"{r['var_ratio']:.2f} ({_p(r['f_p'])})",
                _pct(r["magnitude_at_same_params_mean"], cmp.metric))
        console.print(t)
    for p in cmp.problems:
        console.print(f"[yellow]warning:[/] {p['folder']} (seed {p.get('seed', '?')}): {p['reason']}")
