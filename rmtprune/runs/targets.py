"""The final parameter count of ``pruning=magnitude`` / ``lowrank`` / ``neuron``: ``pruning.target_params=N``, or
``pruning.target_from=PATH``, the final count (``n_params_final`` of summary.json) of a finished run.
With ``pruning.match=trajectory`` the baseline also follows that run's count after every event
(``n_params_after`` of its metrics.csv at each event epoch of the shared calendar), resolved into
``pruning.target_trajectory`` (one count per event, in order); a metrics.csv without a row for one of the
events is a UserError.

``PATH`` is either

* a run folder (it holds summary.json, or a redirect.json to the folder that does): that run, whatever its
  seed and pruning; or
* a sweep folder (anything else): among the finished runs under it (every summary.json, and the folders
  the redirect.json files under it point to), the one of the same seed that pruned by another method than
  the baselines (``pruning`` not none, control, magnitude or lowrank: e.g. the rmt arm of a sweep of
  ``pruning=none,control,rmt``), so a sweep's baselines can be matched seed by seed.

Either way the run must be of the same data set (``dataset.name``) and network (``model``, and
``topology`` for the MLP; the whole model config otherwise), must have pruned (its pruning is not none or
control, and ``n_params_final < n_params_initial``), and must share this run's event calendar and length
(``pruning.every``, ``start_epoch``, ``stop_epoch``, ``lr_factor``, ``momentum``: the keys of
``config.PRUNING_KEYS["control"]`` but ``name``; and ``epochs``): a matched baseline runs the same loop and
calendar as the run it matches. Anything else is a UserError naming the key: no finished run, another
network or data set, an unpruned run, another calendar, several runs with different final counts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from rmtprune.config.build import baseline_from_config, model_spec
from rmtprune.config.schema import PRUNING_KEYS
from rmtprune.errors import UserError
from rmtprune.nn.models import build_model, parse_topology
from rmtprune.prune.calendar import EventCalendar
from rmtprune.runs.folder import RunFolder, walk

BASELINES = ("magnitude", "lowrank", "neuron")


NOT_MATCHED_IN_SWEEPS = ("none", "control", *BASELINES)


UNPRUNED = ("none", "control")


# What a matched run must share with this one besides the network: the event calendar and the run length.
CALENDAR_KEYS = tuple(f"pruning.{k}" for k in PRUNING_KEYS["control"] if k != "name") + ("epochs",)


_ABSENT = object()


def resolve_target(cfg: DictConfig, model: Any = None) -> None:
    """Set ``pruning.target_params`` from ``pruning.target_from`` (a no-op for other prunings or without
    target_from), then check the target against the network (:func:`check_target`; ``model``: the config's
    network on the meta device when the caller has it, else built here). Raises UserError."""
    pr = cfg.pruning
    if pr.name not in BASELINES:
        return
    if pr.get("target_from") is not None:
        folder, summary = matched_run(cfg)
        trajectory = trajectory_from_run(cfg, folder) if pr.match == "trajectory" else None
        with open_dict(cfg):
            cfg.pruning.target_params = int(summary["n_params_final"])
            cfg.pruning.target_trajectory = trajectory
    if cfg.pruning.target_params is not None:
        _check_against_network(cfg, int(cfg.pruning.target_params), cfg.pruning.target_trajectory, model)


def check_target(cfg: DictConfig, model: Any = None) -> None:
    """Check ``pruning.target_params`` / ``pruning.target_from`` of a composed, validated config without
    training or loading data (the CLI's pre-check calls it before any job starts): the target_from folder
    and its run, then the count against the network's dense count and smallest reachable count (from the
    layer shapes of the model built on the meta device; MLP and reference CNN). Does not modify ``cfg``.
    Raises UserError naming the key."""
    pr = cfg.pruning
    if pr.name not in BASELINES:
        return
    target, trajectory = pr.target_params, None
    if pr.get("target_from") is not None:
        folder, summary = matched_run(cfg)
        target = int(summary["n_params_final"])
        trajectory = trajectory_from_run(cfg, folder) if pr.match == "trajectory" else None
    if target is not None:  # None: validate() has refused this already
        _check_against_network(cfg, int(target), trajectory, model)


def _check_against_network(cfg: DictConfig, target: int, trajectory: Any = None, model: Any = None) -> None:
    """The pruner's own check (``TargetPruner.check``) of ``target`` (and the per-event ``trajectory``) on the
    config's network on the meta device (``model``, or built here)."""
    model = model if model is not None else _meta_model(cfg)
    if model is None:
        return  # a custom model: checked in the pruner's setup, before epoch 1

    node = OmegaConf.to_container(cfg.pruning, resolve=True)
    node["target_params"] = target
    node["target_trajectory"] = None if trajectory is None else list(trajectory)
    baseline_from_config(OmegaConf.create(node), int(cfg.batch_size), list(cfg.dataset.input_shape)).check(
        model, int(cfg.epochs))


def _meta_model(cfg: DictConfig) -> Any:
    """The dense network of ``cfg`` with its parameters on the meta device (shapes, no memory), or None."""
    import torch

    if cfg.model.name not in ("mlp", "cnn"):
        return None
    with torch.device("meta"):
        return build_model(model_spec(cfg))


def target_from_run(cfg: DictConfig) -> int:
    """The final parameter count of the run ``pruning.target_from`` names (see the module docstring)."""
    return int(matched_run(cfg)[1]["n_params_final"])


def trajectory_from_run(cfg: DictConfig, folder: Path) -> list[int]:
    """The count after each event of ``cfg``'s calendar (``n_params_after`` of the run in ``folder`` at the
    event epochs, in order). Raises UserError when its metrics.csv lacks one of them."""

    pr = cfg.pruning
    events = EventCalendar(pr.every, pr.start_epoch, pr.stop_epoch).events(int(cfg.epochs))
    counts: dict[int, int] = {}
    metrics = RunFolder(folder).metrics_csv
    try:
        with open(metrics, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("epoch") and row.get("n_params_after"):
                    counts[int(row["epoch"])] = int(float(row["n_params_after"]))
    except (OSError, ValueError):
        pass
    missing = [e for e in events if e not in counts]
    if missing:
        raise UserError(f"pruning.match=trajectory: {metrics} has no count after the event after epoch "
                        f"{missing[0]} (events after epochs {', '.join(map(str, events))}); match a run that "
                        f"finished with its metrics.csv, or use pruning.match=final")
    return [counts[e] for e in events]


def matched_run(cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
    """(folder, summary) of the finished run ``pruning.target_from`` names (see the module docstring)."""
    raw = str(cfg.pruning.target_from)
    key = f"pruning.target_from={raw}"
    path = Path(raw).expanduser()
    if path.is_file() and path.name == RunFolder.SUMMARY:
        path = path.parent
    if not path.is_dir():
        raise UserError(f"{key}: no such folder; give a finished run folder of rmtprune train, or a sweep folder")
    given = RunFolder(path)
    if given.summary_json.exists() or given.redirect_json.exists():
        found = given.resolve()
        folder, summary = found.path, found.read_summary()
        if summary is None or summary.get("status") != "completed":
            status = "no readable summary.json" if summary is None else f"status {summary.get('status')}"
            raise UserError(f"{key}: the run there has not finished ({status}); finish it (resume=true) or give "
                            f"a finished run")
        for reason, hint in _mismatches(summary, cfg):
            raise UserError(f"{key}: that run {reason}; {hint}")
        return folder, summary
    return _match_in_sweep(cfg, path, key)


def _match_in_sweep(cfg: DictConfig, root: Path, key: str) -> tuple[Path, dict[str, Any]]:
    runs = [(f, s) for f, s in _finished_runs(root) if s.get("pruning") not in NOT_MATCHED_IN_SWEEPS]
    if not runs:
        raise UserError(f"{key}: no finished run there (no summary.json with status completed of a pruning other "
                        f"than {', '.join(NOT_MATCHED_IN_SWEEPS)} under it); give a finished run or sweep folder")
    seed = int(cfg.seed)
    same_seed = [(f, s) for f, s in runs if s.get("seed") == seed]
    if not same_seed:
        seeds = sorted({s.get("seed") for _, s in runs}, key=str)
        raise UserError(f"{key}: no finished run with seed={seed} there (seeds found: "
                        f"{', '.join(map(str, seeds))}); give a run folder to match one run whatever its seed")
    matching = [(f, s) for f, s in same_seed if not _mismatches(s, cfg)]
    if not matching:
        folder, summary = same_seed[0]
        reason, hint = _mismatches(summary, cfg)[0]
        raise UserError(f"{key}: the run with seed={seed} there ({folder}) {reason}; {hint}")
    counts = sorted({int(s["n_params_final"]) for _, s in matching})
    if len(counts) > 1:
        shown = "; ".join(f"{f} ({int(s['n_params_final']):,})" for f, s in matching[:3])
        raise UserError(f"{key}: {len(matching)} finished runs with seed={seed} and different final counts there "
                        f"({shown}{'; ...' if len(matching) > 3 else ''}); give the run folder to match")
    if cfg.pruning.get("match") == "trajectory" and len(matching) > 1:
        trajectories = {tuple(trajectory_from_run(cfg, f)) for f, _ in matching}
        if len(trajectories) > 1:
            shown = "; ".join(str(f) for f, _ in matching[:3])
            raise UserError(f"{key}: {len(matching)} finished runs with seed={seed} reach the same final count by "
                            f"different counts after the events ({shown}{'; ...' if len(matching) > 3 else ''}): "
                            f"pruning.match=trajectory needs one; give the run folder to match")
    return matching[0]


def _mismatches(summary: dict[str, Any], cfg: DictConfig) -> list[tuple[str, str]]:
    """Why a finished run cannot be matched by this run: (reason, hint) for another network or data set, an
    unpruned run, another event calendar or length; empty when it can."""
    bad = [k for k in ("n_params_final", "n_params_initial") if not _is_count(summary.get(k), k == "n_params_final")]
    if bad:
        return [(f"records {bad[0]}={json.dumps(summary.get(bad[0]))} in its summary.json, not a whole number of "
                 f"parameters above 0", "its summary.json is damaged: rerun that run, or match another")]
    out = []
    network = _other_network(summary, cfg)
    if network:
        out.append((f"is of {network}", "match a run of the same network and data set"))
    unpruned = _unpruned(summary)
    if unpruned:
        out.append((unpruned, "match a pruned run (e.g. pruning=rmt)"))
    calendar = _other_calendar(summary, cfg)
    if calendar:
        out.append((f"has {calendar}", "match a run with this run's event calendar and epochs"))
    return out


def _finished_runs(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, summary) of the completed runs under ``root`` and of the folders its redirect.json files name."""
    out = []
    folders = {g.path.resolve() for f in walk(root) for g in (f, f.resolve())}
    for folder in sorted(folders):
        summary = RunFolder(folder).read_summary()
        if summary and summary.get("status") == "completed":
            out.append((folder, summary))
    return out


def _is_count(value: Any, required: bool) -> bool:
    """A parameter count as summary.json records it: an int above 0 (not a bool, a float or text); None only
    where it is not ``required``."""
    if value is None:
        return not required
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _other_network(summary: dict[str, Any], cfg: DictConfig) -> str:
    """'' when the run of ``summary`` has the data set and network of ``cfg``; else what it is, and what this run is."""
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    theirs = {"dataset": summary.get("dataset"), "model": summary.get("model")}
    ours = {"dataset": cfg.dataset.name, "model": cfg.model.name}
    if cfg.model.name == "mlp":
        theirs["topology"], ours["topology"] = _widths(summary.get("topology")), _widths(cfg.topology)
    else:
        theirs["model config"] = config.get("model")
        ours["model config"] = OmegaConf.to_container(cfg.model, resolve=True)
    if theirs == ours:
        return ""
    differ = [k for k in ours if theirs.get(k) != ours[k]]
    show = lambda d: " ".join(f"{k}={_show(d.get(k))}" for k in differ)  # noqa: E731
    return f"{show(theirs)}, this run {show(ours)}"


def _unpruned(summary: dict[str, Any]) -> str:
    """'' when the run of ``summary`` pruned; else why its final count is no pruned count."""
    if summary.get("pruning") in UNPRUNED:
        return f"did not prune (pruning={summary.get('pruning')})"
    initial, final = summary.get("n_params_initial"), summary.get("n_params_final")
    if initial is not None and final is not None and int(final) >= int(initial):
        return f"pruned nothing ({int(final):,} parameters at the end of {int(initial):,})"
    return ""


def _other_calendar(summary: dict[str, Any], cfg: DictConfig) -> str:
    """'' when the run of ``summary`` has the event calendar and epochs of ``cfg`` (:data:`CALENDAR_KEYS`);
    else the keys that differ, theirs and ours. A key its saved config lacks (a hand-written summary) is
    not compared."""
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    differ = []
    for dotted in CALENDAR_KEYS:
        node: Any = config
        for part in dotted.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        ours = OmegaConf.select(cfg, dotted)
        if node is not _ABSENT and node != ours:
            differ.append(f"{dotted}={node} (this run {ours})")
    return ", ".join(differ)


def _widths(topology: Any) -> Any:
    try:
        return "-".join(map(str, parse_topology(str(topology))))
    except UserError:
        return topology


def _show(value: Any) -> str:
    return str(value) if not isinstance(value, dict) else ",".join(f"{k}:{v}" for k, v in value.items())
