"""The training run: epochs of SGD, evaluation, pruning between epochs, checkpoints, resume.

``run(cfg, run_dir)`` is everything ``rmtprune train`` does for one job. The loop does not know
how pruning works: it calls ``pruner.step(model, epoch)`` after an epoch and, when the model
changed, multiplies the lr by ``pruning.lr_factor`` and rebuilds the optimizer (momentum policy:
``reset`` zeroes all momentum, as the reference does; ``keep`` keeps the momentum of every
parameter the event did not touch, new or truncated parameters start at zero).

Loss: cross-entropy + l1 sum|theta| + l2 sum theta^2 over all parameters. The penalties enter
as gradients (l1 sign(theta), and weight decay 2 l2 theta in SGD), so the reported train and
test losses are the cross-entropy alone.
"""

from __future__ import annotations

import logging
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import __version__
from .checkpoint import is_checkpoint, load_file, model_payload, rebuild_model, save_atomic
from .config import validate
from .data import Data, load_data
from .errors import RunFailed, UserError
from .evaluate import evaluate
from .magnitude import COLUMNS as MAGNITUDE_COLUMNS
from .magnitude import magnitude_sweep
from .models import build_model, count_parameters, factorised_ranks, model_spec
from .outputs import (METRICS_COLUMNS, append_spectra, config_key, find_runs, identity, read_json, write_csv,
                      write_json)
from .progress import BatchProgress, show_event
from .pruner import LEDGER_COLUMNS, Pruner, make_pruner
from .schedules import make_schedule
from .step import train_epoch  # noqa: F401  (re-exported: run() and posthoc call it from here)

log = logging.getLogger("rmtprune")


def resolve_device(name: str) -> torch.device:
    """auto -> cuda if available else cpu; cuda / cuda:N must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name}: no CUDA GPU is available here; use device=cpu or device=auto")
        idx = int(name.split(":")[1]) if ":" in name else 0
        if idx >= torch.cuda.device_count():
            raise UserError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
    return torch.device(name)


def make_optimizer(model: nn.Module, cfg: DictConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(cfg.momentum),
                           weight_decay=2.0 * float(cfg.l2))


def rebuild_optimizer(model: nn.Module, old: torch.optim.Optimizer, cfg: DictConfig, lr: float,
                      policy: str, touched: set[int]) -> torch.optim.Optimizer:
    """A fresh optimizer over the model's current parameters (see the module doc for ``policy``)."""
    new = make_optimizer(model, cfg, lr)
    if policy == "keep":
        for p in model.parameters():
            if id(p) not in touched and p in old.state:
                new.state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in old.state[p].items()}
    return new


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _versions() -> dict[str, str]:
    import hydra
    return {"rmtprune": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "hydra": hydra.__version__, "python": platform.python_version()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _previous(cfg: DictConfig, key: str, run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """Where to continue from: (folder, its summary) or (None, None) for a fresh run."""
    resume = cfg.resume
    flag = str(resume).strip().lower()
    if flag in ("false", "0", "none", "no", ""):
        if cfg.skip_done:
            for folder, summary in find_runs(Path(cfg.output_root), key):
                if summary.get("status") == "completed":
                    return folder, summary
        return None, None
    if flag in ("true", "1", "yes"):
        for folder, summary in find_runs(Path(cfg.output_root), key):
            if summary.get("status") == "completed" or (folder / "checkpoint.pt").exists():
                return folder, summary
        log.info("resume=true: no earlier run with this config under %s; starting fresh", cfg.output_root)
        return None, None
    path = Path(str(resume))
    folder = path if path.is_dir() else path.parent
    if not (folder / "checkpoint.pt").exists() and not (folder / "summary.json").exists():
        raise UserError(f"resume={resume}: no checkpoint.pt or summary.json there; give a run folder "
                        f"of rmtprune train, or resume=true")
    summary = read_json(folder / "summary.json") if (folder / "summary.json").exists() else {}
    return folder, summary


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train (and prune) one configuration, writing everything into ``run_dir``; returns the summary."""
    validate(cfg)
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output folder {run_dir} is not writable ({exc.strerror}); set hydra.run.dir "
                        f"(or hydra.sweep.dir) to a writable folder") from None
    device = resolve_device(cfg.device)
    key = config_key(cfg)
    prev_dir, prev_summary = _previous(cfg, key, run_dir)
    if (prev_dir is not None and prev_summary and prev_summary.get("status") == "completed"
            and int(prev_summary.get("epochs_completed", 0)) >= int(cfg.epochs)):
        if prev_dir.resolve() != run_dir.resolve():
            write_json(run_dir / "redirect.json", {"run_dir": str(prev_dir.resolve()), "reason": "already completed"})
        log.info("this config already finished in %s (resume/skip_done): not retrained", prev_dir)
        return prev_summary
    out_dir = prev_dir if prev_dir is not None else run_dir
    if prev_dir is not None and prev_dir.resolve() != run_dir.resolve():
        write_json(run_dir / "redirect.json", {"run_dir": str(prev_dir.resolve()), "reason": "resumed"})
        log.info("resuming the run in %s", prev_dir)

    data = load_data(cfg.dataset, device)
    spec = model_spec(cfg)
    torch.manual_seed(int(cfg.seed))
    model = build_model(spec).to(device)
    n_params_initial = count_parameters(model)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    pruner: Pruner = make_pruner(cfg.pruning, make_schedule(cfg.schedule), data.num_classes)
    lr = float(cfg.optimizer.lr)
    opt = make_optimizer(model, cfg.optimizer, lr)
    metrics: list[dict[str, Any]] = []
    ledger: list[dict[str, Any]] = []
    start = 1
    started_at = _now()
    wall_before = 0.0
    ckpt_path = out_dir / "checkpoint.pt"
    if prev_dir is not None and ckpt_path.exists():
        ckpt = load_file(ckpt_path)
        if not is_checkpoint(ckpt) or "optimizer" not in ckpt:
            raise UserError(f"{ckpt_path}: not a training checkpoint of rmtprune")
        changed = _differences(ckpt.get("config", {}), cfg) - {"epochs"}
        if ckpt.get("config_key") != key and changed:
            raise UserError(f"{ckpt_path}: made by a different config ({', '.join(sorted(changed))} differ); "
                            f"resume it with the same settings (only epochs may grow)")
        model = rebuild_model(ckpt, ckpt_path).to(device)
        opt = make_optimizer(model, cfg.optimizer, float(ckpt["lr"]))
        try:
            opt.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"{ckpt_path}: optimizer state does not match the model ({exc})") from None
        lr = float(ckpt["lr"])
        pruner.load_state_dict(ckpt.get("pruner", {}))
        _set_rng_state(ckpt["rng"], gen, device)
        metrics, ledger = list(ckpt["metrics"]), list(ckpt["ledger"])
        start = int(ckpt["epoch"]) + 1
        n_params_initial = int(ckpt.get("n_params_initial", n_params_initial))
        started_at = str(ckpt.get("started_at", started_at))
        wall_before = float(ckpt.get("wall_time_s", 0.0))

    summary: dict[str, Any] = {
        "status": "running", "config_key": key, "started_at": started_at, "run_dir": str(out_dir.resolve()),
        "seed": int(cfg.seed), "dataset": cfg.dataset.name, "model": cfg.model.name,
        "topology": cfg.topology if cfg.model.name == "mlp" else None, "pruning": cfg.pruning.name,
        "schedule": cfg.schedule.name, "device": str(device), "n_params_initial": n_params_initial,
        "versions": _versions(), "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_json(out_dir / "summary.json", _summarise(summary, metrics, wall_before))
    write_csv(out_dir / "metrics.csv", metrics, METRICS_COLUMNS)
    t_start = time.perf_counter() - wall_before
    l1 = float(cfg.optimizer.l1)
    try:
        with BatchProgress(cfg.progress) as progress:
            for epoch in range(start, int(cfg.epochs) + 1):
                t0 = time.perf_counter()
                _set_lr(opt, lr)
                train_loss, train_acc = train_epoch(model, data, opt, gen, int(cfg.batch_size), l1, progress, epoch)
                test_loss, test_acc = evaluate(model, data.test_x, data.test_y, int(cfg.eval_batch_size))
                n_params = count_parameters(model)
                lr_used = lr
                # events happen between epochs: none after the last, so the saved model is the evaluated one
                event = pruner.step(model, epoch) if pruner.is_event(epoch) and epoch < cfg.epochs else None
                if event is not None:
                    ledger.extend(event.records)
                    if event.spectra:
                        append_spectra(out_dir / "spectra.npz", epoch, event.spectra)
                    show_event(event.records, epoch, cfg.progress)
                    if event.changed:
                        lr *= pruner.lr_factor
                        opt = rebuild_optimizer(model, opt, cfg.optimizer, lr, pruner.momentum, event.touched)
                lr *= float(cfg.optimizer.lr_decay)
                row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                       "test_acc": test_acc, "n_params": n_params, "n_params_after": count_parameters(model),
                       "pruned_layers": sum(r["action"] in ("split", "truncate") for r in (event.records if event else [])),
                       "lr": lr_used, "seconds": time.perf_counter() - t0}
                metrics.append(row)
                log.info("epoch %d/%d  train_loss %.4f  train_acc %.2f%%  test_loss %.4f  test_acc %.2f%%  "
                         "params %s  lr %.4g  %.1fs", epoch, cfg.epochs, train_loss, 100 * train_acc, test_loss,
                         100 * test_acc, f"{row['n_params_after']:,}", lr_used, row["seconds"])
                write_csv(out_dir / "metrics.csv", metrics, METRICS_COLUMNS)
                if ledger:
                    write_csv(out_dir / "layers.csv", ledger, LEDGER_COLUMNS)
                wall = time.perf_counter() - t_start
                if cfg.checkpoint:
                    ckpt = model_payload(model, spec, data.num_classes, list(data.input_shape))
                    ckpt.update(epoch=epoch, optimizer=opt.state_dict(), lr=lr, rng=_rng_state(gen, device),
                                pruner=pruner.state_dict(), metrics=metrics, ledger=ledger, config_key=key,
                                config=OmegaConf.to_container(cfg, resolve=True), n_params_initial=n_params_initial,
                                started_at=started_at, wall_time_s=wall)
                    save_atomic(ckpt, ckpt_path)
                write_json(out_dir / "summary.json", _summarise(summary, metrics, wall))
    except RunFailed as exc:
        summary.update(status="failed", error=str(exc))
        write_json(out_dir / "summary.json", _summarise(summary, metrics, time.perf_counter() - t_start))
        raise
    except KeyboardInterrupt:
        summary.update(status="interrupted", error="interrupted (Ctrl-C); continue with resume=true")
        write_json(out_dir / "summary.json", _summarise(summary, metrics, time.perf_counter() - t_start))
        raise

    final_model = model_payload(model, spec, data.num_classes, list(data.input_shape))
    final_model["pruner"] = pruner.state_dict()  # truncated layers' ranks, so inspect can censor their zeros
    save_atomic(final_model, out_dir / "model.pt")
    if cfg.magnitude_sweep.enabled:
        rows = magnitude_sweep(model, data.test_x, data.test_y, int(cfg.magnitude_sweep.n_thresholds),
                               int(cfg.eval_batch_size))
        write_csv(out_dir / "magnitude_sweep.csv", rows, MAGNITUDE_COLUMNS)
    summary.update(status="completed", finished_at=_now(), ranks=factorised_ranks(model))
    final = _summarise(summary, metrics, time.perf_counter() - t_start)
    write_json(out_dir / "summary.json", final)
    (out_dir / "DONE").write_text(final["finished_at"] + "\n")
    log.info("done: test_acc %.2f%% (best %.2f%%), params %s -> %s, results in %s", 100 * final["final_test_acc"],
             100 * final["best_test_acc"], f"{final['n_params_initial']:,}", f"{final['n_params_final']:,}", out_dir)
    return final


def _differences(old: dict[str, Any], cfg: DictConfig) -> set[str]:
    """Top-level keys whose values differ between a checkpoint's config and ``cfg``, counting only
    what determines results (outputs.identity: not device, progress, resume and the like)."""
    before, now = identity(OmegaConf.create(old)), identity(cfg)
    return {k for k in set(before) | set(now) if before.get(k) != now.get(k)}


def _summarise(summary: dict[str, Any], metrics: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    out = dict(summary)
    out["epochs_completed"] = len(metrics)
    out["wall_time_s"] = round(wall, 3)
    if metrics:
        last = metrics[-1]
        best = max(metrics, key=lambda r: r["test_acc"])
        out.update(final_test_acc=last["test_acc"], final_train_acc=last["train_acc"],
                   final_test_loss=last["test_loss"], best_test_acc=best["test_acc"], best_epoch=best["epoch"],
                   n_params_final=last["n_params_after"],
                   param_reduction_pct=100.0 * (1 - last["n_params_after"] / out["n_params_initial"]))
    out["accuracy_unit"] = "fraction"
    # keep the config last: the results are what a reader looks for first
    out["config"] = out.pop("config")
    return out
