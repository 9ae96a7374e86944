"""``rmtprune inspect``: the RMT view of a saved model, layer by layer.

For every eligible Linear / Conv2d layer: the BEMA fit (gamma, sigma2, lambda_+, threshold,
spikes, fit error, good or not at the tolerance) and what one pruning event at keep fraction f
(default 0: one-shot, spikes only) would do to it: the rank kept, the action and the parameters
before and after. The event is the training-time one (``RMTPruner``), planned from the singular values
alone (``RMTPruner.plan``): the model is not modified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from torch import nn

from rmtprune.nn.geometry import count_parameters
from rmtprune.prune.rmt import RMTPruner
from rmtprune.train.loading import skeleton_from_state_dict, state_dict_of

if TYPE_CHECKING:
    import pandas as pd


COLUMNS = ["layer", "kind", "out", "in", "gamma", "sigma2", "lambda_plus", "threshold", "n_spikes", "fit_error",
           "good_fit", "tolerance", "rank_now", "rank_after_prune", "action", "params_now", "params_after",
           "n_censored", "n_known_spikes", "n_bulk", "note"]


_AT = COLUMNS.index("rank_now")


FRAME_COLUMNS = [*COLUMNS[:_AT], "keep_fraction", *COLUMNS[_AT:]]  # inspect_model's DataFrame


def inspect_rows(model: nn.Module, pruner: RMTPruner, pruner_state: dict[str, Any] | None = None,
                 each: Callable[[str, nn.Module], None] | None = None
                 ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Rows of :data:`COLUMNS` (one per prunable layer, with its ``keep_fraction``, plus a ``total`` row) and
    the spectra by layer, for one event of ``pruner`` (its schedule at epoch 0 gives the keep fraction).

    The model is not modified: the event is planned from the singular values alone (:meth:`RMTPruner.plan`);
    ``pruner_state`` (``pruner.state_dict()`` saved with the model) gives the ranks of truncated layers and the
    known spikes; ``each(name, module)`` is called before each layer is fitted (a progress display).
    """
    if pruner_state:
        pruner.load_state_dict(pruner_state)
    event = pruner.plan(model, epoch=0, each=each)
    rows = []
    for r in event.records:
        rows.append({**{k: r.get(k) for k in COLUMNS if k in r}, "rank_now": r["rank_before"],
                     "rank_after_prune": r["rank_after"], "params_now": r["params_before"],
                     "params_after": r["params_after"], "keep_fraction": r["keep_fraction"]})
    total_now = count_parameters(model)
    saved = sum(r["params_now"] - r["params_after"] for r in rows)
    rows.append({c: None for c in COLUMNS} | {"layer": "total", "params_now": total_now,
                                              "params_after": total_now - saved,
                                              "note": f"{100 * saved / total_now:.1f}% fewer parameters"
                                              if total_now else ""})
    return rows, event.spectra


def inspect_model(model_or_state_dict: nn.Module | dict[str, Any], keep_fraction: float = 0.0,
                  **pruning_keys: Any) -> "pd.DataFrame":
    """The RMT view of a model, one row per Linear / Conv2d layer (a split layer is one row, fitted on the
    product of its factors): its shape (``out``, ``in``), the MP fit (``sigma2``, the edge ``lambda_plus``,
    ``threshold``, ``n_spikes``, ``fit_error``, ``good_fit``), and what one event at ``keep_fraction`` would
    do (``rank_now`` -> ``rank_after_prune``, ``action``, ``params_now`` -> ``params_after``).

    ``model_or_state_dict``: an ``nn.Module``, a state_dict, the README's ``{"model": ..., "pruner": ...}``
    or a loaded Lightning checkpoint (read from the tensors alone: no model class is built). Keyword
    arguments: those of :class:`rmtprune.RMTPruner` (``tolerance=0.1``, ``min_size=...``). The model is not
    modified.
    """
    import pandas as pd

    pruner_state = None
    model = model_or_state_dict
    if not isinstance(model, nn.Module):
        state, pruner_state = state_dict_of(dict(model))
        if state is None:
            raise ValueError("inspect_model takes an nn.Module or a state_dict (or a {'model': ..., 'pruner': ...} "
                             "or Lightning checkpoint dict)")
        model = skeleton_from_state_dict(state, "state_dict")
    if not (isinstance(keep_fraction, (int, float)) and 0 <= keep_fraction <= 1):
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction!r}")
    pruner = RMTPruner(schedule=lambda e: float(keep_fraction), **pruning_keys)
    rows, _ = inspect_rows(model, pruner, pruner_state)
    return pd.DataFrame(rows[:-1], columns=FRAME_COLUMNS)


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    head = ["layer", "shape", "gamma", "sigma2", "lambda_plus", "threshold", "spikes", "fit error", "good fit",
            "rank now → after", "action", "params now → after"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(cells(r)) + " |")
    return "\n".join(lines) + "\n"


def cells(r: dict[str, Any]) -> list[str]:
    def f(v: Any, fmt: str) -> str:
        return "–" if v is None or v != v else format(v, fmt)

    if r["layer"] == "total":
        return ["**total**", "", "", "", "", "", "", "", "", "", r.get("note") or "",
                f"{r['params_now']:,} → {r['params_after']:,}"]
    return [str(r["layer"]), f"{r['out']}x{r['in']}", f(r.get("gamma"), ".3f"), f(r.get("sigma2"), ".4g"),
            f(r.get("lambda_plus"), ".4g"), f(r.get("threshold"), ".4g"), f(r.get("n_spikes"), ".0f"),
            f(r.get("fit_error"), ".4f"), "yes" if r.get("good_fit") is True else "no",
            f"{r['rank_now']} → {r['rank_after_prune']}", str(r["action"]),
            f"{r['params_now']:,} → {r['params_after']:,}"]
