"""The ``rmtprune`` command: ``train`` and ``prune`` go through Hydra, ``compare`` and ``inspect``
through argparse. User mistakes become one line on stderr and a non-zero exit (2 for bad input,
1 for a run that failed while running, 130 for Ctrl-C)."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import os
import tempfile

from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import RunFailed, UserError

log = logging.getLogger("rmtprune")

USAGE = """usage: rmtprune COMMAND [ARGS...]

Random-matrix-theory pruning of neural networks, one experiment per command.

commands:
  train     train (and prune) a network; Hydra overrides, -m for sweeps   (rmtprune train --help)
  compare   tables, tests and figures from run or sweep folders            (rmtprune compare --help)
  inspect   the MP fit of every layer of a saved model                     (rmtprune inspect --help)
  prune     one pruning event on a saved model, then evaluate / fine-tune  (rmtprune prune --help)

examples:
  rmtprune train topology=784-1000-1000-500-10 pruning=rmt schedule.horizon=10
  rmtprune train -m seed=0,1,2,3,4 pruning=none,rmt
  rmtprune compare outputs/multirun/2026-11-28/10-00-00
"""

HYDRA_FLAGS_WITHOUT_RUN = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "--shell-completion", "--version"}
_FAILURES: list[str] = []


def _err(msg: str) -> None:
    print(f"rmtprune: error: {msg}", file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _explain_compose_error(exc: BaseException) -> str:
    """One line from a Hydra / OmegaConf composition error, with a did-you-mean for unknown keys."""
    from omegaconf.errors import OmegaConfBaseException

    parts = [_first_line(exc)]
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(parts) < 3:
        line = _first_line(cause)
        if line not in parts:
            parts.append(line)
        cause = cause.__cause__
    text = str(exc)
    if "Available options in" in text:
        opts = []
        for ln in text.splitlines()[1:]:
            if ln.startswith("Config search path"):
                break
            if ln.strip() and not ln.startswith("Available"):
                opts.append(ln.strip())
        parts.append("available: " + ", ".join(opts))
    key = getattr(exc, "full_key", None)
    for c in (exc, exc.__cause__):
        if isinstance(c, OmegaConfBaseException) and getattr(c, "full_key", None):
            key = c.full_key
    if key:
        parts.append(f"key: {key}")
        suggestion = _did_you_mean(str(key))
        if suggestion:
            parts.append(f"did you mean {suggestion}?")
    return "; ".join(p.rstrip(".") for p in parts)


def _did_you_mean(key: str) -> str | None:
    import dataclasses

    from .config import RunConfig

    known: list[str] = []

    def walk(cls: Any, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            known.append(prefix + f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")

    walk(RunConfig, "")
    match = difflib.get_close_matches(key, known, n=1)
    return match[0] if match and match[0] != key else None


def _expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Override lists to check: every sweep value once, the others at their first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base, choices = [], []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            values = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            values = [o.input_line]
        base.append(values[0])
        choices.append(values)
    combos = [base]
    for i, values in enumerate(choices):
        for v in values[1:]:
            combos.append(base[:i] + [v] + base[i + 1 :])
    return combos


def precheck(config_name: str, args: list[str]) -> None:
    """Compose and validate the config before Hydra starts any job, so a typo in a 20-job sweep
    fails at once with one line, not after the first job or with a traceback."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config import validate

    overrides = [a for a in args if not a.startswith("-")]
    if any(a in ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp") or
           a.startswith(("--config-dir=", "--config-name=", "--config-path=")) for a in args):
        return  # a user config tree: Hydra composes it itself; the task still validates
    try:
        combos = _expand_sweeps(overrides)
    except HydraException as exc:
        raise UserError(f"cannot parse the overrides: {_first_line(exc)}") from None
    multirun = "-m" in args or "--multirun" in args
    with initialize_config_module("rmtprune.conf", version_base="1.3"):
        for combo in combos:
            try:
                cfg = compose(config_name=config_name, overrides=combo, return_hydra_config=True)
            except (HydraException, OmegaConfBaseException, ValueError) as exc:
                raise UserError(_explain_compose_error(exc)) from None
            _check_output_dir(cfg, multirun)
            with open_dict(cfg):
                del cfg["hydra"]
            if config_name == "prune" and not Path(str(cfg.model_path)).exists():
                raise UserError(f"{cfg.model_path}: no such file or folder")
            validate(cfg)


def _check_output_dir(cfg: DictConfig, multirun: bool) -> None:
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        folder = Path(str(OmegaConf.select(cfg, key)))
    except Exception:  # an interpolation only Hydra's runtime can resolve: Hydra checks it itself
        return
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise OSError
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".rmtprune-probe-"))
    except OSError:
        raise UserError(f"{key}={folder}: cannot create the output folder there ({existing} is not a "
                        f"writable folder); choose another with {key}=PATH") from None


def _run_hydra(task: Callable[[DictConfig], Any], config_name: str, args: list[str], prog: str) -> int:
    import hydra

    from .config import register_configs

    register_configs()
    if not any(a in HYDRA_FLAGS_WITHOUT_RUN or a.startswith("--cfg") for a in args):
        precheck(config_name, args)
    _FAILURES.clear()
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        hydra.main(config_path="pkg://rmtprune.conf", config_name=config_name, version_base="1.3")(task)()
    finally:
        sys.argv = saved
    if _FAILURES:
        if len(_FAILURES) > 1:
            _err(f"{len(_FAILURES)} runs failed (see the lines above and summary.json in each folder)")
        return 1 if all(f == "run" for f in _FAILURES) else 2
    return 0


def _job(body: Callable[[DictConfig, Path], Any]) -> Callable[[DictConfig], None]:
    """Wrap a Hydra task: errors become one line, are remembered for the exit code, and never
    stop the other jobs of a sweep."""

    def task(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        try:
            _place_job(cfg, hc)
            body(cfg, run_dir)
        except UserError as exc:
            _err(str(exc))
            log.debug("user error in %s: %s", run_dir, exc)
            _FAILURES.append("user")
        except RunFailed as exc:
            _err(f"{exc} (metrics so far are in {run_dir})")
            _FAILURES.append("run")

    return task


def threads_per_job(launcher: Any, cpu_count: int) -> int | None:
    """Torch threads for one job of a sweep: cores / parallel jobs under joblib (n_jobs < 0 means
    one job per core), ``cpus_per_task`` under submitit, None (torch's default) otherwise."""
    target = str(launcher.get("_target_", ""))
    if "Joblib" in target:
        n_jobs = int(launcher.get("n_jobs", 1) or 1)
        n_jobs = cpu_count if n_jobs < 0 else n_jobs
        return max(1, cpu_count // n_jobs)
    if "Submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.get("cpus_per_task"))
    return None


def _place_job(cfg: DictConfig, hc: Any) -> None:
    """Threads and GPU of one job: ``threads`` if set, else cores / parallel jobs of the launcher;
    ``device=auto`` on a multi-GPU machine puts job k of a sweep on GPU k mod count."""
    import torch

    threads = cfg.get("threads")
    if threads is None:
        threads = threads_per_job(hc.launcher, os.cpu_count() or 1)
    if threads:
        torch.set_num_threads(int(threads))
    if cfg.device == "auto" and torch.cuda.device_count() > 1:
        num = hc.job.get("num")
        if num is not None:
            with open_dict(cfg):
                cfg.device = f"cuda:{int(num) % torch.cuda.device_count()}"


def _train(cfg: DictConfig, run_dir: Path) -> None:
    from .train import run

    run(cfg, run_dir)


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as one ``rmtprune: error:`` line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _err(f"{self.prog.replace('rmtprune ', '')}: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def _formats(text: str, allowed: tuple[str, ...]) -> list[str]:
    items = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in items if f not in allowed]
    if bad or not items:
        raise UserError(f"--format {text!r}: accepted values are {', '.join(allowed)} (comma-separated)")
    return items


def _compare(argv: list[str]) -> int:
    ap = _Parser(prog="rmtprune compare", description="Tables, statistical tests and figures comparing normal "
                 "and pruned training across seeds, from run or sweep folders.")
    ap.add_argument("paths", nargs="+", type=Path, help="run folders, sweep folders, or folders above them")
    ap.add_argument("--by", default=None, help="comma-separated config keys to group by (default: every key that "
                    "differs between runs except the seed and the pruning settings)")
    ap.add_argument("--metric", default="test_acc", choices=["test_acc", "train_acc", "test_loss", "train_loss"])
    ap.add_argument("--format", default="csv,md", help="files to write: csv (comparison.csv, curves.csv), md "
                    "(comparison.md); default csv,md")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the single PATH given, else "
                    "./comparison)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    ap.add_argument("--finetune", action="store_true", help="also fine-tune the magnitude-pruned normal models "
                    "(as many epochs as the pruned arm trained after its last event; needs model.pt or a cached value)")
    args = ap.parse_args(argv)
    from .compare import compare, print_table, write_outputs

    formats = _formats(args.format, ("csv", "md"))
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise UserError(f"no such folder: {', '.join(missing)}")
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    cmp = compare(args.paths, by=by, metric=args.metric, finetune=args.finetune)
    cmp.command = "rmtprune compare " + " ".join(argv)
    if cmp.table.empty:
        for p in cmp.problems:
            _err(f"{p['folder']}: {p['reason']}")
        raise UserError(f"no finished runs under {', '.join(map(str, args.paths))}")
    out = args.out or (args.paths[0] if len(args.paths) == 1 and args.paths[0].is_dir() else Path("comparison"))
    written = write_outputs(cmp, out, formats, plots=not args.no_plots)
    print_table(cmp)
    print(f"wrote {len(written)} files to {out}")
    return 0


def _pruning_defaults() -> DictConfig:
    """conf/pruning/rmt.yaml over its schema: the defaults of inspect's options."""
    from importlib.resources import files

    from .config import PruningConfig

    text = (files("rmtprune.conf") / "pruning" / "rmt.yaml").read_text(encoding="utf-8")
    return OmegaConf.merge(OmegaConf.structured(PruningConfig), OmegaConf.create(text))


def _inspect(argv: list[str]) -> int:
    d = _pruning_defaults()
    ap = _Parser(prog="rmtprune inspect", description="The MP fit of every Linear / Conv2d layer of a saved model "
                 "(a run folder, an rmtprune checkpoint, or a plain state_dict) and what one-shot pruning would keep.")
    ap.add_argument("path", type=Path, help="run folder, model.pt / checkpoint.pt, or a state_dict file")
    ap.add_argument("--tolerance", type=float, default=d.tolerance, help=f"MP fit tolerance (default {d.tolerance})")
    ap.add_argument("--conv-tolerance", type=float, default=d.conv_tolerance, help="tolerance for conv layers "
                    "(default: --tolerance)")
    ap.add_argument("--alpha", type=float, default=d.alpha, help=f"BEMA trimming (default {d.alpha})")
    ap.add_argument("--beta", type=float, default=d.beta, help=f"Tracy-Widom confidence (default {d.beta})")
    ap.add_argument("--min-size", type=int, default=d.min_size, help=f"smallest layer fitted, in weights "
                    f"(default {d.min_size})")
    ap.add_argument("--keep-fraction", type=float, default=0.0, help="share of sub-edge singular values a prune "
                    "would keep (default 0: one-shot, spikes only)")
    ap.add_argument("--plots", action="store_true", help="one ESD figure per layer")
    ap.add_argument("--format", default="csv,md", help="files to write: csv (inspect.csv), md (inspect.md)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the model's folder)")
    args = ap.parse_args(argv)
    from .inspection import COLUMNS, inspect_model, markdown
    from .loading import load_model, resolve_model_file
    from .outputs import write_csv

    formats = _formats(args.format, ("csv", "md"))
    for name, value, lo, hi in (("--tolerance", args.tolerance, 0, 1), ("--alpha", args.alpha, 0, 0.5),
                                ("--beta", args.beta, 0, 1), ("--keep-fraction", args.keep_fraction, 0, 1)):
        if not lo <= value <= hi or (name in ("--alpha", "--beta") and value in (lo, hi)):
            raise UserError(f"{name}={value} is out of range [{lo}, {hi}]")
    path = resolve_model_file(args.path)
    model, info = load_model(path)
    cfg = OmegaConf.merge(d, {"tolerance": args.tolerance, "conv_tolerance": args.conv_tolerance, "alpha": args.alpha,
                              "beta": args.beta, "min_size": args.min_size})
    pruner_state = info["raw"].get("pruner") if info["kind"] == "rmtprune" else None
    rows, spectra = inspect_model(model, cfg, args.keep_fraction, pruner_state)
    out = args.out or path.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        if "csv" in formats:
            write_csv(out / "inspect.csv", rows, COLUMNS)
        if "md" in formats:
            (out / "inspect.md").write_text(markdown(rows, f"RMT view of {path}"), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write to {out} ({exc.strerror}); choose another folder with --out") from None
    if args.plots:
        from .plots import inspect_figures

        inspect_figures(rows, spectra, out)
    _print_inspect(rows, str(path))
    print(f"wrote inspect files to {out}")
    return 0


def _print_inspect(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from .inspection import cells

    t = Table(title=f"RMT view of {title}", title_justify="left")
    for col in ("layer", "shape", "gamma", "sigma2", "lambda+", "threshold", "spikes", "fit err", "good", "rank",
                "action", "params"):
        t.add_column(col, justify="left" if col in ("layer", "action") else "right")
    for r in rows:
        t.add_row(*(c.replace("**", "") for c in cells(r)))
    Console(width=None if sys.stdout.isatty() else 160).print(t)


def _prune(cfg: DictConfig, run_dir: Path) -> None:
    from .posthoc import prune_saved

    prune_saved(cfg, run_dir)


def _prune_args(rest: list[str]) -> list[str]:
    """``rmtprune prune PATH k=v ...``: the first argument that is no override names the model."""
    out, named = [], False
    for a in rest:
        if not named and "=" not in a and not a.startswith("-"):
            out.append("model_path=" + ("'" + a.replace("'", "\\'") + "'" if any(c in a for c in " ,[]{}()=:'\"") else a))
            named = True
        else:
            out.append(a)
    if not named and not any(a.startswith("model_path=") for a in rest) and not set(rest) & HYDRA_FLAGS_WITHOUT_RUN:
        raise UserError("rmtprune prune MODEL [key=value ...]: name a run folder, model.pt or state_dict file")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rmtprune`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"rmtprune {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            return _run_hydra(_job(_train), "config", rest, "rmtprune train")
        if command == "compare":
            return _compare(rest)
        if command == "inspect":
            return _inspect(rest)
        if command == "prune":
            return _run_hydra(_job(_prune), "prune", _prune_args(rest), "rmtprune prune")
        _err(f"unknown command {command!r}; commands: train, compare, inspect, prune (rmtprune --help)")
        return 2
    except UserError as exc:
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        _err("interrupted; what finished is saved (continue a run with resume=true)")
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
