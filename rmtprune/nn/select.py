"""Which layers a pruner may touch: the one rule of eligibility.

A layer is eligible when it is a Linear / Conv2d (or a factorised one) that is not the network's output
layer, whose smaller matrix side reaches ``min_size``, and whose name passes ``include``/``exclude`` (glob
patterns on module names).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from rmtprune.nn.layers import LOW_RANK_TYPES, PRUNABLE_TYPES

if TYPE_CHECKING:  # importing rmtprune (the Python API) must not import the config machinery
    pass


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
                    include: tuple[str, ...] | None = None, exclude: tuple[str, ...] | None = None) -> list[str]:
    """Names of the layers a pruning event looks at: Linear / Conv2d (dense or split) whose weight matrix
    (out, m) has at least ``min_size`` entries and min(out, m) >= 10 singular values, selected by the
    ``include`` / ``exclude`` patterns; the last one (the output layer) only if ``include_output_layer``."""
    from rmtprune.nn.geometry import layer_matrix_shape

    out = []
    for name, m, _ in select_layers(model, include, exclude, include_output_layer):
        rows, cols = layer_matrix_shape(m)
        if rows * cols >= min_size and min(rows, cols) >= 10:
            out.append(name)
    return out


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
