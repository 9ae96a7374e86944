"""Models from files: rmtprune checkpoints, or plain state_dicts of Linear / Conv2d weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import is_checkpoint, is_custom, load_file, rebuild_model
from .errors import UserError


def resolve_model_file(path: Path) -> Path:
    """A run folder -> its model.pt (or checkpoint.pt); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.pt", "checkpoint.pt"):
            if (path / name).exists():
                return path / name
        raise UserError(f"{path}: no model.pt or checkpoint.pt in this folder (is it a run folder of rmtprune train?)")
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return path


def skeleton_from_state_dict(state: dict[str, Any], path: Path | str = "file") -> nn.Module:
    """A module tree holding the Linear (2-D) and Conv2d (4-D) ``*.weight`` tensors of a state_dict
    (with their biases), at their dotted names, in file order. Other entries are ignored."""
    root = nn.Module()
    found = 0
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or not key.endswith("weight") or value.ndim not in (2, 4):
            continue
        name = key[: -len(".weight")] if key.endswith(".weight") else key[: -len("weight")] or "weight"
        bias = state.get(f"{name}.bias")
        if value.ndim == 2:
            layer: nn.Module = nn.Linear(value.shape[1], value.shape[0], bias=bias is not None)
        else:
            layer = nn.Conv2d(value.shape[1], value.shape[0], tuple(value.shape[2:]), bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(value)
            if bias is not None:
                if bias.shape != (value.shape[0],):
                    raise UserError(f"{path}: {name}.bias has shape {tuple(bias.shape)}, expected ({value.shape[0]},)")
                layer.bias.copy_(bias)
        parts = name.split(".")
        if not all(parts):
            raise UserError(f"{path}: the state_dict key {key!r} is not a module path (an empty name between dots)")
        parent = root
        try:
            for part in parts[:-1]:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
                if not isinstance(parent, nn.Module):
                    raise KeyError(f"{part!r} is not a module")
            parent.add_module(parts[-1], layer)
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{path}: the state_dict key {key!r} does not fit a module tree ({exc})") from None
        found += 1
    if not found:
        raise UserError(f"{path}: no Linear or Conv2d weights (2-D or 4-D '*.weight' tensors) in this state_dict")
    return root


def load_model(path: Path, trusted: dict[str, Any] | None = None,
               build_custom: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """(model, info) from an rmtprune checkpoint or a plain state_dict file. Nothing the file names is
    imported or called: a checkpoint of a custom model is rebuilt from ``trusted`` (the user's spec,
    checked against the file by checkpoint.trusted_spec), or with ``build_custom=False`` not built at all
    (its weight tensors in a skeleton_from_state_dict).

    info: ``kind`` ("rmtprune" | "state_dict"), ``num_classes`` (or None), ``epoch`` (or None), the raw
    object under ``raw``.
    """
    path = resolve_model_file(path)
    obj = load_file(path)
    if is_checkpoint(obj):
        weights_only = is_custom(obj) and not build_custom and isinstance(obj.get("state_dict"), dict)
        model = skeleton_from_state_dict(obj["state_dict"], path) if weights_only else rebuild_model(obj, path, trusted)
        epoch = obj.get("epoch") or len(obj.get("metrics", [])) or None
        return model, {"kind": "rmtprune", "num_classes": obj.get("num_classes"), "epoch": epoch, "raw": obj,
                       "path": path}
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    if not all(isinstance(k, str) for k in state) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a model: neither an rmtprune checkpoint nor a state_dict of tensors")
    return skeleton_from_state_dict(state, path), {"kind": "state_dict", "num_classes": None, "epoch": None,
                                                   "raw": state, "path": path}
