"""The training run: epochs of SGD, evaluation, pruning events between epochs, checkpoints, resume.

``run(cfg, run_dir)`` is everything ``rmtprune train`` does for one job: the config is validated and turned into
objects once (:func:`prepare`, a :class:`rmtprune.config.build.Job`), and the loop (:func:`run_job`) sees only
those objects. The loop does not know how
pruning works: at every event epoch of the pruner's calendar (never after the last epoch) it calls
``pruner.step(model, epoch)``, recomputes the BatchNorm statistics of a changed model on
``pruning.recalibrate_bn`` training batches (none without BatchNorm), evaluates the model right after the
event (``test_acc_after_event``: the Pruning Theorem's prediction, measured), multiplies the lr by
``pruning.lr_factor`` and rebuilds the optimizer with the momentum policy (``reset``: all momentum zeroed, as the reference does;
``keep``: parameters the event did not touch keep theirs). This happens at every event epoch whether
or not the event changed the model, so ``pruning=control`` (the same calendar, no pruning) has exactly
the lr calendar of the pruned arm. ``optimizer.lr_decay`` multiplies the lr after every epoch, and
``optimizer.anneal`` (cosine | linear) the lr of every step of the last ``optimizer.anneal_epochs`` epochs
(events.anneal_scale): the same calendar in every arm, ending near 0.

With a validation split (``dataset.val_size``) every epoch is also evaluated on it (``val_loss``,
``val_acc``), and the summary's best epoch is chosen on validation, never on test.

Loss: cross-entropy + l1 sum|theta| + l2 sum theta^2 over all parameters. The penalties enter as
gradients (l1 sign(theta), and weight decay 2 l2 theta in SGD), so the reported train and test losses
are the cross-entropy alone.

A run folder belongs to one run: it is locked while the run writes to it, and a folder holding another
run is refused. Ctrl-C and SIGTERM record ``interrupted`` in summary.json; an unexpected error records
``failed``; either way continue with ``resume=true``.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from rmtprune.config.build import Job, RunSettings, data_settings, make_job, model_spec
from rmtprune.config.identity import identity_differences
from rmtprune.config.validate import model_warnings, validate
from rmtprune.data import Data, load_data
from rmtprune.errors import RunFailed, UserError
from rmtprune.files import read_json
from rmtprune.nn.costs import model_costs
from rmtprune.nn.evaluate import evaluate
from rmtprune.nn.geometry import count_parameters
from rmtprune.nn.models import factorised_ranks
from rmtprune.prune.base import Pruner
from rmtprune.prune.batchnorm import recalibrate_bn
from rmtprune.prune.calendar import anneal_scale
from rmtprune.prune.events import PRUNING_ACTIONS, PruneEvent, rebuild_optimizer
from rmtprune.prune.magnitude import MagnitudePruner
from rmtprune.runs.folder import RunFolder, find_runs, summarise
from rmtprune.runs.targets import resolve_target
from rmtprune.train.checkpoint import load_file, save_atomic
from rmtprune.train.environment import machine, versions
from rmtprune.train.loggers import Logger, open_logger
from rmtprune.train.progress import BatchProgress, show_event
from rmtprune.train.resources import skeleton
from rmtprune.train.signals import Terminated, interruptible
from rmtprune.train.state import TrainingState, make_optimizer  # noqa: F401  (make_optimizer: the loop's optimizer)
from rmtprune.train.step import autocast_for, configure_numerics, train_epoch
from rmtprune.train.sweep import magnitude_sweep, sparsity_grid

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _same_config_or_refuse(old_config: Any, cfg: DictConfig, where: Path, what: str) -> None:
    """Refuse to continue ``where`` with a config that computes something else (only epochs may grow)."""
    changed = [k for k in identity_differences(old_config if isinstance(old_config, dict) else {}, cfg)
               if k != "epochs"]
    if changed:
        shown = ", ".join(changed[:6]) + (", ..." if len(changed) > 6 else "")
        raise UserError(f"{where}: {what} a different config ({shown} differ); resume it with the same settings "
                        f"(only epochs may grow), or start a new run without resume=")


def _previous(cfg: DictConfig, key: str, run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """Where to continue from: (folder, its summary) or (None, None) for a fresh run.

    The run folder itself comes first: a finished run of this config there is never trained again
    (whatever ``resume``), and ``resume=true`` continues an unfinished one there. ``resume=true`` then
    takes the newest run of this config under ``output_root`` that finished or has a checkpoint, else the
    newest one stopped before its first checkpoint (it starts again in its own folder).
    """
    flag = str(cfg.resume).strip().lower()
    own = RunFolder(run_dir).own_run(key)
    if own is not None and (own.get("status") == "completed" or flag in ("true", "1", "yes")):
        return run_dir, own
    if flag in ("false", "0", "none", "no", ""):
        if cfg.skip_done:
            for folder, summary in find_runs(Path(cfg.output_root), key):
                if summary.get("status") == "completed":
                    return folder, summary
        return None, None
    if flag in ("true", "1", "yes"):
        found = find_runs(Path(cfg.output_root), key)
        for folder, summary in found:
            if summary.get("status") == "completed" or RunFolder(folder).checkpoint_pt.exists():
                return folder, summary
        if found:
            return found[0]
        log.info("resume=true: no earlier run with this config under %s; starting fresh", cfg.output_root)
        return None, None
    path = Path(str(cfg.resume))
    folder = path if path.is_dir() else path.parent
    files = RunFolder(folder)
    if not files.checkpoint_pt.exists() and not files.summary_json.exists():
        raise UserError(f"resume={cfg.resume}: no checkpoint.pt or summary.json there; give a run folder "
                        f"of rmtprune train, or resume=true")
    summary: dict[str, Any] = {}
    if files.summary_json.exists():
        try:
            summary = read_json(files.summary_json)
        except (OSError, ValueError):
            raise UserError(f"resume={cfg.resume}: its summary.json is unreadable") from None
        if not isinstance(summary, dict):
            raise UserError(f"resume={cfg.resume}: its summary.json is not a run summary")
        if "config" in summary:
            _same_config_or_refuse(summary["config"], cfg, folder, "it was made by")
    return folder, summary


def prepare(cfg: DictConfig) -> tuple[Job, torch.nn.Module | None]:
    """A composed config validated, its ``pruning.target_from`` resolved (``cfg`` is modified: see
    :func:`rmtprune.runs.targets.resolve_target`) and turned into a :class:`~rmtprune.config.build.Job`: the one
    time a run reads its config. Also its built-in network on the meta device (shapes only, no random numbers
    drawn; None for ``model=custom``), built once for the checks of the target and of the memory it needs."""

    validate(cfg)
    model = skeleton(model_spec(cfg), data_settings(cfg.dataset))
    resolve_target(cfg, model)
    return make_job(cfg), model


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train (and prune) one configuration, writing everything into ``run_dir``; returns the summary."""
    return run_job(prepare(cfg)[0], run_dir)


def run_job(job: Job, run_dir: Path) -> dict[str, Any]:
    """Train (and prune) the run ``job`` (:func:`prepare`), writing everything into ``run_dir``; returns the
    summary."""
    cfg, key, settings = job.cfg, job.key, job.run
    run_dir = Path(run_dir)
    RunFolder(run_dir).check_writable("set hydra.run.dir (or hydra.sweep.dir) to a writable folder")
    device = resolve_device(settings.device)
    prev_dir, prev_summary = _previous(cfg, key, run_dir)
    if (prev_dir is not None and prev_summary and prev_summary.get("status") == "completed"
            and int(prev_summary.get("epochs_completed", 0)) >= settings.epochs):
        if prev_dir.resolve() != run_dir.resolve():
            RunFolder(run_dir).write_redirect(prev_dir, "already completed")
        log.info("this config already finished in %s: not retrained (train it again in another folder: "
                 "hydra.run.dir=...)", prev_dir)
        return prev_summary
    if (prev_dir is not None and prev_summary and prev_summary.get("status") == "completed"
            and not RunFolder(prev_dir).checkpoint_pt.exists()):
        raise UserError(f"resume: {prev_dir} holds a finished run of {prev_summary.get('epochs_completed')} epochs "
                        f"without checkpoint.pt (checkpoint=false), so it cannot be continued to epochs={settings.epochs}; "
                        f"train the longer run in another folder (hydra.run.dir=...)")
    out_dir = prev_dir if prev_dir is not None else run_dir
    out = RunFolder(out_dir)
    if out_dir != run_dir:
        out.check_writable("make it writable to continue that run there, or run without resume=")
    with out.lock():
        if prev_dir is None:  # a run resumed there has had its config compared (_previous)
            out.claim(key)
        if prev_dir is not None and prev_dir.resolve() != run_dir.resolve():
            RunFolder(run_dir).write_redirect(prev_dir, "resumed")
            log.info("resuming the run in %s", prev_dir)
        with interruptible():
            return _train(job, out_dir, device, resuming=prev_dir is not None)


def run_record(cfg: DictConfig, key: str, out_dir: Path, device: torch.device, numerics: Any, n_params_initial: int,
               started_at: str, warnings: list[str], status: str = "running") -> dict[str, Any]:
    """The head of a run's summary.json, the same for ``rmtprune train`` and ``rmtprune prune``: status, warnings,
    config key, start, folder, seed, data set, network, pruning, schedule, machine, numerics, initial count,
    versions and the resolved config; :func:`rmtprune.runs.folder.summarise` adds the results."""
    return {
        "status": status, "warnings": warnings, "config_key": key, "started_at": started_at,
        "run_dir": str(Path(out_dir).resolve()), "seed": int(cfg.seed), "dataset": cfg.dataset.name,
        "model": cfg.model.name, "topology": cfg.topology if cfg.model.name == "mlp" else None,
        "pruning": cfg.pruning.name, "schedule": cfg.schedule.name, **machine(device), "numerics": numerics,
        "n_params_initial": n_params_initial, "versions": versions(), "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _unless_damaged(read: Callable[[], Any], out_dir: Path) -> Any:
    """``read()`` of a run's checkpoint; a damaged one (UserError) also says how to get past it."""
    try:
        return read()
    except UserError as exc:
        raise UserError(f"{exc}; the run in {out_dir} cannot be continued from it: move that folder aside "
                        f"(resume=true then takes an older unfinished run or starts afresh), or run without "
                        f"resume=") from None


def _train(job: Job, out_dir: Path, device: torch.device, resuming: bool) -> dict[str, Any]:

    cfg, key, settings, config = job.cfg, job.key, job.run, job.config
    numerics = configure_numerics(settings, device)
    data = load_data(job.data, device)
    pruner: Pruner = job.make_pruner(list(data.input_shape))
    out = RunFolder(out_dir)
    ckpt_path = out.checkpoint_pt
    old_epochs = None
    if not ckpt_path.exists():
        out.remove_partial()
    if resuming and ckpt_path.exists():
        old_config = _unless_damaged(lambda: _checkpoint_config(ckpt_path), out_dir)
        _same_config_or_refuse(old_config, cfg, ckpt_path, "it was made by")
        state = _unless_damaged(lambda: TrainingState.restore(ckpt_path, settings, job.spec, device, pruner), out_dir)
        old_epochs = int(old_config.get("epochs", state.epoch))
        from rmtprune.prune.budget import TargetPruner

        if isinstance(pruner, TargetPruner) and old_epochs != settings.epochs:
            raise UserError(f"epochs={settings.epochs}: a pruning={cfg.pruning.name} run of {old_epochs} epochs cannot "
                            f"be continued with another length: its schedule is spread over the events of its own")
        if settings.optimizer.anneal != "none" and old_epochs != settings.epochs:
            raise UserError(f"epochs={settings.epochs}: a run with optimizer.anneal={settings.optimizer.anneal} cannot "
                            f"be continued with another length than its {old_epochs} epochs: its anneal ends with its last epoch")
        out.clear_done()  # a finished run continued to more epochs is running again
    else:
        state = TrainingState.fresh(settings, job.spec, data.num_classes, list(data.input_shape), device, pruner,
                                    _now())
    warnings = model_warnings(state.model, cfg)
    damaged = out.repair_spectra()
    if damaged:
        warnings.append(damaged)
    for warning in warnings:
        log.warning(warning)
    if state.epoch:  # a continued run keeps what earlier sessions warned about (a repair among them)
        earlier = (out.own_run(key) or {}).get("warnings")
        warnings[:0] = [w for w in earlier if w not in warnings] if isinstance(earlier, list) else []
    summary = run_record(cfg, key, out_dir, device, numerics, state.n_params_initial, state.started_at, warnings)
    out.write_summary(summarise(summary, state.metrics, state.wall_time_s))
    out.write_metrics(state.metrics)
    t_start = time.perf_counter() - state.wall_time_s
    logger = open_logger(cfg, out_dir)
    ended = "failed"  # what the logger records if the loop does not finish
    try:
        if old_epochs is not None and old_epochs < settings.epochs and state.epoch == old_epochs:
            _grow(settings, state, data, old_epochs, out_dir, logger)
        with BatchProgress(settings.progress) as progress:
            for epoch in range(state.epoch + 1, settings.epochs + 1):
                _epoch(settings, state, data, epoch, out_dir, progress, logger)
                state.epoch = epoch
                state.wall_time_s = time.perf_counter() - t_start
                if settings.checkpoint:
                    state.save(out.checkpoint_pt, config, key, device)
                out.write_summary(summarise(summary, state.metrics, state.wall_time_s))
        ended = "completed"
    except RunFailed as exc:
        _record_end(out_dir, summary, state, t_start, "failed", str(exc))
        raise
    except Terminated:
        ended = "interrupted"
        _record_end(out_dir, summary, state, t_start, "interrupted", "terminated (SIGTERM); continue with resume=true")
        raise
    except KeyboardInterrupt:
        ended = "interrupted"
        _record_end(out_dir, summary, state, t_start, "interrupted", "interrupted (Ctrl-C); continue with resume=true")
        raise
    except UserError:
        raise
    except Exception as exc:  # a device error, out of memory, a bug: the run failed, say so in the summary
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        message = f"{type(exc).__name__}: {first}"
        _record_end(out_dir, summary, state, t_start, "failed", message)
        raise RunFailed(f"the run failed at epoch {state.epoch + 1}: {message}") from exc
    finally:
        logger.close(ended)

    state.pruner.finalize(state.model)
    save_atomic_model(state, out.model_pt)
    if settings.magnitude_sweep:
        levels = len(sparsity_grid(settings.magnitude_thresholds))
        log.info("magnitude sweep after training: %d sparsity levels, each a pass over the %s test images "
                 "(magnitude_sweep.enabled=false skips it)", levels, f"{len(data.test_y):,}")
        rows = magnitude_sweep(state.model, data.test_x, data.test_y, settings.magnitude_thresholds,
                               settings.eval_batch_size, report=_sweep_progress)
        out.write_magnitude(rows)
    summary.update(status="completed", finished_at=_now(), ranks=factorised_ranks(state.model),
                   **final_costs(settings, state))
    final = summarise(summary, state.metrics, time.perf_counter() - t_start)
    out.write_summary(final)
    out.mark_done(final["finished_at"])
    log.info("done: test_acc %.2f%% (best epoch %d on %s: test_acc %.2f%%)%s, params %s -> %s, results in %s",
             100 * final["final_test_acc"], final["best_epoch"], final["best_on"], 100 * final["best_test_acc"],
             f", val_acc {100 * final['final_val_acc']:.2f}%" if "final_val_acc" in final else "",
             f"{final['n_params_initial']:,}", f"{final['n_params_final']:,}", out_dir)
    return final


def _sweep_progress(done: int, total: int, seconds: float) -> None:
    """The magnitude sweep's time left, said once after its first level (and its end)."""
    if done == 1 and total > 1:
        log.info("magnitude sweep: level 1 of %d took %.1f s, about %.0f s left", total, seconds, seconds * (total - 1))
    elif done == total:
        log.info("magnitude sweep: %d levels in %.1f s", total, seconds)


def final_costs(settings: RunSettings, state: TrainingState) -> dict[str, Any]:
    """The final model's cost fields (:func:`rmtprune.nn.costs.model_costs`); a magnitude run's pruned layers
    also as CSR. Latency only with ``cost.latency``."""

    sparse = ([name for name, _, _ in state.pruner.eligible(state.model)]
              if isinstance(state.pruner, MagnitudePruner) else None)
    return model_costs(state.model, state.spec, state.input_shape, sparse_layers=sparse,
                       latency=settings.latency)


def save_atomic_model(state: TrainingState, path: Path) -> None:

    save_atomic(state.model_payload(), path)


def _checkpoint_config(path: Path) -> dict[str, Any]:

    config = load_file(path).get("config", {})
    return config if isinstance(config, dict) else {}


def _epoch(settings: RunSettings, state: TrainingState, data: Data, epoch: int, out_dir: Path,
           progress: BatchProgress, logger: Logger) -> None:
    """Train one epoch, evaluate, and (at an event epoch before the last) prune, evaluate again, apply
    the lr factor and rebuild the optimizer; append the epoch's row to metrics.csv."""
    t0 = time.perf_counter()
    for group in state.optimizer.param_groups:
        group["lr"] = state.lr
    opt = settings.optimizer
    lr_scale = anneal_scale(opt.anneal, opt.anneal_epochs, settings.epochs, epoch,
                            math.ceil(len(data.train_x) / settings.batch_size))
    train_loss, train_acc = train_epoch(state.model, data, state.optimizer, state.gen, settings.batch_size,
                                        opt.l1, progress, epoch, precision=settings.precision,
                                        compile=settings.compile, lr_scale=lr_scale)
    test_loss, test_acc = evaluate(state.model, data.test_x, data.test_y, settings.eval_batch_size)
    val_loss = val_acc = math.nan
    if data.val_x is not None:
        val_loss, val_acc = evaluate(state.model, data.val_x, data.val_y, settings.eval_batch_size)
    n_params = count_parameters(state.model)
    lr_used = state.lr * (lr_scale(0) if lr_scale else 1.0)  # the lr of the epoch's first step
    after_loss = after_acc = math.nan
    event = None
    if state.pruner.is_event(epoch) and epoch < settings.epochs:
        event, after_loss, after_acc = _event(settings, state, data, epoch, out_dir, logger, test_loss, test_acc)
    state.lr *= opt.lr_decay
    row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
           "test_acc": test_acc, "n_params": n_params, "n_params_after": count_parameters(state.model),
           "pruned_layers": sum(r["action"] in PRUNING_ACTIONS for r in (event.records if event else [])),
           "lr": lr_used, "test_loss_after_event": after_loss, "test_acc_after_event": after_acc,
           "seconds": time.perf_counter() - t0, "val_loss": val_loss, "val_acc": val_acc}
    state.metrics.append(row)
    logger.log_epoch(row)
    log.info("epoch %d/%d  train_loss %.4f  train_acc %.2f%%  %stest_loss %.4f  test_acc %.2f%%%s  params %s  lr %.4g  "
             "%.1fs", epoch, settings.epochs, train_loss, 100 * train_acc,
             "" if val_acc != val_acc else f"val_acc {100 * val_acc:.2f}%  ", test_loss, 100 * test_acc,
             f" (after event {100 * after_acc:.2f}%)" if event is not None and event.changed else "",
             f"{row['n_params_after']:,}", lr_used, row["seconds"])
    out = RunFolder(out_dir)
    out.write_metrics(state.metrics)
    if state.ledger:
        out.write_ledger(state.ledger)


def _event(settings: RunSettings, state: TrainingState, data: Data, epoch: int, out_dir: Path, logger: Logger,
           test_loss: float, test_acc: float) -> tuple[PruneEvent, float, float]:
    """The event after ``epoch``: prune, record, evaluate right after, lr x lr_factor, rebuild the optimizer.
    Returns the event and the test loss and accuracy right after it."""
    event = state.pruner.step(state.model, epoch)
    state.ledger.extend(event.records)
    if event.spectra:
        RunFolder(out_dir).append_spectra(epoch, event.spectra)
    if event.changed:
        recalibrate_after_event(settings, state.model, data, epoch, event, state.pruner.recalibrate_bn)
    show_event(event.records, epoch, settings.progress)
    logger.log_event(epoch, event.records, event.spectra)
    if event.changed:
        after_loss, after_acc = evaluate(state.model, data.test_x, data.test_y, settings.eval_batch_size)
    else:  # nothing changed: the model evaluated after the event is the one evaluated before it
        after_loss, after_acc = test_loss, test_acc
    state.lr *= state.pruner.lr_factor
    state.optimizer = rebuild_optimizer(state.optimizer, state.model, event, momentum=state.pruner.momentum,
                                        lr=state.lr)
    return event, after_loss, after_acc


def recalibrate_after_event(settings: RunSettings, model: torch.nn.Module, data: Data, epoch: int, event: PruneEvent,
                            batches: int) -> None:
    """``batches`` batches (the pruner's ``recalibrate_bn``) of ``batch_size`` training samples, in the order of a
    generator seeded with the epoch (the same samples in every arm; the data-order generator untouched),
    through :func:`rmtprune.prune.batchnorm.recalibrate_bn` (nothing for a model without BatchNorm)."""

    size = settings.batch_size
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(epoch))[: batches * size]
    loader = (data.train_x[order[i : i + size].to(data.train_x.device)] for i in range(0, len(order), size))
    with autocast_for(settings.precision, data.train_x.device):
        recalibrate_bn(model, loader, batches, event)


def _grow(settings: RunSettings, state: TrainingState, data: Data, old_epochs: int, out_dir: Path,
          logger: Logger) -> None:
    """A finished run continued with more epochs: it skipped the event after its last epoch (no event
    after a run's last epoch), which a run of the new length has. Replay that event now, so that the
    continued run is the run of the new length (same model, lr calendar and optimizer state; its
    metrics row gets the event's columns). Baselines matched to a count spread their cubic schedule over
    the run's events: their epochs cannot grow."""
    epoch = state.epoch
    if not state.pruner.is_event(epoch) or not state.metrics or int(state.metrics[-1]["epoch"]) != epoch:
        return
    log.info("continuing a finished run of %d epochs to %d: the event after epoch %d happens now", old_epochs,
             settings.epochs, epoch)
    row = state.metrics[-1]
    event, after_loss, after_acc = _event(settings, state, data, epoch, out_dir, logger, float(row["test_loss"]),
                                          float(row["test_acc"]))
    row.update(n_params_after=count_parameters(state.model), test_loss_after_event=after_loss,
               test_acc_after_event=after_acc,
               pruned_layers=sum(r["action"] in PRUNING_ACTIONS for r in event.records))
    out = RunFolder(out_dir)
    out.write_metrics(state.metrics)
    if state.ledger:
        out.write_ledger(state.ledger)


def _record_end(out_dir: Path, summary: dict[str, Any], state: TrainingState, t_start: float, status: str,
                error: str) -> None:
    summary.update(status=status, error=error)
    RunFolder(out_dir).write_summary(summarise(summary, state.metrics, time.perf_counter() - t_start))
