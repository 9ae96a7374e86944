"""Which layers a pruner may touch: the one rule of eligibility.

A layer is eligible when it is a Linear / Conv2d (dense or factorised) whose name passes ``include`` /
``exclude`` (glob patterns on module names; the output layer, the last one, only if ``include_output_layer``:
:func:`select_layers`), whose matrix (out, m) has at least ``min_size`` entries and at least ``min_values``
singular values (:func:`too_small`; a method that fits a spectrum needs a few).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rmtprune.nn.geometry import layer_matrix_shape
from rmtprune.nn.layers import LOW_RANK_TYPES, PRUNABLE_TYPES


def name_patterns(key: str, value: Any) -> tuple[str, ...] | None:
    """``include`` / ``exclude`` as a tuple of ``fnmatch`` patterns (None stays None: no restriction).

    Raises:
        ValueError: ``value`` is not None, a string or a sequence of strings (named ``key``).
    """
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    try:
        patterns = tuple(items)
    except TypeError:
        patterns = (None,)
    if not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{key} must be a list of module-name patterns (fnmatch style, e.g. ['features.*', "
                         f"'*.out_proj']), got {value!r}")
    return patterns


def selected(name: str, include: tuple[str, ...] | None, exclude: tuple[str, ...] | None) -> bool:
    """Whether layer ``name`` matches a pattern of ``include`` (None: every layer) and none of ``exclude``
    (``fnmatch.fnmatchcase``: ``*`` matches any run of characters, dots included)."""
    from fnmatch import fnmatchcase

    if include is not None and not any(fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatchcase(name, p) for p in exclude or ())


def select_layers(model: nn.Module, include: tuple[str, ...] | None = None, exclude: tuple[str, ...] | None = None,
                  include_output_layer: bool = True) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, is_output) of the prunable layers a pruner looks at, in module order: those
    :func:`selected` by the patterns, the output layer (the last prunable layer, whether selected or not)
    only if ``include_output_layer``."""
    layers = prunable_layers(model)
    last = len(layers) - 1
    return [(name, m, i == last) for i, (name, m) in enumerate(layers)
            if (i != last or include_output_layer) and selected(name, include, exclude)]


def eligible_layers(model: nn.Module, min_size: int, include_output_layer: bool = True,
                    include: tuple[str, ...] | None = None, exclude: tuple[str, ...] | None = None,
                    min_values: int = 10) -> list[str]:
    """Names of the eligible layers (:func:`select_layers`, then :func:`too_small`) of an arm that needs
    ``min_values`` singular values (rmt: 10), in module order."""
    return [name for name, m, _ in select_layers(model, include, exclude, include_output_layer)
            if not too_small(m, min_size, min_values)]


def too_small(module: nn.Module, min_size: int, min_values: int = 1) -> str:
    """Why a selected layer is not eligible ("" when it is): fewer than ``min_values`` singular values
    (min(out, m)), or fewer than ``min_size`` weights (out m)."""
    out, m = layer_matrix_shape(module)
    if min(out, m) < min_values:
        return f"fewer than {min_values} singular values"
    if out * m < min_size:
        return f"{out * m} weights < min_size {min_size}"
    return ""


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear / Conv2d layers (dense or split), in forward order, factors not listed separately."""
    out: list[tuple[str, nn.Module]] = []
    skip: set[str] = set()
    for name, m in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(m, PRUNABLE_TYPES):
            out.append((name, m))
            if isinstance(m, LOW_RANK_TYPES):
                skip.add(name)
    return out
