"""``rmtprune inspect``: the RMT view of a saved model, layer by layer.

For every eligible Linear / Conv2d layer: the BEMA fit (gamma, sigma2, lambda_+, threshold,
spikes, fit error, good or not at the tolerance) and what one pruning event at keep fraction f
(default 0: one-shot, spikes only) would do to it: the rank kept, the action and the parameters
before and after. The event is the training-time one (``RMTPruner``) run on a copy of the model.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from omegaconf import DictConfig
from torch import nn

from .pruner import rmt_pruner_from_config
from .models import count_parameters

COLUMNS = ["layer", "kind", "out", "in", "gamma", "sigma2", "lambda_plus", "threshold", "n_spikes", "fit_error",
           "good_fit", "tolerance", "rank_now", "rank_after_prune", "action", "params_now", "params_after",
           "n_censored", "n_known_spikes", "n_bulk", "note"]


def inspect_model(model: nn.Module, pruning: DictConfig, keep_fraction: float = 0.0,
                  pruner_state: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Rows of :data:`COLUMNS` (one per prunable layer, plus a ``total`` row) and the spectra by layer.

    ``pruning`` is a ``pruning=rmt`` config node; the output layer's rank floor defaults to its number of
    outputs. The model is not modified (the event runs on a copy).
    """
    pruner = rmt_pruner_from_config(pruning, schedule=lambda e: keep_fraction)
    if pruner_state:
        pruner.load_state_dict(pruner_state)
    pruner.adopt_ranks(model)
    event = pruner.step(copy.deepcopy(model), epoch=0)
    rows = []
    for r in event.records:
        rows.append({**{k: r.get(k) for k in COLUMNS if k in r}, "rank_now": r["rank_before"],
                     "rank_after_prune": r["rank_after"], "params_now": r["params_before"],
                     "params_after": r["params_after"]})
    total_now = count_parameters(model)
    saved = sum(r["params_now"] - r["params_after"] for r in rows)
    rows.append({c: None for c in COLUMNS} | {"layer": "total", "params_now": total_now,
                                              "params_after": total_now - saved,
                                              "note": f"{100 * saved / total_now:.1f}% fewer parameters"
                                              if total_now else ""})
    return rows, event.spectra


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
