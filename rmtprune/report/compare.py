"""``rmtprune compare``: a seed sweep turned into tables, tests and figures.

Runs are grouped by every config key that differs between them except the seed and the pruning
settings (or by ``--by`` keys; data set, model and topology always separate groups). Runs on
different device types (CPU and GPU) are never pooled: when a comparison holds both, the device
type becomes part of every group's label (``device=cpu`` / ``device=cuda``; a run that does not
record its device goes to ``device=unknown``). Inside a group, each pruning setting is an *arm*:
``none`` is the normal baseline and ``control`` the fair one (the same event calendar, lr factor
and momentum resets as ``rmt``, no pruning); both are labelled by their name alone. Every other
arm is tested against ``none``, and also against a ``control`` arm of the group whose event calendar
(``pruning.every``, ``start_epoch``, ``stop_epoch``, ``lr_factor``, ``momentum``) is the arm's own
(columns ``control_*``; left empty, with a note, when the group's control has another calendar);
``control`` itself is tested against ``none``. A baseline matched to another run's count
(``pruning.target_from``) is also tested against the arm it was matched to (columns ``matched_*``,
Δ = baseline − that arm): the pruned arm of the same calendar whose runs lie in the folder
``target_from`` names. The tests: difference of means
(Welch t interval and test), paired t-test over shared seeds, variance ratio (F-test, Levene, and
a percentile-bootstrap 95% interval), and the post-training magnitude baseline: each normal
run's final model magnitude-pruned exactly to the same seed's pruned count
(:mod:`rmtprune.report.baseline`), with ``finetune=True`` also after fine-tuning. No F or Levene test
below 3 seeds in an arm. Every p-value column has a Holm-adjusted twin ``<column>_holm``, the family being
that column's tests within one group; each tested pair also gets the 90% intervals of its difference (Welch
and paired) and, with an ``equivalence`` margin δ, the two one-sided tests (TOST) of |Δ| < δ.

An arm holds one run per seed: when a seed occurs more than once (a sweep given twice, a rerun),
the newest run (summary.json ``finished_at``, else ``started_at``) is kept and the others are
listed as left out. Runs whose files are damaged are left out and listed (never a traceback). An
arm whose runs differ in thread count, CPU model, BLAS or GPU model is named in a warning: floating
point sums, and with them the results of a seed, depend on those.

Runs with a validation split (``dataset.val_size``) are selected on it, never on the test set: the
``best_*`` columns hold the metric at each run's epoch of best validation accuracy (lowest validation loss
for a loss metric; ``best_on`` says ``val``, else ``test`` for runs without a split), and the ``val_*``
columns of comparison.csv and frontier.csv hold the final validation values. The test set gives the
final numbers only.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rmtprune.config.schema import PRUNING_KEYS
from rmtprune.errors import UserError
from rmtprune.files import write_csv
from rmtprune.report.baseline import MagnitudeBaseline, finetune_epochs
from rmtprune.report.stats import (
    ALPHA,
    MIN_VARIANCE_TEST,
    describe,
    holm,
    interpolate_at,
    paired,
    tost,
    tost_paired,
    variance_ratio,
    variance_ratio_ci,
    welch,
)
from rmtprune.runs.folder import COST_FIELDS
from rmtprune.runs.targets import BASELINES, NOT_MATCHED_IN_SWEEPS
from rmtprune.runs.walk import MACHINE_KEYS, Run, load_runs

ALWAYS_SEPARATE = ("dataset.name", "model.name", "topology")


NORMAL = "none"


CONTROL = "control"


REFERENCES = (NORMAL, CONTROL)   # arms every pruned arm is tested against; never pruned configurations


DEVICE_KEY = "device"            # the group-label key that separates CPU and GPU runs


# The event calendar an arm must share with the control arm it is tested against.
CALENDAR = tuple(f"pruning.{k}" for k in PRUNING_KEYS[CONTROL] if k != "name")


@dataclass
class Comparison:
    table: pd.DataFrame                       # comparison.csv
    curves: pd.DataFrame                      # curves.csv
    problems: list[dict[str, str]] = field(default_factory=list)   # runs left out
    groups: dict[str, dict[str, list[Run]]] = field(default_factory=dict)
    metric: str = "test_acc"
    command: str = ""
    warnings: list[dict[str, str]] = field(default_factory=list)   # counted, but worth a reader's attention
    frontier: pd.DataFrame = field(default_factory=pd.DataFrame)   # frontier.csv
    finetune: bool = False
    equivalence: float | None = None   # --equivalence δ, in the units comparison.md shows (points for accuracies)


def _arm_keys(k: str) -> bool:
    # finetune_epochs: a model pruned after training (rmtprune prune) differs from its trained run in the arm
    return k.startswith("pruning.") or k.startswith("schedule.") or k == "finetune_epochs"


def _varying(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


def _short(key: str) -> str:
    return "schedule" if key == "schedule.name" else key.split(".", 1)[-1]


def method(run: Run) -> str:
    """The pruning method of a run (config ``pruning.name``): none, control, rmt, magnitude, lowrank."""
    return str(run.config.get("pruning.name", NORMAL))


def arm_label(run: Run, arm_keys: list[str], usual: dict[str, Any] | None = None) -> str:
    """``none``, or the pruning name plus the settings in which this run differs from the usual
    (most common) run of the same pruning method, e.g. ``rmt (horizon=300.0)``; ``control`` alone
    unless controls differ among themselves."""
    name = method(run)
    if name == NORMAL:
        return NORMAL
    usual = usual or {}
    extra = [f"{_short(k)}={run.config.get(k)}" for k in arm_keys
             if k != "pruning.name" and (k not in usual or run.config.get(k) != usual[k])]
    return name + (f" ({', '.join(extra)})" if extra else "")


def _settings(runs: list[Run]) -> tuple[list[str], dict[str, Any]]:
    """The pruning/schedule keys that vary among ``runs`` (one method) and their usual values."""
    arm_keys = [k for k in _varying(runs) if _arm_keys(k)] if len(runs) > 1 else []
    usual = {}
    for k in arm_keys:
        counts = Counter(repr(r.config.get(k)) for r in runs)
        modal = min(counts, key=lambda v: (-counts[v], v))  # ties: the same choice in every process
        usual[k] = next(r.config.get(k) for r in runs if repr(r.config.get(k)) == modal)
    return arm_keys, usual


def _implied_by_dataset(key: str, runs: list[Run]) -> bool:
    """A ``dataset.raw_md5.*`` key (the checksum of a file of the data set) with one value per ``dataset.name``
    among ``runs``: the data set's name in the label says it already."""
    if not key.startswith("dataset.raw_md5."):
        return False
    seen: dict[str, str] = {}
    return all(seen.setdefault(str(r.config.get("dataset.name")), repr(r.config.get(key))) == repr(r.config.get(key))
               for r in runs)


def group_runs(runs: list[Run], by: list[str] | None) -> dict[str, dict[str, list[Run]]]:
    """{group label: {arm label: runs}}; arms ordered none, the control arms, then as first met by seed."""
    varying = _varying(runs)
    settings = {name: _settings([r for r in runs if method(r) == name]) for name in sorted({method(r) for r in runs})}
    if by:
        keys = list(by) + [k for k in ALWAYS_SEPARATE if k in varying and k not in by]
    else:
        keys = [k for k in varying if k != "seed" and not _arm_keys(k)]
    keys = [k for k in keys if not _implied_by_dataset(k, runs)]
    # name the data set and the architecture in every label, varying or not
    keys = [k for k in ALWAYS_SEPARATE if k not in keys and any(k in r.config for r in runs)] + keys
    split_devices = len({r.device_type for r in runs} - {None}) > 1
    groups: dict[str, dict[str, list[Run]]] = {}
    for r in sorted(runs, key=lambda r: r.seed):
        parts = [f"{k}={r.config.get(k)}" for k in keys]
        if split_devices:
            parts.append(f"{DEVICE_KEY}={r.device_type or 'unknown'}")
        label = ", ".join(parts) or "all runs"
        groups.setdefault(label, {}).setdefault(arm_label(r, *settings[method(r)]), []).append(r)
    order = {NORMAL: 0, CONTROL: 1}
    # control arms of several calendars ("control (start_epoch=5)") come with the plain one, before the pruned arms
    return {g: dict(sorted(arms.items(), key=lambda kv: order.get(method(kv[1][0]), 2))) for g, arms in groups.items()}


def one_run_per_seed(groups: dict[str, dict[str, list[Run]]]) -> list[dict[str, str]]:
    """Keep the newest run of every seed in every arm (in place); returns the runs dropped, as problems."""
    dropped = []
    for group, arms in groups.items():
        for arm, runs in arms.items():
            by_seed: dict[int, list[Run]] = {}
            for r in runs:
                by_seed.setdefault(r.seed, []).append(r)
            kept = []
            for seed, same in sorted(by_seed.items()):
                same.sort(key=lambda r: (r.finished_at, str(r.folder)), reverse=True)
                kept.append(same[0])
                for r in same[1:]:
                    dropped.append({"folder": str(r.folder), "seed": str(seed), "group": group, "arm": arm, "reason": (
                        f"seed {seed} occurs {len(same)} times in arm {arm} ({group}): one run per seed is kept, "
                        f"the newest ({same[0].folder}, {same[0].finished_at or 'time unknown'})")})
            arms[arm] = kept
    return dropped


def machine_mix(runs: list[Run]) -> str:
    """'' when the runs share device, threads, CPU (model and kernels), BLAS and GPU as far as recorded; else what differs,
    e.g. ``threads 1 (3), 2 (2)`` (runs that record nothing are not counted as different)."""
    parts = []
    for key in ("device", *MACHINE_KEYS):
        values = Counter(r.machine()[key] for r in runs)
        known = {v: n for v, n in values.items() if v is not None}
        if len(known) > 1:
            listed = ", ".join(f"{_shorten(v)} ({n})" for v, n in sorted(known.items()))
            unknown = f", unrecorded ({values[None]})" if values.get(None) else ""
            parts.append(f"{key} {listed}{unknown}")
    return "; ".join(parts)


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def val_metric(metric: str) -> str:
    """The validation column that selects for ``metric``: val_loss for a loss, else val_acc."""
    return "val_loss" if "loss" in metric else "val_acc"


def has_val(run: Run) -> bool:
    """Whether the run was evaluated on a validation split (metrics.csv's val columns filled)."""
    return "val_acc" in run.metrics and bool(run.metrics["val_acc"].notna().all())


def cost_means(runs: list[Run]) -> dict[str, float]:
    """``<field>_mean`` of every cost field of summary.json (:data:`rmtprune.runs.folder.COST_FIELDS`) over the runs
    that record it (NaN when none does: runs made before costs were recorded, or latency switched off)."""
    out = {}
    for k in COST_FIELDS:
        values = [v for v in (_number(r.summary.get(k)) for r in runs) if v == v]
        out[f"{k}_mean"] = sum(values) / len(values) if values else math.nan
    return out


def _final_and_best(run: Run, metric: str) -> tuple[float, float]:
    """(final value, value at the best epoch) of ``metric``; the best epoch is chosen on validation when the
    run has a split (:func:`val_metric`), else on ``metric`` itself."""
    col = run.metrics[metric]
    chooser = run.metrics[val_metric(metric)] if has_val(run) else col
    best = chooser.idxmin() if "loss" in metric else chooser.idxmax()
    return float(col.iloc[-1]), float(col.loc[best])


def per_point(metric: str) -> float:
    """Points of ``metric`` per unit of its stored value: 100 for accuracies (shown in percent), else 1."""
    return 100.0 if "acc" in metric else 1.0


def _versus(prefix: str, a: dict[int, float], b: dict[int, float], delta: float | None) -> dict[str, float]:
    """Tests of arm values ``a`` against reference values ``b`` (seed -> value), keys prefixed; ``delta``:
    the equivalence margin in the values' units (None: the 90% intervals only)."""
    x, y = list(a.values()), list(b.values())
    out = {**welch(x, y), **paired(a, b), **variance_ratio(x, y), **variance_ratio_ci(x, y),
           **tost(x, y, delta), **tost_paired(a, b, delta)}
    return {prefix + k: v for k, v in out.items()}


def _magnitude(arm_runs: list[Run], normal: dict[int, Run], metric: str, baseline: Any,
               finetune: bool) -> dict[str, Any]:
    """The post-training magnitude baseline of one pruned arm, seed by seed: the same seed's normal
    run pruned exactly to this arm's final count (model.pt or its cache), else interpolated in its
    magnitude_sweep.csv; the columns ``magnitude_*``."""

    col = "test_loss" if metric == "test_loss" else "test_acc"
    exact, tuned, sources = [], [], Counter()
    for r in arm_runs:
        normal_run = normal.get(r.seed)
        if normal_run is None:
            sources["no normal run of this seed"] += 1
            continue
        target = int(r.summary["n_params_final"])
        value = baseline.value(normal_run, target, finetune_epochs(r) if finetune else None)
        if value is not None:
            exact.append(value.test_loss if col == "test_loss" else value.test_acc)
            tuned.append(value.finetuned_test_loss if col == "test_loss" else value.finetuned_test_acc)
            sources[f"exact from {value.source}"] += 1
            continue
        mag = normal_run.magnitude
        v = interpolate_at(target, mag["n_nonzero"], mag[col]) if mag is not None and len(mag) else math.nan
        if v == v:
            exact.append(v)
            sources["interpolated in magnitude_sweep.csv (no model.pt, no cached value)"] += 1
        else:
            sources["none (no model.pt, cache or magnitude_sweep.csv covering the count)"] += 1
    m, t = describe(exact), describe(tuned)
    return {"magnitude_at_same_params_mean": m["mean"], "magnitude_at_same_params_std": m["std"],
            "magnitude_at_same_params_n": m["n"], "magnitude_finetuned_mean": t["mean"],
            "magnitude_finetuned_std": t["std"], "magnitude_finetuned_n": t["n"],
            "magnitude_note": "; ".join(f"{k}: {n}" for k, n in sorted(sources.items()))}


def compare(paths: list[Path], by: list[str] | None = None, metric: str = "test_acc",
            finetune: bool = False, equivalence: float | None = None,
            trust_model_code: bool = False) -> Comparison:
    """Read, group and test the runs under ``paths`` (see the module doc); ``finetune``: also the
    magnitude baseline after fine-tuning (trains each normal model; slow on real data); ``equivalence``:
    the margin δ of the two one-sided tests, in points (:func:`per_point`); ``trust_model_code``: rebuild a
    custom model.pt for that baseline from the class its file names (else its baseline is left out with a
    warning)."""

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
    dropped = one_run_per_seed(groups)
    problems += dropped
    warnings = [{"folder": str(r.folder), "reason": f"{r.spectra_problem}: counted, its figures are skipped"}
                for r in finished if r.spectra_problem]
    baseline = MagnitudeBaseline(trust_model_code)
    delta = None if equivalence is None else equivalence / per_point(metric)
    rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    for group, arms in groups.items():
        all_seeds = sorted({r.seed for rs in arms.values() for r in rs})
        finals = {arm: {r.seed: _final_and_best(r, metric)[0] for r in rs} for arm, rs in arms.items()}
        normal_runs = {r.seed: r for r in arms.get(NORMAL, [])}
        for arm, rs in arms.items():
            missing = sorted(set(all_seeds) - {r.seed for r in rs})
            if missing:  # one line per arm: a baseline run at 5 of 10 seeds is not 5 problems
                problems.append({"folder": group, "seed": "", "reason": f"arm {arm}: no finished run for "
                                 f"seed{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"})
            bests = [_final_and_best(r, metric)[1] for r in rs]
            fd, bd = describe(list(finals[arm].values())), describe(bests)
            vd = describe([float(r.metrics[val_metric(metric)].iloc[-1]) for r in rs if has_val(r)])
            p_start = sum(r.summary["n_params_initial"] for r in rs) / len(rs)
            p_end = sum(r.summary["n_params_final"] for r in rs) / len(rs)
            notes = ["one seed: no variance"] if len(rs) == 1 else []
            n_dropped = sum(d["group"] == group and d["arm"] == arm for d in dropped)
            if n_dropped:
                notes.append(f"{n_dropped} duplicate run(s) of a seed left out (newest kept)")
            mix = machine_mix(rs)
            if mix:
                notes.append(f"runs differ in {mix}")
                warnings.append({"folder": group, "reason": f"arm {arm} mixes machines: {mix}; a seed's result "
                                 f"depends on the thread count and the kind of machine"})
            row: dict[str, Any] = {
                "group": group, "arm": arm, "metric": metric, "n_seeds": len(rs),
                "seeds": " ".join(str(r.seed) for r in rs),
                **{f"final_{k}": v for k, v in fd.items() if k != "n"},
                **{f"best_{k}": v for k, v in bd.items() if k != "n"},
                "params_start": p_start, "params_end": p_end,
                "param_reduction_pct": 100.0 * (1 - p_end / p_start) if p_start else math.nan,
                "wall_time_s": sum(_number(r.summary.get("wall_time_s")) for r in rs) / len(rs),
                "device": ", ".join(sorted({r.device_type or "unknown" for r in rs})),
                **cost_means(rs),
                "note": "; ".join(notes),
                "best_on": "val" if all(has_val(r) for r in rs) else "test",
                "val_final_mean": vd["mean"], "val_final_std": vd["std"],
            }
            name = method(rs[0])
            refs = {"": NORMAL if name != NORMAL and NORMAL in finals else None}   # column prefix -> reference arm
            if name not in REFERENCES:
                refs["control_"], other = same_calendar_control(arms, rs)
                if refs["control_"] is not None:
                    row["control_arm"] = refs["control_"]
                if other:
                    notes.append(f"control has another calendar: {', '.join(other)}")
            refs["matched_"] = matched_arm(arms, rs)
            if refs["matched_"] is not None:
                row["matched_arm"] = refs["matched_"]
            for prefix, ref in refs.items():
                if ref is not None:
                    row.update(_versus(prefix, finals[arm], finals[ref], delta))
            few = [ref for ref in refs.values() if ref and 2 <= min(len(rs), len(finals[ref])) < MIN_VARIANCE_TEST]
            if few:
                notes.append(f"no F or Levene test against {', '.join(few)}: fewer than {MIN_VARIANCE_TEST} seeds "
                             f"in an arm")
            row["note"] = "; ".join(notes)
            row["equivalence_delta"] = math.nan if delta is None else delta
            if name not in REFERENCES and normal_runs:
                row.update(_magnitude(rs, normal_runs, metric, baseline, finetune))
            rows.append(row)
            curve_rows.extend(_curves(group, arm, rs))
    warnings += baseline.warnings
    table = add_holm(pd.DataFrame(rows, columns=COLUMNS))
    return Comparison(table, pd.DataFrame(curve_rows), problems, groups, metric, warnings=warnings,
                      frontier=frontier(groups), finetune=finetune, equivalence=equivalence)


def add_holm(table: pd.DataFrame) -> pd.DataFrame:
    """Fill each p-value column's Holm-adjusted twin ``<column>_holm``: the family is every defined p-value of
    that column within one group (one table of comparison.md)."""
    for col in P_COLUMNS:
        table[f"{col}_holm"] = table.groupby("group", sort=False)[col].transform(holm) if len(table) else []
    return table


def calendar(run: Run) -> dict[str, Any]:
    """The event calendar of a run: {``pruning.every``, ...: value} (:data:`CALENDAR`)."""
    return {k: run.config.get(k) for k in CALENDAR}


def same_calendar_control(arms: dict[str, list[Run]], runs: list[Run]) -> tuple[str | None, list[str]]:
    """(the control arm of ``arms`` with the calendar of ``runs``, []), or (None, the calendar keys in
    which the group's control differs) when no control arm has it; (None, []) without a control arm.
    ``control`` itself is preferred when several control arms (other settings) share the calendar."""
    controls = [a for a, rs in arms.items() if rs and method(rs[0]) == CONTROL]
    controls.sort(key=lambda a: a != CONTROL)
    ours = calendar(runs[0])
    for arm in controls:
        if calendar(arms[arm][0]) == ours:
            return arm, []
    if not controls:
        return None, []
    theirs = calendar(arms[controls[0]][0])
    return None, [_short(k) for k in CALENDAR if theirs[k] != ours[k]]


def matched_arm(arms: dict[str, list[Run]], runs: list[Run]) -> str | None:
    """The arm that ``runs``, a baseline matched with ``pruning.target_from``, were matched to: the pruned
    arm (not none, control or a baseline) of the same calendar with runs in the folder that target_from
    names (run_config keeps its last part: a sweep folder, or the run folder itself); None for other arms,
    when that arm is not among ``arms``, and when several arms fit (folders of the same name)."""
    name = runs[0].config.get("pruning.target_from")
    if not name:
        return None
    found = [arm for arm, rs in arms.items()
             if rs is not runs and method(rs[0]) not in NOT_MATCHED_IN_SWEEPS and calendar(rs[0]) == calendar(runs[0])
             and any(name in (r.folder.name, r.folder.parent.name) for r in rs)]
    return found[0] if len(found) == 1 else None  # two folders of that name: which one is not known


COST_COLUMNS = [f"{k}_mean" for k in COST_FIELDS]


_VERSUS = ["diff", "diff_ci_low", "diff_ci_high", "welch_p", "n_pairs", "paired_diff", "paired_p",
           "var_ratio", "var_ratio_ci_low", "var_ratio_ci_high", "f_p", "levene_p"]


_PREFIXES = ("", "control_", "matched_")   # against none, the same-calendar control, the arm a baseline matches


# equivalence (TOST, Welch and paired, and the 90% intervals), then the Holm twin of each p-value column
_EQUIVALENCE = ["tost_p", "diff_ci90_low", "diff_ci90_high", "paired_tost_p", "paired_diff_ci90_low",
                "paired_diff_ci90_high"]


P_COLUMNS = [f"{p}{c}" for p in _PREFIXES
             for c in ("welch_p", "paired_p", "f_p", "levene_p", "tost_p", "paired_tost_p")]


COLUMNS = [
    "group", "arm", "metric", "n_seeds", "seeds",
    "final_mean", "final_std", "final_var", "final_min", "final_max", "final_ci_low", "final_ci_high",
    "best_mean", "best_std", "best_var", "best_min", "best_max", "best_ci_low", "best_ci_high",
    "params_start", "params_end", "param_reduction_pct", "wall_time_s", "device",
    *COST_COLUMNS,
    *_VERSUS, "control_arm", *(f"control_{c}" for c in _VERSUS), "matched_arm", *(f"matched_{c}" for c in _VERSUS),
    "magnitude_at_same_params_mean", "magnitude_at_same_params_std", "magnitude_at_same_params_n",
    "magnitude_finetuned_mean", "magnitude_finetuned_std", "magnitude_finetuned_n", "magnitude_note",
    "note",
    "best_on", "val_final_mean", "val_final_std",
    "equivalence_delta", *(f"{p}{c}" for p in _PREFIXES for c in _EQUIVALENCE), *(f"{c}_holm" for c in P_COLUMNS),
]


CURVE_COLUMNS = ("test_acc", "train_acc", "test_loss", "train_loss", "n_params_after", "test_acc_after_event",
                 "test_loss_after_event", "val_acc", "val_loss")


FRONTIER_COLUMNS = ["group", "arm", "pruning_method", "setting", "series", "n_seeds", "params_mean", "params_std",
                    "acc_mean", "acc_std", "val_acc_mean", "val_acc_std",
                    *COST_COLUMNS]


def _curves(group: str, arm: str, runs: list[Run]) -> list[dict[str, Any]]:
    frames = pd.concat([r.metrics.assign(seed=r.seed) for r in runs])
    out = []
    for epoch, part in frames.groupby("epoch"):
        row = {"group": group, "arm": arm, "epoch": int(epoch), "n": len(part)}
        for col in CURVE_COLUMNS:
            if col in part and part[col].notna().any():
                values = part[col].dropna()
                row[f"{col}_mean"] = float(values.mean())
                row[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        out.append(row)
    return out


def frontier(groups: dict[str, dict[str, list[Run]]]) -> pd.DataFrame:
    """frontier.csv: for each group with more than one pruned configuration (arms other than none and
    control), every arm's final test accuracy and final parameter count, mean and sample std over
    seeds; ``setting`` is what the arm label adds to the method name, ``series`` the curve of the
    frontier figure the arm is a point of (:func:`_series`); ``val_acc_*``: the final validation accuracy
    of runs with a split."""
    rows = []
    for group, arms in groups.items():
        if sum(method(rs[0]) not in REFERENCES for rs in arms.values()) < 2:
            continue
        for arm, rs in arms.items():
            params = describe([float(r.summary["n_params_final"]) for r in rs])
            acc = describe([float(r.metrics["test_acc"].iloc[-1]) if "test_acc" in r.metrics else math.nan
                            for r in rs])
            val = describe([float(r.metrics["val_acc"].iloc[-1]) for r in rs if has_val(r)])
            name = method(rs[0])
            setting = arm[len(name):].strip().removeprefix("(").removesuffix(")") if arm.startswith(name) else arm
            rows.append({"group": group, "arm": arm, "pruning_method": name, "setting": setting,
                         "series": _series(name, setting), "n_seeds": len(rs), "params_mean": params["mean"], "params_std": params["std"],
                         "acc_mean": acc["mean"], "acc_std": acc["std"], "val_acc_mean": val["mean"],
                         "val_acc_std": val["std"], **cost_means(rs)})
    return pd.DataFrame(rows, columns=FRONTIER_COLUMNS)


# What sets a matched baseline's size (its target, and the calendar it shares with the run it matches)
# rather than making it another variant of the method.
_SIZE_KEYS = {"target_from", "target_params", *(_short(k) for k in CALENDAR)}


def _series(name: str, setting: str) -> str:
    """The curve an arm belongs to: rmt's settings are points along one curve (they set its size); a
    baseline's target and calendar are points along its curve, its other settings (``target_epoch``,
    ``scope``, ``rank_rule``) another curve, e.g. ``magnitude (target_epoch=5)``."""
    if name not in BASELINES or not isinstance(setting, str):
        return name
    variant = [part for part in setting.split(", ") if part and part.split("=", 1)[0] not in _SIZE_KEYS]
    return name + (f" ({', '.join(variant)})" if variant else "")


def slug(group: str) -> str:
    """A short file name for a group label: values of the data set / model / topology, key-value otherwise."""
    parts = []
    for item in group.split(", "):
        key, _, value = item.partition("=")
        parts.append(value if key in ALWAYS_SEPARATE else f"{key.rsplit('.', 1)[-1]}-{value}")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)).strip("_")[:100] or "all"


def fmt_value(v: float, metric: str) -> str:
    """A value as comparison.md shows it: percent with 2 decimals for accuracies, 4 decimals otherwise."""
    if v != v:
        return "–"
    return f"{100 * v:.2f}" if "acc" in metric else f"{v:.4f}"


def fmt_var(v: float, metric: str) -> str:
    """A variance in the unit of :func:`fmt_value` squared: percent² (fraction² x 10^4) for accuracies."""
    return "–" if v != v else f"{v * (1e4 if 'acc' in metric else 1.0):.3g}"


def fmt_p(v: float) -> str:
    """A p-value as comparison.md shows it."""
    return "–" if v != v else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def p_cell(r: pd.Series, col: str) -> str:
    """A p-value and, in parentheses, its Holm-adjusted twin (when the table has it: older comparison.csv files
    do not), e.g. ``0.012 (0.048)``."""
    holm_p = r.get(f"{col}_holm", math.nan)
    return fmt_p(r[col]) + ("" if r[col] != r[col] or holm_p != holm_p else f" ({fmt_p(holm_p)})")


def _where(problem: dict[str, str]) -> str:
    seed = problem.get("seed")
    return f"{problem['folder']} (seed {seed})" if seed not in (None, "") else problem["folder"]


def control_named(r: pd.Series) -> str:
    """``"control (start_epoch=5): "`` before a row's control cell when the control arm it was tested against is not
    the plain ``control`` (a table with several calendars has several control arms); ``""`` otherwise."""
    ref = r.get("control_arm")
    return f"{ref}: " if isinstance(ref, str) and ref != CONTROL else ""


def diff_cell(r: pd.Series, metric: str, prefix: str = "") -> str:
    d = r[f"{prefix}diff"]
    if d != d:
        return "–"
    return f"{fmt_value(d, metric)} [{fmt_value(r[f'{prefix}diff_ci_low'], metric)}, {fmt_value(r[f'{prefix}diff_ci_high'], metric)}]"


def ratio_cell(r: pd.Series, prefix: str = "") -> str:
    v = r[f"{prefix}var_ratio"]
    if v != v:
        return "–"
    lo, hi = r[f"{prefix}var_ratio_ci_low"], r[f"{prefix}var_ratio_ci_high"]
    ci = "" if lo != lo else f" [{lo:.2f}, {hi:.2f}]"
    return f"{v:.2f}{ci} (F p {fmt_p(r[f'{prefix}f_p'])}, Levene p {fmt_p(r[f'{prefix}levene_p'])})"


def _matched_cell(r: pd.Series, metric: str) -> str:
    if not isinstance(r["matched_arm"], str):
        return "–"
    return (f"{r['matched_arm']}: {diff_cell(r, metric, 'matched_')} (Welch p {p_cell(r, 'matched_welch_p')}, "
            f"paired p {p_cell(r, 'matched_paired_p')})")


def cost_cell(r: pd.Series) -> str:
    """An arm's mean cost as comparison.md shows it: bytes (CSR); FLOPs; latency ratios at batch 1 / 256,
    e.g. ``13,200,000 (CSR 6,200,000); 6,600,000; ×1.01 / ×0.98``."""
    if r["model_bytes_mean"] != r["model_bytes_mean"]:
        return "–"
    csr, b1, b256 = r["model_bytes_csr_mean"], r["latency_b1_ratio_mean"], r["latency_b256_ratio_mean"]
    latency = "–" if b1 != b1 else f"×{b1:.2f} / ×{b256:.2f}"
    return (f"{r['model_bytes_mean']:,.0f}" + ("" if csr != csr else f" (CSR {csr:,.0f})")
            + f"; {r['flops_mean']:,.0f}; {latency}")


def _mean_std_cell(r: pd.Series, key: str, metric: str) -> str:
    m = r[f"{key}_mean"]
    return "–" if m != m else f"{fmt_value(m, metric)} ± {fmt_value(r[f'{key}_std'], metric)} (n={int(r[f'{key}_n'])})"


_REFERENCE = {"": NORMAL}   # the arm each prefix's tests are against (control_: control_arm, matched_: matched_arm)


def equivalence_lines(part: pd.DataFrame, metric: str, delta: float) -> list[str]:
    """comparison.md's verdicts of the two one-sided tests of one group: per arm and reference, ``equivalent``
    when the Holm-adjusted Welch TOST p is below ALPHA, else ``not shown``, with both tests and 90% intervals."""
    unit = " points" if "acc" in metric else ""
    lines = [f"Equivalence within ±{delta:g}{unit} (two one-sided t tests at {ALPHA:g} each, decided on the "
             f"Holm-adjusted Welch TOST p; 90% intervals of Δ, Welch and paired):", ""]
    for _, r in part.iterrows():
        for prefix in _PREFIXES:
            p = r[f"{prefix}tost_p_holm"]
            if p != p:
                continue
            ref = _REFERENCE.get(prefix) or r[f"{prefix}arm"]
            ci = [fmt_value(r[f"{prefix}{c}"], metric) for c in ("diff_ci90_low", "diff_ci90_high",
                                                                     "paired_diff_ci90_low", "paired_diff_ci90_high")]
            lines.append(f"- {r['arm']} vs {ref}: {'equivalent' if p < ALPHA else 'not shown'} (Welch: 90% CI "
                         f"[{ci[0]}, {ci[1]}], TOST p {p_cell(r, f'{prefix}tost_p')}; paired: 90% CI [{ci[2]}, "
                         f"{ci[3]}], TOST p {p_cell(r, f'{prefix}paired_tost_p')})")
    return lines if len(lines) > 2 else [f"Equivalence within ±{delta:g}{unit}: no pair with 2 seeds and spread "
                                         f"in both arms to test."]


def markdown(cmp: Comparison) -> str:
    """comparison.md: one table per group, ready for a README or paper."""
    unit = " (%)" if "acc" in cmp.metric else ""
    lines = [f"# Comparison of normal and pruned training ({cmp.metric})", ""]
    if cmp.command:
        lines += [f"Made by `{cmp.command}` from {len(cmp.table)} arm(s) over "
                  f"{sum(len(rs) for arms in cmp.groups.values() for rs in arms.values())} runs; "
                  f"every run's full config is in its summary.json.", ""]
    for group, part in cmp.table.groupby("group", sort=False):
        has_control = part["control_diff"].notna().any() or (part["arm"] == CONTROL).any()
        head = (f"| arm | seeds | final{unit} mean ± std | variance | best{unit} mean | params start → end "
                f"(reduction) | Δ vs normal [95% CI] | Welch p (Holm) | paired p (Holm) | var ratio vs normal "
                f"[bootstrap 95% CI] (F p, Levene p) |")
        if has_control:
            head += (" Δ vs control [95% CI] | Welch p (Holm) | paired p (Holm) | var ratio vs control [95% CI] "
                     "(F p, Levene p) |")
        has_matched = part["matched_arm"].notna().any()
        if has_matched:
            head += " vs the arm it matches: Δ [95% CI] (Welch p (Holm), paired p (Holm)) |"
        head += f" magnitude pruning at same params{unit} |"
        if cmp.finetune:
            head += f" magnitude, fine-tuned{unit} |"
        has_cost = part["model_bytes_mean"].notna().any()
        if has_cost:
            head += " bytes (CSR); FLOPs per sample; latency vs dense at batch 1 / 256 |"
        lines += [f"## {group}", "", head, "|" + "---|" * (head.count("|") - 1)]
        for _, r in part.iterrows():
            line = (f"| {r['arm']} | {r['n_seeds']} | {fmt_value(r['final_mean'], cmp.metric)} ± "
                    f"{fmt_value(r['final_std'], cmp.metric)} | {fmt_var(r['final_var'], cmp.metric)} | "
                    f"{fmt_value(r['best_mean'], cmp.metric)} | "
                    f"{r['params_start']:,.0f} → {r['params_end']:,.0f} ({r['param_reduction_pct']:.1f}%) | "
                    f"{diff_cell(r, cmp.metric)} | {p_cell(r, 'welch_p')} | {p_cell(r, 'paired_p')} | {ratio_cell(r)} |")
            if has_control:
                line += (f" {control_named(r)}{diff_cell(r, cmp.metric, 'control_')} | {p_cell(r, 'control_welch_p')} | "
                         f"{p_cell(r, 'control_paired_p')} | {ratio_cell(r, 'control_')} |")
            if has_matched:
                line += f" {_matched_cell(r, cmp.metric)} |"
            line += f" {_mean_std_cell(r, 'magnitude_at_same_params', cmp.metric)} |"
            if cmp.finetune:
                line += f" {_mean_std_cell(r, 'magnitude_finetuned', cmp.metric)} |"
            if has_cost:
                line += f" {cost_cell(r)} |"
            lines.append(line)
        notes = [f"- {r['arm']}: {r['note']}" for _, r in part.iterrows() if isinstance(r["note"], str) and r["note"]]
        notes += [f"- {r['arm']}, magnitude baseline: {r['magnitude_note']}" for _, r in part.iterrows()
                  if isinstance(r["magnitude_note"], str) and r["magnitude_note"]]
        lines += ["", *notes, ""] if notes else [""]
        if cmp.equivalence is not None:
            lines += [*equivalence_lines(part, cmp.metric, cmp.equivalence), ""]
    if "acc" in cmp.metric:
        lines.append("Accuracies in percent; variance in percent² (fraction² × 10⁴). "
                     "Δ = arm − normal (or control, or the arm a baseline was matched to).")
    lines.append("p (Holm): each p-value with its Holm-adjusted twin (`*_holm` in comparison.csv); the family is "
                 "every test in the same column of the same group's table (e.g. the Welch tests against control "
                 "of all its arms).")
    if (cmp.table["best_on"] == "val").any():
        lines.append(f"Best: {cmp.metric} at each run's epoch of best {val_metric(cmp.metric)} (chosen on the "
                     f"validation split, never on test); final validation values in comparison.csv (val_final_*).")
    lines.append("Magnitude pruning: each normal run's final model, global unstructured L1 pruning to the same "
                 "seed's final parameter count of the arm (non-zero parameters, biases included), no retraining"
                 + (", and after as many epochs of retraining as the arm had after its last event" if cmp.finetune
                    else "") + "; where neither model.pt nor a cached value exists, interpolated in the normal run's "
                 "magnitude_sweep.csv (the notes say which).")
    if cmp.warnings:
        lines += ["", "Warnings:", ""] + [f"- {w['folder']}: {w['reason']}" for w in cmp.warnings]
    if cmp.problems:
        lines += ["", "Runs left out:", ""] + [f"- {_where(p)}: {p['reason']}" for p in cmp.problems]
    return "\n".join(lines) + "\n"


def write_outputs(cmp: Comparison, out: Path, formats: list[str], plots: bool) -> list[Path]:
    """comparison.csv, curves.csv, frontier.csv, comparison.md and the figures in ``out``; a folder
    that cannot be written is a UserError."""
    try:
        return _write_outputs(cmp, Path(out), formats, plots)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or type(exc).__name__}); give a writable "
                        f"folder") from None


def _write_outputs(cmp: Comparison, out: Path, formats: list[str], plots: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "csv" in formats:
        write_csv(out / "comparison.csv", cmp.table.to_dict("records"), COLUMNS)
        write_csv(out / "curves.csv", cmp.curves.to_dict("records"), list(cmp.curves.columns))
        written += [out / "comparison.csv", out / "curves.csv"]
        if not cmp.frontier.empty:
            write_csv(out / "frontier.csv", cmp.frontier.to_dict("records"), FRONTIER_COLUMNS)
            written.append(out / "frontier.csv")
    if "md" in formats:
        (out / "comparison.md").write_text(markdown(cmp), encoding="utf-8")
        written.append(out / "comparison.md")
    if plots:
        from rmtprune.report.plots import esd_figures, frontier_figure, group_figures

        for group, arms in cmp.groups.items():
            written += group_figures(cmp.curves[cmp.curves["group"] == group], group, out / f"{slug(group)}", cmp.metric)
            figures, failed = esd_figures(arms, out / f"{slug(group)}")
            written += figures
            cmp.warnings += failed
            part = cmp.frontier[cmp.frontier["group"] == group] if not cmp.frontier.empty else cmp.frontier
            if not part.empty:
                written.append(frontier_figure(part, group, out / f"{slug(group)}_frontier.png"))
    return written


def print_table(cmp: Comparison) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    for group, part in cmp.table.groupby("group", sort=False):
        has_control = part["control_diff"].notna().any()
        t = Table(title=group, title_justify="left")
        cols = ["arm", "seeds", f"final {cmp.metric}", "var (%²)" if "acc" in cmp.metric else "var",
                "params end (red.)", "Δ vs normal", "Welch p (Holm)",
                "var ratio [CI] (F p)"]
        cols += ["Δ vs control", "Welch p (Holm) vs control"] if has_control else []
        cols += ["magnitude"] + (["magnitude ft"] if cmp.finetune else [])
        for c in cols:
            t.add_column(c, justify="left" if c == "arm" else "right")
        for _, r in part.iterrows():
            ratio = "–" if r["var_ratio"] != r["var_ratio"] else (
                f"{r['var_ratio']:.2f} [{r['var_ratio_ci_low']:.2f}, {r['var_ratio_ci_high']:.2f}] ({fmt_p(r['f_p'])})")
            cells = [str(r["arm"]), str(r["n_seeds"]),
                     f"{fmt_value(r['final_mean'], cmp.metric)} ± {fmt_value(r['final_std'], cmp.metric)}",
                     fmt_var(r["final_var"], cmp.metric),
                     f"{r['params_end']:,.0f} ({r['param_reduction_pct']:.0f}%)", fmt_value(r["diff"], cmp.metric),
                     p_cell(r, "welch_p"), ratio]
            if has_control:
                cells += [fmt_value(r["control_diff"], cmp.metric), p_cell(r, "control_welch_p")]
            cells.append(fmt_value(r["magnitude_at_same_params_mean"], cmp.metric))
            if cmp.finetune:
                cells.append(fmt_value(r["magnitude_finetuned_mean"], cmp.metric))
            t.add_row(*cells)
        console.print(t)
    for w in cmp.warnings:
        console.print(f"[yellow]warning:[/] {escape(_where(w))}: {escape(w['reason'])}")
    for p in cmp.problems:
        console.print(f"[yellow]warning:[/] {escape(_where(p))}: {escape(p['reason'])}")
