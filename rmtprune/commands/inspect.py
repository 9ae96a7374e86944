"""``rmtprune inspect PATH [options] [pruning.KEY=VALUE ...]``: the MP fit of every layer of a saved
model and what one pruning event would keep (rmtprune.report.inspection).

The pruning settings are ``rmtprune/conf/pruning/rmt.yaml`` composed through Hydra, as ``rmtprune train
pruning=rmt`` composes them: every key train accepts for pruning=rmt is accepted as
``pruning.KEY=VALUE`` and checked by config.validate_pruning; ``--tolerance``, ``--conv-tolerance``,
``--alpha``, ``--beta`` and ``--min-size`` are shorthands for five of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rmtprune.commands.common import Parser, formats
from rmtprune.commands.compose import Composer
from rmtprune.commands.precheck import check_unused_keys, parse_overrides
from rmtprune.errors import UserError

# shorthand flag -> pruning key
FLAGS = {"tolerance": "tolerance", "conv_tolerance": "conv_tolerance", "alpha": "alpha", "beta": "beta",
         "min_size": "min_size"}


def pruning_config(overrides: list[str]) -> DictConfig:
    """``pruning=rmt`` as ``rmtprune train`` composes it, with ``pruning.KEY=VALUE`` overrides, checked."""
    from rmtprune.config.validate import validate_pruning

    bad = [o for o in overrides if not o.lstrip("+").startswith("pruning.")]
    if bad:
        raise UserError(f"{bad[0]}: inspect takes pruning.KEY=VALUE settings only (the keys of pruning=rmt)")
    with Composer(None, "config") as composer:
        parsed = parse_overrides(overrides)
        if any(o.is_sweep_override() for o in parsed):
            raise UserError("inspect takes one value per key (no sweeps)")
        cfg = composer.compose(["pruning=rmt", *overrides])
    check_unused_keys(parsed, [cfg])
    validate_pruning(cfg.pruning)
    return cfg.pruning


def parser(defaults: DictConfig) -> Parser:
    d = defaults
    ap = Parser(prog="rmtprune inspect", description="The MP fit of every Linear / Conv2d layer of a saved model "
                "(a run folder, an rmtprune checkpoint, or a plain state_dict) and what one-shot pruning would keep. "
                "Any key of pruning=rmt can be set as pruning.KEY=VALUE (e.g. pruning.alpha=0.3).")
    ap.add_argument("path", type=Path, help="run folder, model.pt / checkpoint.pt, or a state_dict file")
    ap.add_argument("overrides", nargs="*", metavar="pruning.KEY=VALUE", help="settings of pruning=rmt "
                    "(rmtprune/conf/pruning/rmt.yaml), as for rmtprune train")
    ap.add_argument("--tolerance", type=float, default=None, help=f"pruning.tolerance: MP fit tolerance "
                    f"(default {d.tolerance})")
    ap.add_argument("--conv-tolerance", type=float, default=None, help="pruning.conv_tolerance: tolerance for conv "
                    "layers (default: --tolerance)")
    ap.add_argument("--alpha", type=float, default=None, help=f"pruning.alpha: BEMA trimming (default {d.alpha})")
    ap.add_argument("--beta", type=float, default=None, help=f"pruning.beta: Tracy-Widom confidence (default {d.beta})")
    ap.add_argument("--min-size", type=int, default=None, help=f"pruning.min_size: smallest layer fitted, in weights "
                    f"(default {d.min_size})")
    ap.add_argument("--keep-fraction", type=float, default=0.0, help="share of sub-edge singular values a prune "
                    "would keep (default 0: one-shot, spikes only)")
    ap.add_argument("--plots", action="store_true", help="one ESD figure per layer")
    ap.add_argument("--format", default="csv,md", help="files to write: csv (inspect.csv), md (inspect.md)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the model's folder)")
    return ap


def main(argv: list[str]) -> int:
    args = parser(pruning_config([])).parse_intermixed_args(argv)
    from rmtprune.config.build import rmt_pruner_from_config
    from rmtprune.config.schema import RunConfig
    from rmtprune.files import write_csv
    from rmtprune.nn.geometry import layer_matrix_shape
    from rmtprune.nn.select import select_layers
    from rmtprune.report.inspection import COLUMNS, inspect_rows
    from rmtprune.report.inspection import markdown as inspect_markdown
    from rmtprune.train.loading import load_model, resolve_model_file
    from rmtprune.train.progress import StepProgress

    fmts = formats(args.format, ("csv", "md"))
    overrides = list(args.overrides)
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if any(o.lstrip("+").startswith(f"pruning.{key}=") for o in overrides):
            raise UserError(f"--{flag.replace('_', '-')} and pruning.{key}= both given: give one")
        overrides.append(f"pruning.{key}={value}")
    try:
        pruning = pruning_config(overrides)
    except UserError as exc:
        flag = next((f for f, k in FLAGS.items() if getattr(args, f) is not None and f"pruning.{k}=" in str(exc)), None)
        raise UserError(f"--{flag.replace('_', '-')}: {exc}" if flag else str(exc)) from None
    if not 0 <= args.keep_fraction <= 1:
        raise UserError(f"--keep-fraction={args.keep_fraction} is out of range [0, 1]")
    path = resolve_model_file(args.path)
    model, info = load_model(path, build_custom=False)  # a file's custom class is never imported: its weights only
    pruner_state = info["raw"].get("pruner") if info["kind"] == "rmtprune" else info["pruner"]
    raw = info["raw"] if info["kind"] == "rmtprune" else {}
    input_shape = raw.get("input_shape")
    if pruning.get("split") == "auto" and input_shape is None:
        raise UserError(f"pruning.split=auto weighs a split at the model's input shape, which {path.name} (a plain "
                        f"state_dict) does not record: inspect it with pruning.split=always or never")
    batch_size = (raw.get("config") or {}).get("batch_size", RunConfig.batch_size)  # the run's, else the default
    pruner = rmt_pruner_from_config(pruning, lambda e: args.keep_fraction, int(batch_size), input_shape)
    layers = [(n, m) for n, m, _ in select_layers(model, pruner.include, pruner.exclude, pruner.include_output_layer)]
    weights = sum(layer_matrix_shape(m)[0] * layer_matrix_shape(m)[1] for _, m in layers)
    what = (f"inspect: fitting the MP law to {len(layers)} layers ({weights:,} weights) of {path}: singular values "
            f"only, about {fit_seconds(layers):.0f} s")
    with StepProgress(what, len(layers)) as step:
        rows, spectra = inspect_rows(model, pruner, pruner_state,
                                     each=lambda name, m: step(f"{name} {'x'.join(map(str, layer_matrix_shape(m)))}"))
    out = args.out or path.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        if "csv" in fmts:
            write_csv(out / "inspect.csv", rows, COLUMNS)
        if "md" in fmts:
            (out / "inspect.md").write_text(inspect_markdown(rows, f"RMT view of {path}"), encoding="utf-8")
        if args.plots:
            from rmtprune.report.plots import inspect_figures

            inspect_figures(rows, spectra, out)
    except OSError as exc:
        raise UserError(f"cannot write to {out} ({exc.strerror}); choose another folder with --out") from None
    print_table(rows, str(path))
    print(f"wrote inspect files to {out}")
    return 0


# Seconds per floating-point operation of the singular values (float64 Gram matrix p^2 n + its eigenvalues
# 9 p^3), measured at 2e-11 to 7e-11 on one CPU core: a pessimistic guide, not a promise
SECONDS_PER_FLOP = 1e-10


def fit_seconds(layers: list[tuple[str, Any]]) -> float:
    """A rough time for :func:`inspection.inspect_rows` on ``layers``: per layer of matrix (out, m), p = min,
    n = max, p^2 n + 9 p^3 floating-point operations at :data:`SECONDS_PER_FLOP`."""
    from rmtprune.nn.geometry import layer_matrix_shape

    total = 0.0
    for _, module in layers:
        out, m = layer_matrix_shape(module)
        p, n = min(out, m), max(out, m)
        total += p * p * n + 9 * p ** 3
    return total * SECONDS_PER_FLOP


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from rmtprune.report.inspection import cells

    t = Table(title=f"RMT view of {title}", title_justify="left")
    for col in ("layer", "shape", "gamma", "sigma2", "lambda+", "threshold", "spikes", "fit err", "good", "rank",
                "action", "params"):
        t.add_column(col, justify="left" if col in ("layer", "action") else "right")
    for r in rows:
        t.add_row(*(c.replace("**", "") for c in cells(r)))
    Console(width=None if sys.stdout.isatty() else 160).print(t)
