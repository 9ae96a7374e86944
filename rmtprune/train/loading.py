"""Models from files: rmtprune checkpoints, or plain state_dicts of Linear / Conv2d weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmtprune.errors import UserError
from rmtprune.nn.layers import LowRankConv2d, LowRankLinear
from rmtprune.runs.folder import RunFolder
from rmtprune.train.checkpoint import is_checkpoint, is_custom, load_file, rebuild_model


def resolve_model_file(path: Path) -> Path:
    """A run folder -> its model.pt (or checkpoint.pt); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        folder = RunFolder(path)
        for file in (folder.model_pt, folder.checkpoint_pt):
            if file.exists():
                return file
        raise UserError(f"{path}: no model.pt or checkpoint.pt in this folder (is it a run folder of rmtprune train?)")
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return path


def state_dict_of(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(state_dict, pruner state or None) of a saved object other than an rmtprune checkpoint: the README's
    ``{"model": state_dict, "pruner": pruner.state_dict()}``, a Lightning checkpoint (``state_dict``, the
    RMTPruning callback's state under ``callbacks``) or a bare state_dict. (None, None): none of these."""
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            callbacks = obj.get("callbacks") if isinstance(obj.get("callbacks"), dict) else {}
            pruner = obj.get("pruner") or next((c["pruner"] for c in callbacks.values()
                                                if isinstance(c, dict) and isinstance(c.get("pruner"), dict)), None)
            return obj[key], pruner if isinstance(pruner, dict) else None
    if all(isinstance(k, str) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    return None, None


def _factor_pairs(state: dict[str, Any], path: Path | str = "file") -> dict[str, tuple[str, str]]:
    """{layer: (first key, second key)} of the split layers of a state_dict: W = W2 @ W1 stored as
    ``X.first.weight`` / ``X.second.weight`` (rmtprune.nn.layers), or as ``X.0.weight`` / ``X.1.weight`` (the
    only two modules of a Sequential, the first without bias) whose shapes chain through a rank r below both
    sides: W1 (r, in) and W2 (out, r) (Linear), W1 (r, in, kh, kw) and W2 (out, r, 1, 1) (Conv2d; grouped:
    W1 (g r, in / g, kh, kw)). A ``first``/``second`` pair that does not chain so is a damaged file (UserError)."""
    pairs = {}
    for key, first in state.items():
        for a, b in ((".first.weight", ".second.weight"), (".0.weight", ".1.weight")):
            if not key.endswith(a) or not isinstance(first, torch.Tensor):
                continue
            name = key[: -len(a)]
            second = state.get(name + b)
            if not isinstance(second, torch.Tensor) or first.ndim != second.ndim or first.ndim not in (2, 4):
                continue
            if a == ".first.weight":
                rank = second.shape[1]
                linear_ok = first.ndim == 2 and first.shape[0] == rank
                conv_ok = first.ndim == 4 and tuple(second.shape[2:]) == (1, 1) and first.shape[0] % max(rank, 1) == 0
                bias = state.get(name + ".second.bias")
                if rank < 1 or not (linear_ok or conv_ok) or (isinstance(bias, torch.Tensor)
                                                               and tuple(bias.shape) != (second.shape[0],)):
                    raise UserError(f"{path}: {key} {tuple(first.shape)} and {name + b} {tuple(second.shape)} are not "
                                    f"the two factors of one layer (W2 W1 needs W2's columns = W1's rows, rank >= 1)")
            if a == ".0.weight":
                rank = first.shape[0]
                chained = second.shape[1] == rank and (first.ndim == 2 or second.shape[2:] == (1, 1))
                alone = all(k.startswith((f"{name}.0.", f"{name}.1.")) for k in state if k.startswith(name + "."))
                thin = rank < min(second.shape[0], first[0].numel())
                if f"{name}.0.bias" in state or not (chained and alone and thin):
                    continue
            pairs[name] = (key, name + b)
    return pairs


def _split_layer(first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """The LowRankLinear / LowRankConv2d of two stored factors (stride and padding are not stored: the
    matrices are what matter here)."""
    rank = second.shape[1]
    if first.ndim == 2:
        layer: nn.Module = LowRankLinear(first.shape[1], second.shape[0], rank, bias=bias is not None)
    else:
        groups = first.shape[0] // rank
        layer = LowRankConv2d(first.shape[1] * groups, second.shape[0], tuple(first.shape[2:]), rank, groups=groups,
                              bias=bias is not None)
    with torch.no_grad():
        layer.first.weight.copy_(first)
        layer.second.weight.copy_(second)
        if bias is not None:
            layer.second.bias.copy_(bias)
    return layer


def skeleton_from_state_dict(state: dict[str, Any], path: Path | str = "file") -> nn.Module:
    """A module tree holding the Linear (2-D) and Conv2d (4-D) ``*.weight`` tensors of a state_dict
    (with their biases), at their dotted names, in file order; a split layer's two factors (``_factor_pairs``)
    become one ``LowRankLinear`` / ``LowRankConv2d`` at the layer's name. Other entries are ignored.
    Builds no class of the saved model: the tensors alone describe it."""
    root = nn.Module()
    found = 0
    pairs = {keys[0]: (name, keys[1]) for name, keys in _factor_pairs(state, path).items()}  # first key -> (layer, second)
    seconds = {second for _, second in pairs.values()}
    for key, value in state.items():
        if key in seconds or not (isinstance(value, torch.Tensor) and key.endswith("weight") and value.ndim in (2, 4)):
            continue
        if key in pairs:
            name, second = pairs[key]
            layer: nn.Module = _split_layer(value, state[second], state.get(second[: -len("weight")] + "bias"))
        else:
            name = key[: -len(".weight")] if key.endswith(".weight") else key[: -len("weight")] or "weight"
            layer = _dense_layer(value, state.get(f"{name}.bias"), name, path)
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


def _dense_layer(weight: torch.Tensor, bias: torch.Tensor | None, name: str, path: Path | str) -> nn.Module:
    if weight.ndim == 2:
        layer: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    else:
        layer = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=bias is not None,
                          device="meta")
    layer = layer.to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            if bias.shape != (weight.shape[0],):
                raise UserError(f"{path}: {name}.bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
            layer.bias.copy_(bias)
    return layer


def load_model(path: Path, trusted: dict[str, Any] | None = None,
               build_custom: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """(model, info) from an rmtprune checkpoint or a plain state_dict file. Nothing the file names is
    imported or called: a checkpoint of a custom model is rebuilt from ``trusted`` (the user's spec,
    checked against the file by checkpoint.trusted_spec), or with ``build_custom=False`` not built at all
    (its weight tensors in a skeleton_from_state_dict).

    info: ``kind`` ("rmtprune" | "state_dict"), ``num_classes`` (or None), ``epoch`` (or None), the raw
    object under ``raw`` (for a state_dict: the state_dict itself, from any format ``state_dict_of`` reads,
    and the pruner state saved with it under ``pruner``).
    """
    path = resolve_model_file(path)
    obj = load_file(path)
    if is_checkpoint(obj):
        weights_only = is_custom(obj) and not build_custom and isinstance(obj.get("state_dict"), dict)
        model = skeleton_from_state_dict(obj["state_dict"], path) if weights_only else rebuild_model(obj, path, trusted)
        epoch = obj.get("epoch") or len(obj.get("metrics", [])) or None
        return model, {"kind": "rmtprune", "num_classes": obj.get("num_classes"), "epoch": epoch, "raw": obj,
                       "path": path}
    state, pruner = state_dict_of(obj)
    if state is None:
        raise UserError(f"{path}: not a model: neither an rmtprune checkpoint nor a state_dict of tensors")
    return skeleton_from_state_dict(state, path), {"kind": "state_dict", "num_classes": None, "epoch": None,
                                                   "raw": state, "pruner": pruner, "path": path}
