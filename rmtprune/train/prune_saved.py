"""``rmtprune prune``: one pruning event on a saved model, evaluation before and after, optional
fine-tuning, and the pruned model saved with its ledger and summary.

A model saved by ``rmtprune train`` (model.pt, checkpoint.pt) carries its epoch and its next learning
rate: the event uses the schedule's keep fraction at that epoch (a 3-epoch run with
``schedule=linear schedule.horizon=6`` gets f = 1 - 3/6 = 0.5), and fine-tuning continues at that
learning rate, where training stopped. ``optimizer.lr=`` given on the command line sets the fine-tuning
rate instead; a plain state_dict has neither, so it is pruned at epoch ``epochs`` and fine-tuned at
``optimizer.lr``.

Its summary.json is the run record ``rmtprune train`` writes (:func:`rmtprune.train.loop.run_record` and
:func:`rmtprune.runs.folder.summarise`: ``n_params_initial`` is the count before the cut, ``n_params_final``
after it; the final and best accuracies are those of the fine-tuning epochs, or right after the cut without
fine-tuning: ``best_epoch`` 0), plus prune's own fields: the source model and the config of the run that
trained it (``source_config``, when recorded), the accuracies before, after the cut and fine-tuned, and
``n_params_before`` / ``n_params_after`` (the same counts as ``n_params_initial`` / ``n_params_final``, kept for
one release). ``rmtprune compare`` and ``inspect`` read the folder as any run's."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from omegaconf import DictConfig, OmegaConf

from rmtprune.config.build import (
    RunSettings,
    data_settings,
    make_schedule,
    model_spec,
    rmt_pruner_from_config,
    run_settings,
)
from rmtprune.config.identity import DATASET_NOT_IDENTITY, config_key
from rmtprune.config.validate import validate
from rmtprune.data import Data, load_data
from rmtprune.errors import RunFailed, UserError
from rmtprune.nn.costs import model_costs
from rmtprune.nn.evaluate import evaluate
from rmtprune.nn.geometry import count_parameters
from rmtprune.nn.models import build_model, factorise_to_match, factorised_ranks
from rmtprune.prune.schedules import SpikeCut
from rmtprune.runs.folder import RunFolder, summarise
from rmtprune.train.checkpoint import model_payload, save_atomic
from rmtprune.train.loading import load_model
from rmtprune.train.loop import _now, recalibrate_after_event, resolve_device, run_record
from rmtprune.train.progress import BatchProgress, show_event
from rmtprune.train.state import make_optimizer
from rmtprune.train.step import configure_numerics, train_epoch

log = logging.getLogger("rmtprune")


def source_config(info: dict[str, Any]) -> dict[str, Any] | None:
    """The config of the run that trained the model, as it recorded it: the checkpoint's ``config``
    (checkpoint.pt), else the ``summary.json`` of the run folder that holds the rmtprune model file. None for a
    plain state_dict (nothing records it) or a model file away from its run folder."""
    if info["kind"] != "rmtprune":
        return None
    config = info["raw"].get("config")
    if not isinstance(config, dict):
        config = (RunFolder(Path(info["path"]).parent).read_summary() or {}).get("config")
    return config if isinstance(config, dict) else None


def run_dataset(info: dict[str, Any]) -> dict[str, Any] | None:
    """The ``dataset`` node the model was trained on, as its run recorded it (:func:`source_config`); None when
    nothing records it."""
    dataset = (source_config(info) or {}).get("dataset")
    return dataset if isinstance(dataset, dict) and "name" in dataset else None


def _described(ds: Any) -> str:
    return f"{ds['name']} (train_size={ds.get('train_size')}, test_size={ds.get('test_size')})"


def data_config(cfg: DictConfig, info: dict[str, Any], given: Collection[str]) -> DictConfig:
    """The data set to prune, evaluate and fine-tune on: the one the run recorded (``run_dataset``; where the
    data lies, ``outputs.DATASET_NOT_IDENTITY``, comes from ``cfg``), with the ``dataset.KEY=`` of the command
    line (``given``: the keys set there) applied; ``dataset=NAME`` there replaces it. Either, when it differs
    from the record, with a warning naming both. Nothing recorded: ``dataset=`` must be given (UserError)."""
    recorded = run_dataset(info)
    on_cli = [k for k in given if k == "dataset" or k.startswith("dataset.")]
    if recorded is None:
        if not on_cli:
            raise UserError(f"{info['path']}: the file records no data set (a plain state_dict, or a model file away "
                            f"from its run folder): give dataset=NAME (and dataset.train_size=, dataset.test_size=)")
        return cfg.dataset
    if "dataset" in on_cli:
        ds = cfg.dataset
    else:
        ds = OmegaConf.merge(cfg.dataset, {k: v for k, v in recorded.items() if k not in DATASET_NOT_IDENTITY})
        ds.raw_md5 = recorded.get("raw_md5", {})  # replaced, not merged with the default data set's
        for key in on_cli:
            OmegaConf.update(ds, key[len("dataset."):], OmegaConf.select(cfg, key), merge=False)
    if any(ds.get(k) != recorded.get(k) for k in ("name", "train_size", "test_size")):
        log.warning("dataset %s given on the command line: the model was trained on %s; pruning, evaluating and "
                    "fine-tuning on %s", _described(ds), _described(recorded), ds.name)
    return ds


def _model_for(cfg: DictConfig, model: torch.nn.Module, info: dict[str, Any]) -> tuple[torch.nn.Module, int]:
    if info["kind"] == "rmtprune":
        raw = info["raw"]
        if list(raw["input_shape"]) != list(cfg.dataset.input_shape) or raw["num_classes"] != cfg.dataset.num_classes:
            raise UserError(f"{info['path']}: the model takes {raw['input_shape']} inputs and {raw['num_classes']} "
                            f"classes, dataset={cfg.dataset.name} has {list(cfg.dataset.input_shape)} and "
                            f"{cfg.dataset.num_classes}")
        return model, int(raw["num_classes"])
    dense = build_model(model_spec(cfg))
    try:
        factorise_to_match(dense, info["raw"])  # a pruned state_dict: split the layers it holds as factors
        dense.load_state_dict(info["raw"])
    except (RuntimeError, ValueError) as exc:
        first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:2] or [str(exc)[:200]]
        raise UserError(f"{info['path']}: the state_dict does not fit model={cfg.model.name} "
                        f"topology={cfg.topology} ({first[0]}); set model/topology to the saved architecture") from None
    return dense, int(cfg.dataset.num_classes)


def n_params(model: torch.nn.Module) -> int:
    """Parameters as runs count them: every entry, less the exact zeros of Linear / Conv2d weights (the weights
    a magnitude-pruned model removed; a trained dense weight has none, a fresh bias may be all zeros)."""
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    return count_parameters(model) - zeros


def prune_saved(cfg: DictConfig, run_dir: Path, finetune_lr: float | None = None,
                given: Collection[str] = (), validated: bool = False) -> dict[str, Any]:
    """Prune the model at ``cfg.model_path`` once and write the results into ``run_dir``.

    ``finetune_lr``: the fine-tuning learning rate; None: the saved run's next lr (``cfg.optimizer.lr``
    for a plain state_dict). ``given``: the keys set on the command line (``dataset`` ones override the data
    set the run recorded: :func:`data_config`). ``cfg.dataset`` becomes the data set used (summary.json).
    ``validated``: the caller has validated ``cfg`` already (the command's check before the job).
    """
    if not validated:
        validate(cfg)
    if cfg.pruning.name != "rmt":
        raise UserError(f"pruning={cfg.pruning.name}: rmtprune prune makes one RMT event; use pruning=rmt")
    if cfg.finetune_epochs < 0:
        raise UserError(f"finetune_epochs={cfg.finetune_epochs} must be >= 0")
    if cfg.optimizer.anneal != "none":
        raise UserError(f"optimizer.anneal={cfg.optimizer.anneal}: rmtprune prune fine-tunes at one lr (the run's "
                        f"last, or optimizer.lr for a state_dict) and anneals nothing; leave optimizer.anneal=none")
    device = resolve_device(cfg.device)
    out = RunFolder(run_dir)
    out.check_writable("set hydra.run.dir (or hydra.sweep.dir) to a writable folder")
    with out.lock():  # the folder claim of train: a folder belongs to one run
        out.claim(None)
        return _prune(cfg, out, device, finetune_lr, given)


def _prune(cfg: DictConfig, out: RunFolder, device: torch.device, finetune_lr: float | None,
           given: Collection[str]) -> dict[str, Any]:
    started_at, t_start = _now(), time.perf_counter()
    settings = run_settings(cfg)
    numerics = configure_numerics(settings, device)
    model, info = load_model(Path(str(cfg.model_path)), model_spec(cfg) if cfg.model.name == "custom" else None)
    cfg.dataset = data_config(cfg, info, given)
    model, num_classes = _model_for(cfg, model, info)
    model = model.to(device)
    data = load_data(data_settings(cfg.dataset), device)
    loss0, acc0 = evaluate(model, data.test_x, data.test_y, int(cfg.eval_batch_size))
    params0 = n_params(model)
    epoch = int(info["epoch"] or cfg.epochs)
    pruner = rmt_pruner_from_config(cfg.pruning, make_schedule(cfg.schedule), int(cfg.batch_size),
                                    list(data.input_shape))
    pruner.load_state_dict((info["raw"].get("pruner") if info["kind"] == "rmtprune" else info.get("pruner")) or {})
    if isinstance(pruner.schedule, SpikeCut) and not pruner.spike_counts:
        raise UserError(f"schedule=spikes: {info['path']} records no spike counts of earlier events, and one event "
                        f"is a layer's first fit (growth from nothing): nothing would be cut. Use schedule=oneshot "
                        f"(pruning.margin=c keeps ceil(c k) of the k spikes)")
    pruner.adopt_ranks(model)  # layers cut before that the saved state does not know (a plain state_dict)
    event = pruner.step(model, epoch)
    if event.changed:
        recalibrate_after_event(settings, model, data, epoch, event, pruner.recalibrate_bn)
    show_event(event.records, epoch, cfg.progress)
    out.write_ledger(event.records)
    if event.spectra:
        out.append_spectra(epoch, event.spectra)
    loss1, acc1 = evaluate(model, data.test_x, data.test_y, int(cfg.eval_batch_size))
    params1 = n_params(model)
    log.info("pruned: test_acc %.2f%% -> %.2f%%, params %s -> %s", 100 * acc0, 100 * acc1, f"{params0:,}",
             f"{params1:,}")
    metrics: list[dict[str, Any]] = []
    acc_ft = loss_ft = None
    saved_lr = info["raw"].get("lr") if info["kind"] == "rmtprune" else None
    lr = float(finetune_lr if finetune_lr is not None else saved_lr if saved_lr is not None else cfg.optimizer.lr)
    summary = run_record(cfg, config_key(cfg), out.path, device, numerics, params0, started_at, [])
    source = source_config(info)
    summary.update({
        "source": str(info["path"]), "source_kind": info["kind"], **({"source_config": source} if source else {}),
        "prune_epoch": epoch,
        "keep_fraction": pruner.keep_fraction(epoch),  # None for schedule=spikes (per layer: layers.csv)
        "test_acc_before": acc0, "test_loss_before": loss0, "test_acc_after": acc1, "test_loss_after": loss1,
        "test_acc_finetuned": None, "test_loss_finetuned": None, "finetune_epochs": int(cfg.finetune_epochs),
        "finetune_lr": lr if cfg.finetune_epochs else None,
        "n_params_before": params0, "n_params_after": params1,
        "actions": {a: sum(r["action"] == a for r in event.records) for a in {r["action"] for r in event.records}},
        # the pruned model before any fine-tuning epoch (epoch 0); the fine-tuning epochs replace these
        "final_test_acc": acc1, "final_test_loss": loss1, "best_test_acc": acc1, "best_epoch": 0, "best_on": "test",
        "n_params_final": params1, "param_reduction_pct": 100.0 * (1 - params1 / params0),
    })
    out.write_summary(summarise(summary, metrics, time.perf_counter() - t_start))
    failure = None
    if cfg.finetune_epochs:
        torch.manual_seed(int(cfg.seed))
        gen = torch.Generator().manual_seed(int(cfg.seed))
        opt = make_optimizer(model, settings.optimizer, lr)
        pruned = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            _finetune(settings, int(cfg.finetune_epochs), model, data, opt, gen, lr, params1, metrics, out,
                      lambda: out.write_summary(summarise(summary, metrics, time.perf_counter() - t_start)))
        except RunFailed as exc:  # a NaN loss: the pruned model before fine-tuning is still worth saving
            failure = str(exc)
            model.load_state_dict(pruned)
            log.warning("fine-tuning failed (%s); saving the pruned model as it was before fine-tuning", exc)
        if metrics and failure is None:
            loss_ft, acc_ft = metrics[-1]["test_loss"], metrics[-1]["test_acc"]
    spec = info["raw"]["spec"] if info["kind"] == "rmtprune" else model_spec(cfg)
    payload = model_payload(model, spec, num_classes, list(data.input_shape))
    payload["pruner"] = pruner.state_dict()
    save_atomic(payload, out.model_pt)
    summary.update(status="failed" if failure else "completed", finished_at=_now(), test_acc_finetuned=acc_ft,
                   test_loss_finetuned=loss_ft, ranks=factorised_ranks(model),
                   **model_costs(model, spec, list(data.input_shape), latency=bool(cfg.cost.latency)))
    if failure:
        summary["error"] = f"fine-tuning failed: {failure}; model.pt is the pruned model before fine-tuning"
    summary = summarise(summary, metrics, time.perf_counter() - t_start)
    out.write_summary(summary)
    if not failure:
        out.mark_done(summary["finished_at"])
    log.info("saved the pruned model and its ledger in %s", out.path)
    if failure:
        raise RunFailed(f"{failure}; the pruned model before fine-tuning is saved in {out.path}")
    return summary


def _finetune(settings: RunSettings, epochs: int, model: torch.nn.Module, data: Data, opt: torch.optim.Optimizer,
              gen: torch.Generator, lr: float, params: int, metrics: list[dict[str, Any]], out: RunFolder,
              record: Callable[[], None]) -> None:
    """``epochs`` epochs of training at ``lr`` with the training step of ``rmtprune train``, a metrics.csv row
    each (appended to ``metrics``), the summary recorded (``record()``) after each. Raises RunFailed on a NaN
    loss."""
    with BatchProgress(settings.progress) as progress:
        for e in range(1, epochs + 1):
            t0 = time.perf_counter()
            tl, ta = train_epoch(model, data, opt, gen, settings.batch_size, settings.optimizer.l1, progress, e,
                                 precision=settings.precision, compile=settings.compile)
            loss_ft, acc_ft = evaluate(model, data.test_x, data.test_y, settings.eval_batch_size)
            metrics.append({"epoch": e, "train_loss": tl, "train_acc": ta, "test_loss": loss_ft, "test_acc": acc_ft,
                            "n_params": params, "n_params_after": params, "pruned_layers": 0,
                            "lr": lr, "seconds": time.perf_counter() - t0})
            out.write_metrics(metrics)
            record()
            log.info("fine-tune epoch %d/%d  test_acc %.2f%%", e, epochs, 100 * acc_ft)
