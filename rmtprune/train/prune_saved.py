"""``rmtprune prune``: one pruning event on a saved model, evaluation before and after, optional
fine-tuning, and the pruned model saved with its ledger and summary.

A model saved by ``rmtprune train`` (model.pt, checkpoint.pt) carries its epoch and its next learning
rate: the event uses the schedule's keep fraction at that epoch (a 3-epoch run with
``schedule=linear schedule.horizon=6`` gets f = 1 - 3/6 = 0.5), and fine-tuning continues at that
learning rate, where training stopped. ``optimizer.lr=`` given on the command line sets the fine-tuning
rate instead; a plain state_dict has neither, so it is pruned at epoch ``epochs`` and fine-tuned at
``optimizer.lr``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Collection

import torch
from omegaconf import DictConfig, OmegaConf

from rmtprune.config.build import (
    data_settings,
    make_schedule,
    model_spec,
    rmt_pruner_from_config,
    run_settings,
)
from rmtprune.config.identity import DATASET_NOT_IDENTITY
from rmtprune.config.validate import validate
from rmtprune.data import load_data
from rmtprune.errors import RunFailed, UserError
from rmtprune.files import read_json, write_csv, write_json
from rmtprune.nn.costs import model_costs
from rmtprune.nn.evaluate import evaluate
from rmtprune.nn.geometry import count_parameters
from rmtprune.nn.models import build_model, factorise_to_match
from rmtprune.prune.events import LEDGER_COLUMNS
from rmtprune.prune.schedules import SpikeCut
from rmtprune.runs.folder import METRICS_COLUMNS, append_spectra
from rmtprune.train.checkpoint import model_payload, save_atomic
from rmtprune.train.loading import load_model
from rmtprune.train.loop import recalibrate_after_event, resolve_device
from rmtprune.train.progress import BatchProgress, show_event
from rmtprune.train.state import make_optimizer
from rmtprune.train.step import configure_numerics, train_epoch

log = logging.getLogger("rmtprune")


def run_dataset(info: dict[str, Any]) -> dict[str, Any] | None:
    """The ``dataset`` node the model was trained on, as its run recorded it: the checkpoint's ``config``
    (checkpoint.pt), else the ``summary.json`` of the run folder that holds the rmtprune model file. None for a
    plain state_dict (nothing records it) or a model file away from its run folder."""
    if info["kind"] != "rmtprune":
        return None
    config = info["raw"].get("config")
    summary = Path(info["path"]).parent / "summary.json"
    if not isinstance(config, dict) and summary.is_file():
        try:
            config = read_json(summary).get("config")
        except (OSError, ValueError):
            config = None
    dataset = config.get("dataset") if isinstance(config, dict) else None
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
    settings = run_settings(cfg)
    configure_numerics(settings, device)
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
    write_csv(run_dir / "layers.csv", event.records, LEDGER_COLUMNS)
    if event.spectra:
        append_spectra(run_dir / "spectra.npz", epoch, event.spectra)
    loss1, acc1 = evaluate(model, data.test_x, data.test_y, int(cfg.eval_batch_size))
    params1 = n_params(model)
    log.info("pruned: test_acc %.2f%% -> %.2f%%, params %s -> %s", 100 * acc0, 100 * acc1, f"{params0:,}",
             f"{params1:,}")
    metrics = []
    acc_ft = loss_ft = None
    saved_lr = info["raw"].get("lr") if info["kind"] == "rmtprune" else None
    lr = float(finetune_lr if finetune_lr is not None else saved_lr if saved_lr is not None else cfg.optimizer.lr)
    failure = None
    if cfg.finetune_epochs:
        torch.manual_seed(int(cfg.seed))
        gen = torch.Generator().manual_seed(int(cfg.seed))
        opt = make_optimizer(model, settings.optimizer, lr)
        pruned = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            _finetune(cfg, model, data, opt, gen, lr, params1, metrics, run_dir)
        except RunFailed as exc:  # a NaN loss: the pruned model before fine-tuning is still worth saving
            failure = str(exc)
            model.load_state_dict(pruned)
            log.warning("fine-tuning failed (%s); saving the pruned model as it was before fine-tuning", exc)
        if metrics and failure is None:
            loss_ft, acc_ft = metrics[-1]["test_loss"], metrics[-1]["test_acc"]
    spec = info["raw"]["spec"] if info["kind"] == "rmtprune" else model_spec(cfg)
    payload = model_payload(model, spec, num_classes, list(data.input_shape))
    payload["pruner"] = pruner.state_dict()
    save_atomic(payload, run_dir / "model.pt")
    summary = {
        "status": "failed" if failure else "completed", "source": str(info["path"]), "source_kind": info["kind"],
        "prune_epoch": epoch,
        "keep_fraction": pruner.keep_fraction(epoch),  # None for schedule=spikes (per layer: layers.csv)
        "test_acc_before": acc0, "test_loss_before": loss0, "test_acc_after": acc1, "test_loss_after": loss1,
        "test_acc_finetuned": acc_ft, "test_loss_finetuned": loss_ft, "finetune_epochs": int(cfg.finetune_epochs),
        "finetune_lr": lr if cfg.finetune_epochs else None,
        "n_params_before": params0, "n_params_after": params1,
        "param_reduction_pct": 100.0 * (1 - params1 / params0), "accuracy_unit": "fraction",
        "actions": {a: sum(r["action"] == a for r in event.records) for a in {r["action"] for r in event.records}},
        **model_costs(model, spec, list(data.input_shape), latency=bool(cfg.cost.latency)),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if failure:
        summary["error"] = f"fine-tuning failed: {failure}; model.pt is the pruned model before fine-tuning"
    write_json(run_dir / "summary.json", summary)
    log.info("saved the pruned model and its ledger in %s", run_dir)
    if failure:
        raise RunFailed(f"{failure}; the pruned model before fine-tuning is saved in {run_dir}")
    return summary


def _finetune(cfg: DictConfig, model: torch.nn.Module, data: Any, opt: torch.optim.Optimizer, gen: torch.Generator,
              lr: float, params: int, metrics: list[dict[str, Any]], run_dir: Path) -> None:
    """``cfg.finetune_epochs`` epochs of training at ``lr``, a metrics.csv row each (appended to ``metrics``).
    Raises RunFailed on a NaN loss."""
    with BatchProgress(cfg.progress) as progress:
        for e in range(1, int(cfg.finetune_epochs) + 1):
            t0 = time.perf_counter()
            tl, ta = train_epoch(model, data, opt, gen, int(cfg.batch_size), float(cfg.optimizer.l1), progress, e,
                                 precision=str(cfg.precision), compile=bool(cfg.compile))
            loss_ft, acc_ft = evaluate(model, data.test_x, data.test_y, int(cfg.eval_batch_size))
            metrics.append({"epoch": e, "train_loss": tl, "train_acc": ta, "test_loss": loss_ft, "test_acc": acc_ft,
                            "n_params": params, "n_params_after": params, "pruned_layers": 0,
                            "lr": lr, "seconds": time.perf_counter() - t0})
            write_csv(run_dir / "metrics.csv", metrics, METRICS_COLUMNS)
            log.info("fine-tune epoch %d/%d  test_acc %.2f%%", e, cfg.finetune_epochs, 100 * acc_ft)
