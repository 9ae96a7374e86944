"""What makes two runs the same: ``identity(cfg)`` (the config less what cannot change a result), its hash
``config_key``, and the keys added since earlier runs (``KEYS_SINCE``) left out at their default so that every
earlier run keeps its key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmtprune.config.schema import PRUNING_KEYS, SCHEDULE_KEYS, USES_SCHEDULE

# Keys that do not change what a run computes (where it runs, how it reports, how it was launched, what is
# measured after training).
NOT_IDENTITY = {"resume", "skip_done", "device", "progress", "output_root", "checkpoint", "eval_batch_size",
                "threads", "deterministic", "logger", "magnitude_sweep", "cost"}


DATASET_NOT_IDENTITY = {"root", "offline_dir", "download", "verify_md5"}


# Bumped when the same config computes something else than before (a method fix): runs made by older code
# then have other keys, and skip_done / resume never mistake them for runs of this code.
IDENTITY_VERSION = 2


# Keys (dotted) added since IDENTITY_VERSION 2 with a default that computes what runs made before them
# computed: left out of the identity at that default, so those runs keep their identity (resume and
# skip_done find them). A new key goes here with the default that reproduces the old behaviour.
KEYS_SINCE: dict[str, Any] = {
    "pruning.target_epoch": None,
    "pruning.margin": None,
    "dataset.val_size": 0,
    "optimizer.anneal": "none",
    "pruning.match": "final",
    "pruning.target_trajectory": None,
    "pruning.include": None,
    "pruning.exclude": None,
    "pruning.split": "always",
    "pruning.recalibrate_bn": 0,
}


# Keys (dotted) that compute nothing while another key has its "off" value: left out of the identity then.
INERT_WHEN: dict[str, tuple[str, Any]] = {"dataset.val_seed": ("dataset.val_size", 0),
                                          "optimizer.anneal_epochs": ("optimizer.anneal", "none")}


def identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines a run's results: the one definition of "the same run".

    Left out: ``NOT_IDENTITY`` (and the data set's location keys), the pruning keys the chosen option
    does not use (config.PRUNING_KEYS), the schedule unless the option uses one (config.USES_SCHEDULE) and
    then only its own keys, ``topology`` unless the model is the MLP, ``pruning.target_from``
    (what counts is the ``target_params`` it resolves to), ``pruning.recalibrate_bn`` for the MLP (no BatchNorm
    to recalibrate), keys added since IDENTITY_VERSION 2 at the default that reproduces earlier runs
    (``KEYS_SINCE``), and keys inert while another is off (``INERT_WHEN``: ``dataset.val_seed`` without a
    validation split, ``optimizer.anneal_epochs`` without an anneal). ``cfg`` is a DictConfig or the plain
    ``config`` dict of a summary.json.
    """

    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if isinstance(cfg, DictConfig) \
        else json.loads(json.dumps(cfg, default=str))
    if not isinstance(data, dict):
        raise ValueError("a run config must be a mapping")
    data = {k: v for k, v in data.items() if k not in NOT_IDENTITY and k != "hydra"}
    if isinstance(data.get("dataset"), dict):
        data["dataset"] = {k: v for k, v in data["dataset"].items() if k not in DATASET_NOT_IDENTITY}
    pruning = data.get("pruning")
    if isinstance(pruning, dict):
        used = PRUNING_KEYS.get(str(pruning.get("name")), tuple(pruning))
        data["pruning"] = {k: v for k, v in pruning.items() if k in used and k != "target_from"}
        if pruning.get("name") not in USES_SCHEDULE:
            data.pop("schedule", None)
    schedule = data.get("schedule")
    if isinstance(schedule, dict):
        used = SCHEDULE_KEYS.get(str(schedule.get("name")), tuple(schedule))
        data["schedule"] = {k: v for k, v in schedule.items() if k in used}
    if isinstance(data.get("model"), dict) and data["model"].get("name", "mlp") != "mlp":
        data.pop("topology", None)
    elif isinstance(data.get("pruning"), dict):  # the MLP has no BatchNorm: recalibrating it changes nothing
        data["pruning"].pop("recalibrate_bn", None)
    for dotted, (switch, off) in INERT_WHEN.items():
        parent, leaf = _node(data, dotted)
        if parent is not None and _get(data, switch, off) == off:
            parent.pop(leaf, None)
    for dotted, default in KEYS_SINCE.items():
        node, leaf = _node(data, dotted)
        if node is not None and leaf in node and node[leaf] == default:
            del node[leaf]
    return data


def _node(data: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """(the dict holding the dotted key's leaf, the leaf), or (None, leaf) when a parent is missing."""
    *parents, leaf = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def _get(data: dict[str, Any], dotted: str, default: Any) -> Any:
    node, leaf = _node(data, dotted)
    return node.get(leaf, default) if node is not None else default


def config_key(cfg: DictConfig | dict[str, Any]) -> str:
    """A short hash of :func:`identity` (and IDENTITY_VERSION): two runs with the same key compute the same thing."""
    blob = json.dumps({"identity_version": IDENTITY_VERSION, **identity(cfg)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def identity_differences(a: DictConfig | dict[str, Any], b: DictConfig | dict[str, Any]) -> list[str]:
    """Dotted keys of the identity whose values differ between two configs (sorted)."""
    pass

    fa, fb = flatten(identity(a)), flatten(identity(b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out
