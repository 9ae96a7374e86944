"""The networks: an MLP from a topology, the reference CNN, or the user's own ``nn.Module``; their
specs and rebuilding.

A model is described by a plain-data *spec* (stored in checkpoints) plus the ranks of the layers
that pruning split; :func:`build_model` turns both back into a module. The specs::

    {"kind": "mlp", "widths": [784, ..., 10]}
    {"kind": "cnn", "input_shape": [c, h, w], "num_classes": n, "channels": [...], ...}
    {"kind": "custom", "target": "mypkg.nets.Net", "kwargs": {"hidden": 300}}

A custom model (``model=custom model._target_=mypkg.nets.Net model.hidden=300``) is built by Hydra's
``instantiate`` (nested ``_target_`` nodes among the arguments are instantiated too, and containers
reach the constructor as plain dicts and lists). It keeps its own initialisation: the paper's
N(0, 1/fan_in) init is applied to the built-in networks only, since a user's module may rely on its
own (normalisation layers, zero-init residual branches, pretrained weights). It receives the images as
(N, C, H, W) float32 in [-1, 1] and must return (N, num_classes) logits.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn

from rmtprune.errors import UserError
from rmtprune.nn.layers import LOW_RANK_TYPES, PRUNABLE_TYPES, LowRankConv2d, LowRankLinear, ShrunkLinear
from rmtprune.nn.select import prunable_layers

if TYPE_CHECKING:  # importing rmtprune (the Python API) must not import the config machinery
    pass


_WIDTH = re.compile(r"^[0-9]+$")


def parse_topology(topology: str) -> list[int]:
    """``"784-1000-10"`` -> ``[784, 1000, 10]``: widths from input to output, at least two, all > 0."""
    text = str(topology).strip()
    parts = text.split("-")
    hint = "expected positive integer widths joined by '-', input to output, e.g. 784-1000-1000-10"
    if len(parts) < 2:
        raise UserError(f"topology={text!r}: needs at least an input and an output width; {hint}")
    widths = []
    for part in parts:
        if not _WIDTH.match(part.strip()):
            raise UserError(f"topology={text!r}: {part!r} is not a width; {hint}")
        w = int(part)
        if w <= 0:
            raise UserError(f"topology={text!r}: width {w} must be positive; {hint}")
        widths.append(w)
    return widths


ModelSpec = dict[str, Any]


# keys of ``model=custom`` that are not constructor arguments
CUSTOM_RESERVED = ("_target_", "name")


def init_paper_(module: nn.Module) -> None:
    """Weights N(0, 1 / fan_in), biases 0 (fan_in = in for Linear, in/groups * k * k for Conv2d)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MLP(nn.Module):
    """Linear layers of ``widths`` with ReLU between them and none on the logits. Input (N, ...) is flattened."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.widths = list(widths)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x


def cnn_feature_shape(input_shape: list[int], channels: list[int], kernel_size: int,
                      pool_after: list[int]) -> tuple[int, int, int]:
    """(c, h, w) after the convolutions of the reference CNN on inputs of ``input_shape`` (c, h, w): each
    k x k conv without padding takes h -> h - k + 1, each pool h -> floor(h / 2).

    Raises:
        ValueError: the input is too small for the convolutions (a side reaches 0).
    """
    c, h, w = (int(d) for d in input_shape)
    for i, width in enumerate(channels, start=1):
        h, w = h - kernel_size + 1, w - kernel_size + 1
        if i in pool_after:
            h, w = h // 2, w // 2
        c = int(width)
        if h <= 0 or w <= 0:
            raise ValueError(f"the input {list(input_shape)} is too small for {len(channels)} {kernel_size}x"
                             f"{kernel_size} convs (side {min(h, w)} after conv {i})")
    return c, h, w


class CNN(nn.Module):
    """The reference CNN: [conv k x k -> ReLU -> BatchNorm -> (max-pool 2) -> dropout] per channel
    width, then Linear -> BatchNorm -> ReLU -> dropout -> Linear to the classes."""

    def __init__(self, input_shape: list[int], num_classes: int, channels: list[int], kernel_size: int,
                 pool_after: list[int], hidden: int, conv_dropout: float, fc_dropout: float) -> None:
        super().__init__()
        c, h, w = cnn_feature_shape(input_shape, channels, kernel_size, pool_after)
        blocks: list[nn.Module] = []
        in_channels = int(input_shape[0])
        for i, width in enumerate(channels, start=1):
            blocks += [nn.Conv2d(in_channels, width, kernel_size), nn.ReLU(), nn.BatchNorm2d(width)]
            if i in pool_after:
                blocks.append(nn.MaxPool2d(2))
            blocks.append(nn.Dropout(conv_dropout))
            in_channels = width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Dropout(fc_dropout), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(spec: ModelSpec, ranks: dict[str, int] | None = None,
                shapes: dict[str, list[int]] | None = None) -> nn.Module:
    """Dense model from ``spec`` (the built-in ones with the paper's init, a custom one with its own);
    layers named in ``shapes`` become (uninitialised) ShrunkLinear layers of that [out, in], then layers
    named in ``ranks`` become factorised (uninitialised shells of that rank); ``load_state_dict`` fills both.

    Raises:
        UserError: a custom model whose target cannot be imported, rejects its arguments or is no nn.Module.
    """
    if spec["kind"] == "mlp":
        model: nn.Module = MLP(spec["widths"])
    elif spec["kind"] == "cnn":
        model = CNN(spec["input_shape"], spec["num_classes"], spec["channels"], spec["kernel_size"],
                    spec["pool_after"], spec["hidden"], spec["conv_dropout"], spec["fc_dropout"])
    elif spec["kind"] == "custom":
        model = build_custom(spec["target"], spec.get("kwargs", {}))
    else:
        raise ValueError(f"unknown model kind {spec['kind']!r}")
    if spec["kind"] != "custom":
        init_paper_(model)
    for name, (out, inp) in (shapes or {}).items():
        bias = model.get_submodule(name).bias is not None
        model.set_submodule(name, nn.utils.skip_init(ShrunkLinear, int(inp), int(out), bias=bias))
    for name, rank in (ranks or {}).items():
        model.set_submodule(name, factorised_like(model.get_submodule(name), int(rank)))
    return model


def _arguments(kwargs: dict[str, Any]) -> str:
    return " ".join(f"model.{k}={v!r}" for k, v in kwargs.items()) or "no arguments"


def locate(path: str) -> Any:
    """The object at a dotted path ``package.module.Name`` (the longest importable module, then attributes).

    Raises:
        ModuleNotFoundError: no prefix of ``path`` is a module; other import errors of the module as they are.
        AttributeError: the module has no such attribute.
    """
    import importlib

    parts = str(path).split(".")
    if not all(parts):
        raise ValueError(f"{path!r} is not a dotted path like package.module.Class")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # only "this module does not exist" moves on to a shorter prefix; a module that exists but
            # imports something missing is the user's error to see
            missing = exc.name or ""
            if i > 1 and (name == missing or name.startswith(missing + ".")):
                continue
            raise
        for j, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                raise AttributeError(f"{'.'.join(parts[:j])} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"No module named {parts[0]!r}")


def _accepts(obj: Any, kwargs: dict[str, Any]) -> bool | None:
    """Whether ``obj``'s signature takes ``kwargs`` (None: no signature to tell)."""
    import inspect

    try:
        inspect.signature(obj).bind(**kwargs)
    except TypeError:
        return False
    except ValueError:
        return None
    return True


def build_custom(target: str, kwargs: dict[str, Any]) -> nn.Module:
    """``target(**kwargs)`` through Hydra's instantiate (nested ``_target_`` nodes instantiated too).

    Raises:
        UserError: ``target`` cannot be imported, rejects its arguments (its signature does not take them),
            raises when called, or the result is not an ``nn.Module``; each names ``model._target_``.
    """
    from hydra.utils import instantiate

    hint = "the class must be importable: install its package, or add its folder to PYTHONPATH"
    try:
        obj = locate(target)
    except Exception as exc:  # the user's module failing to import raises anything: all mean "not importable"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"model._target_={target} cannot be imported ({type(exc).__name__}: {reason}); "
                        f"{hint}") from None
    if not callable(obj):
        raise UserError(f"model._target_={target} is a {type(obj).__name__}, not a class or function "
                        f"that builds an nn.Module")
    node = OmegaConf.create({"_target_": target, **kwargs})
    try:
        model = instantiate(node, _convert_="all")
    except Exception as exc:
        cause = exc.__cause__ or exc
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        if _accepts(obj, kwargs) is False:
            raise UserError(f"model._target_={target} rejected its arguments ({_arguments(kwargs)}): "
                            f"{type(cause).__name__}: {reason}") from None
        raise UserError(f"model._target_={target} raised {type(cause).__name__} when called with "
                        f"({_arguments(kwargs) or 'no arguments'}): {reason}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model._target_={target} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model_output(model: nn.Module, input_shape: list[int], num_classes: int, what: str) -> list[str]:
    """One forward pass of a batch of 2 zeros on the model's device (eval mode, no gradients, the CPU RNG
    untouched): the output must be (2, num_classes) logits.

    Returns the names of the prunable layers in the order they ran. Raises UserError naming ``what`` when
    the forward pass fails or the output has another shape. Leaves the model's train/eval mode as it was.
    """
    ran: list[str] = []
    names = {id(m): n for n, m in prunable_layers(model)}
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.append(names[id(mod)]))
             for n, m in prunable_layers(model)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            device = next(iter(model.parameters()), torch.empty(0)).device
            out = model(torch.zeros(2, *[int(d) for d in input_shape], device=device))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"{what} fails on the data set's input (N, {', '.join(map(str, input_shape))}): "
                        f"{type(exc).__name__}: {first}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    shape = tuple(out.shape) if torch.is_tensor(out) else None
    if shape != (2, int(num_classes)):
        got = f"output of shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise UserError(f"{what} gives {got} for a batch of 2 inputs of shape {list(input_shape)}; it must give "
                        f"(2, {num_classes}): one logit per class of the data set")
    return ran


def factorised_like(dense: nn.Module, rank: int) -> nn.Module:
    """An empty LowRankLinear / LowRankConv2d with the dense layer's shape and the given rank."""
    if isinstance(dense, nn.Linear):
        return LowRankLinear(dense.in_features, dense.out_features, rank, bias=dense.bias is not None)
    if isinstance(dense, nn.Conv2d):
        return LowRankConv2d(dense.in_channels, dense.out_channels, dense.kernel_size, rank, stride=dense.stride,
                             padding=dense.padding, dilation=dense.dilation, groups=dense.groups,
                             bias=dense.bias is not None, padding_mode=dense.padding_mode)
    raise ValueError(f"cannot factorise a {type(dense).__name__}")


def factorise_to_match(model: nn.Module, state_dict: Mapping[str, Any], prefix: str = "") -> dict[str, int]:
    """Give ``model`` the split layers a state_dict of its pruned version holds, so that it loads.

    A layer stored as two factors (``<layer>.first.weight`` and ``<layer>.second.weight`` under ``prefix``)
    whose module in ``model`` is a dense Linear / Conv2d (or a split one of another rank) is replaced by an
    empty ``LowRankLinear`` / ``LowRankConv2d`` of the stored rank (``first.weight.shape[0] // groups``) on
    the layer's device and dtype. Modifies ``model`` in place; returns {layer: rank} of the layers replaced.
    Other modules named ``first`` / ``second`` (not prunable layers) are left alone.
    """
    changed: dict[str, int] = {}
    suffix = ".first.weight"
    for key, value in state_dict.items():
        if not (key.startswith(prefix) and key.endswith(suffix)):
            continue
        if f"{key[:-len(suffix)]}.second.weight" not in state_dict:
            continue
        name = key[len(prefix):-len(suffix)]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        rank = int(value.shape[0]) // int(getattr(module, "groups", 1))
        like = next(iter(module.parameters()))
        if isinstance(module, LOW_RANK_TYPES):
            if module.rank == rank:
                continue
            module = _dense_twin(module)
        model.set_submodule(name, factorised_like(module, rank).to(device=like.device, dtype=like.dtype))
        changed[name] = rank
    return changed


def _dense_twin(module: nn.Module) -> nn.Module:
    """A dense layer (on the meta device: no memory, no RNG) with a split layer's shape and settings."""
    if isinstance(module, LowRankLinear):
        return nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    first = module.first
    return nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, stride=first.stride,
                     padding=first.padding, dilation=first.dilation, groups=module.groups,
                     bias=module.bias is not None, padding_mode=first.padding_mode, device="meta")


def factorised_ranks(model: nn.Module) -> dict[str, int]:
    """{layer name: rank} of the split layers, the part of the architecture pruning changed."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, LOW_RANK_TYPES)}
