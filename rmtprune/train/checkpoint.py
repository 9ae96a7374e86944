"""Checkpoints: everything needed to rebuild a (pruned) model and continue training exactly.

The one description of the format. A checkpoint is a dict of tensors and plain data (all on the CPU),
loadable with ``torch.load(path, weights_only=True)`` on any machine::

    format: "rmtprune-checkpoint", version: 1
    spec          the dense model spec (models.model_spec): how to build the network before pruning; for
                  model=custom {"kind": "custom", "target": "pkg.mod.Class", "kwargs": {constructor arguments}}
                  (a record only: rebuilding it needs the class from the user, never from the file;
                  see trusted_spec)
    ranks         {split layer name: rank}: the factorised layers pruning made
    shapes        {layer name: [out, in]}: the Linear layers pruning=neuron shrank (absent in older files)
    state_dict    the model's weights (a masked weight of a pruning=magnitude checkpoint.pt as
                  <name>_orig and <name>_mask, torch.nn.utils.prune's form; model.pt holds it plain)
    num_classes, input_shape
    epoch         epochs completed
    lr            the learning rate of the next epoch
    pruner        the pruner's state (pruner.state_dict(): ranks of truncated layers, known spikes, ...)
    # checkpoint.pt (written after every epoch by TrainingState.save) only:
    optimizer     optimizer.state_dict(), tensors on the CPU
    rng           {torch, cuda, data}: the global, CUDA and data-order generator states
    metrics, ledger   the rows of metrics.csv and layers.csv so far
    config, config_key, n_params_initial, started_at, wall_time_s

``model.pt`` (the final model, written once at the end) has everything but the last group. Every tensor
is stored on the CPU (the optimizer's momentum buffers of a GPU run too), so a plain
``torch.load(path, weights_only=True)`` works on a machine without CUDA; ``Optimizer.load_state_dict``
moves the state back onto the parameters' device.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from rmtprune.errors import UserError
from rmtprune.files import mkstemp_beside
from rmtprune.nn.layers import shrunk_shapes
from rmtprune.nn.models import build_model, factorised_ranks
from rmtprune.train.signals import deferred

FORMAT = "rmtprune-checkpoint"


VERSION = 1


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (through dicts, lists and tuples) moved to the CPU; tensors
    already there and other values are kept as they are (not copied)."""
    if torch.is_tensor(obj):
        return obj if obj.device.type == "cpu" else obj.detach().to("cpu")
    if isinstance(obj, dict):
        items = [(k, to_cpu(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save of ``to_cpu(obj)`` to a temporary file beside ``path``, then os.replace (atomic on
    POSIX). Saved through a file object, so the archive's root folder is torch's fixed "archive" rather
    than the random temporary name: identical objects give identical bytes."""
    path = Path(path)
    fd, tmp = mkstemp_beside(path)
    try:
        with deferred(), os.fdopen(fd, "wb") as f:
            torch.save(to_cpu(obj), f)
            f.close()
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_payload(model: nn.Module, spec: dict[str, Any], num_classes: int, input_shape: list[int]) -> dict[str, Any]:
    """The model part of a checkpoint (model.pt holds this plus epoch, lr and pruner)."""
    return {
        "format": FORMAT, "version": VERSION, "spec": spec, "ranks": factorised_ranks(model),
        "shapes": shrunk_shapes(model),
        "num_classes": int(num_classes), "input_shape": list(input_shape),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def load_file(path: Path) -> dict[str, Any]:
    """Load a checkpoint or state_dict file safely (weights_only); a bad file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: not a readable PyTorch file: it is corrupt, or holds Python objects that safe "
                        f"loading (weights_only) refuses; save a state_dict or use an rmtprune checkpoint") from None
    except Exception as exc:  # the unpickler of a damaged file can raise nearly anything: all mean "unreadable"
        raise UserError(f"{path}: not a readable PyTorch file (corrupt or truncated: {type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a checkpoint or state_dict")
    return obj


def is_checkpoint(obj: dict[str, Any]) -> bool:
    return obj.get("format") == FORMAT


def attach_masks(model: nn.Module, state_dict: dict[str, Any]) -> None:
    """Put a pruning mask (``torch.nn.utils.prune.identity``) on every parameter that ``state_dict`` holds
    masked, as ``<name>_orig`` and ``<name>_mask`` (a checkpoint of a ``pruning=magnitude`` run), so that
    the state loads; ``load_state_dict`` then fills the masks. Parameters masked already are left."""
    for key in state_dict:
        if not (key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state_dict):
            continue
        path, _, name = key[: -len("_mask")].rpartition(".")
        module = model.get_submodule(path)
        if not hasattr(module, name + "_mask"):
            prune.identity(module, name)


def is_custom(ckpt: dict[str, Any]) -> bool:
    """Whether a checkpoint records a custom model (a class of the user's, which only the user may name)."""
    spec = ckpt.get("spec")
    return isinstance(spec, dict) and spec.get("kind") == "custom"


def trusted_spec(ckpt: dict[str, Any], trusted: dict[str, Any] | None, path: Path | str) -> dict[str, Any]:
    """The spec to build a checkpoint's model from. A file never chooses code to run: a built-in kind
    (mlp, cnn: plain numbers for rmtprune's own classes) comes from the file; a custom model is built from
    ``trusted`` (the user's ``model._target_`` and arguments, or the file's own spec where the user trusts
    it), and only when the file records that same class and arguments.

    Raises:
        UserError: a custom model and no trusted spec, or one of another class or arguments (naming the key).
    """
    spec = ckpt.get("spec")
    if not is_custom(ckpt):
        return spec  # type: ignore[return-value]
    target = str(spec.get("target"))
    if trusted is None or trusted.get("kind") != "custom":
        raise UserError(f"{path}: holds a custom model ({target!r}), and rmtprune builds no class a file names: "
                        f"give it on the command line (model=custom model._target_={target} and its arguments)")
    if trusted["target"] != target:
        raise UserError(f"model._target_={trusted['target']}: {path} holds a model of another class ({target!r})")
    mine, theirs = trusted.get("kwargs", {}), spec.get("kwargs") or {}
    if not isinstance(theirs, dict):
        raise UserError(f"{path}: its model arguments are a {type(theirs).__name__}, not a mapping")
    for key in sorted(set(mine) | set(theirs), key=str):
        if (key in mine, mine.get(key)) != (key in theirs, theirs.get(key)):
            raise UserError(f"{_argument(mine, key)} given, but {path} was built with {_argument(theirs, key)}: "
                            f"give the arguments the file records")
    return trusted


def _argument(kwargs: dict[str, Any], key: str) -> str:
    return f"model.{key}={kwargs[key]!r}" if key in kwargs else f"no model.{key}"


def rebuild_model(ckpt: dict[str, Any], path: Path | str = "checkpoint",
                  trusted: dict[str, Any] | None = None) -> nn.Module:
    """The (possibly factorised) model of an rmtprune checkpoint, weights loaded. A custom model needs
    ``trusted``, the spec the user gives (see :func:`trusted_spec`); nothing the file names is imported."""
    if not is_checkpoint(ckpt):
        raise UserError(f"{path}: not an rmtprune checkpoint (no format tag)")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {VERSION})")
    spec = trusted_spec(ckpt, trusted, path)
    _refuse_oversized(spec, ckpt, path)
    try:
        model = build_model(spec, ckpt.get("ranks", {}), ckpt.get("shapes", {}))
    except UserError as exc:  # a custom model whose class is gone or changed
        raise UserError(f"{path}: cannot rebuild its model: {exc}") from None
    except (KeyError, ValueError, RuntimeError, AttributeError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: checkpoint does not match its architecture ({first})") from None
    try:
        attach_masks(model, ckpt["state_dict"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, ValueError, RuntimeError, AttributeError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: checkpoint does not match its architecture ({first})") from None
    return model


def _refuse_oversized(spec: dict[str, Any], ckpt: dict[str, Any], path: Path | str) -> None:
    """A built-in architecture (mlp, cnn) is sized by numbers the file chooses: build it on the meta device
    first (no memory, no random numbers) and refuse one with more parameters than the file holds values, so
    a crafted spec (``widths: [784, 100000, 100000, 10]``) never allocates and initialises gigabytes."""
    state = ckpt.get("state_dict")
    if spec.get("kind") == "custom" or not isinstance(state, dict):
        return
    try:
        with torch.device("meta"):
            need = sum(p.numel() for p in build_model(spec, ckpt.get("ranks", {}), ckpt.get("shapes", {})).parameters())
    except (KeyError, ValueError, RuntimeError, AttributeError, TypeError, NotImplementedError, UserError):
        return  # the real build reports what is wrong with the spec
    held = sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    if need > held:
        raise UserError(f"{path}: checkpoint does not match its architecture ({need:,} parameters in its spec, "
                        f"{held:,} values in its weights)")
