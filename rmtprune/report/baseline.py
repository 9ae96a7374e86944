"""The post-training magnitude baseline of ``compare``: a normal run's final model pruned exactly to a
pruned run's final parameter count, evaluated, and optionally fine-tuned; cached in the run folder.

For a normal run (seed s) and a target count P (the pruned arm's final ``n_params_final`` for seed s):

1. ``model.pt`` is loaded (``checkpoint.load_file`` + ``rebuild_model``; a custom model only with
   ``trust_model_code``, since its file names the class to import) and pruned with global
   unstructured L1 magnitude pruning until exactly P parameters are non-zero
   (:func:`rmtprune.nn.masks.prune_to_count`; the count includes biases, as ``nn/masks.py`` counts);
2. it is evaluated on the run's test set (``data.load_data`` with the run's own data set settings,
   on the CPU);
3. with fine-tuning asked for, it is trained for ``finetune_epochs`` more epochs with its masks kept
   (pruned weights stay zero): SGD with the normal run's last lr (``lr`` of its last metrics row)
   and its momentum, l1 and l2, its batch size, and torch / data-order generators seeded with its seed.

Results are written to ``posthoc_magnitude.csv`` in the normal run's folder (one row per target and
fine-tune length, :data:`CACHE_COLUMNS`) because committed result folders do not keep ``model.pt``:
without ``model.pt`` the cached row is used; with it, a row made by another rmtprune version is
recomputed. No model and no cached row: :meth:`MagnitudeBaseline.value` returns None and the caller
falls back to interpolating the run's ``magnitude_sweep.csv``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rmtprune import __version__
from rmtprune.config.build import data_settings, optimizer_settings
from rmtprune.config.schema import DatasetConfig, OptimizerConfig
from rmtprune.data import load_data
from rmtprune.errors import RunFailed, UserError
from rmtprune.files import write_csv
from rmtprune.nn.evaluate import evaluate
from rmtprune.nn.masks import count_nonzero, prune_to_count, remove_masks
from rmtprune.runs.folder import RunFolder
from rmtprune.runs.walk import Run
from rmtprune.train.checkpoint import is_custom, load_file, rebuild_model
from rmtprune.train.progress import BatchProgress
from rmtprune.train.state import make_optimizer
from rmtprune.train.step import train_epoch

CACHE = RunFolder.POSTHOC_MAGNITUDE


CACHE_COLUMNS = ["target_params", "n_nonzero", "test_acc", "test_loss", "finetune_epochs", "finetuned_n_nonzero",
                 "finetuned_test_acc", "finetuned_test_loss", "code_version"]


# the largest relative excess of the non-zero count over the target that still counts as "at" it
COUNT_TOLERANCE = 1e-3


@dataclass
class BaselineValue:
    """One normal run pruned to one target: (test_acc, test_loss) after pruning, after fine-tuning
    (NaN when not asked), and where it came from (``model.pt`` or ``cache``)."""

    test_acc: float
    test_loss: float
    finetuned_test_acc: float
    finetuned_test_loss: float
    source: str


def finetune_epochs(pruned: Run) -> int:
    """Epochs a pruned run trained after its last pruning event.

    The last event is the last epoch with a ``test_acc_after_event`` value, or (runs made before
    that column) the last epoch whose parameter count changed (``n_params_after`` != ``n_params``);
    no event: 0.
    """
    m = pruned.metrics
    if m.empty or "epoch" not in m:
        return 0
    events = m["epoch"][m["test_acc_after_event"].notna()] if "test_acc_after_event" in m else m["epoch"][:0]
    if events.empty and {"n_params", "n_params_after"} <= set(m):
        events = m["epoch"][m["n_params_after"] != m["n_params"]]
    return int(m["epoch"].max() - events.max()) if not events.empty else 0


class MagnitudeBaseline:
    """Computes and caches :class:`BaselineValue` s; data sets are loaded once per ``compare`` and
    only when a value has to be computed. Problems (an unreadable model, no data here, a cache that
    cannot be written) are collected in ``warnings``, never raised."""

    def __init__(self, trust_model_code: bool = False) -> None:
        self._data: dict[str, Any] = {}
        self.trust_model_code = trust_model_code  # rebuild a custom model from the class its file names
        self.warnings: list[dict[str, str]] = []

    def value(self, run: Run, target: int, finetune: int | None) -> BaselineValue | None:
        """The baseline of normal ``run`` at ``target`` non-zero parameters; with ``finetune`` (epochs)
        also after fine-tuning. None when neither model.pt nor a cached row can give it."""
        cache = self._read_cache(run.folder)
        has_model = RunFolder(run.folder).model_pt.is_file()
        base = _cached(cache, target, None, current_only=has_model)
        tuned = _cached(cache, target, finetune, current_only=has_model) if finetune is not None else None
        if base is not None and (finetune is None or tuned is not None):
            return _value(base, tuned, "cache")
        if has_model:
            try:
                computed = self._compute(run, target, finetune)
            except UserError as exc:
                self._warn(run, f"post-training magnitude baseline not computed: {exc}")
                computed = None
            if computed is not None:
                self._write_cache(run, cache, computed)
                return _value(computed, computed if finetune is not None else None, RunFolder.MODEL)
        if base is not None:
            self._warn(run, f"no model.pt and no cached fine-tuned value at {target:,} parameters "
                            f"({finetune} epochs): the magnitude baseline is given without fine-tuning")
            return _value(base, None, "cache")
        return None

    def _warn(self, run: Run, reason: str) -> None:
        self.warnings.append({"folder": str(run.folder), "seed": str(run.seed), "reason": reason})

    def _read_cache(self, folder: Path) -> pd.DataFrame:
        path = folder / CACHE
        if not path.exists():
            return pd.DataFrame(columns=CACHE_COLUMNS)
        try:
            df = pd.read_csv(path)
            for col in CACHE_COLUMNS[:-1]:
                df[col] = pd.to_numeric(df[col], errors="raise") if col in df else math.nan
            if "code_version" not in df:
                df["code_version"] = ""
            return df
        except (OSError, ValueError, TypeError, pd.errors.ParserError) as exc:
            self.warnings.append({"folder": str(folder),
                                  "reason": f"{CACHE} unreadable ({type(exc).__name__}): ignored"})
            return pd.DataFrame(columns=CACHE_COLUMNS)

    def _write_cache(self, run: Run, cache: pd.DataFrame, row: dict[str, Any]) -> None:
        keep = cache[~((cache["target_params"] == row["target_params"])
                       & _same_epochs(cache["finetune_epochs"], row["finetune_epochs"]))]
        rows = [_tidy(r) for r in keep.to_dict("records") + [row]]
        rows.sort(key=lambda r: (r["target_params"], -1 if r["finetune_epochs"] is None else r["finetune_epochs"]))
        try:
            write_csv(run.folder / CACHE, rows, CACHE_COLUMNS)
        except OSError as exc:
            self._warn(run, f"could not write {CACHE} ({exc.strerror}): the value is not cached")

    def _dataset(self, run: Run) -> Any:
        import torch
        from omegaconf import OmegaConf

        ds = dict(run.summary["config"].get("dataset") or {})
        # where the data lives is this machine's business: root / offline_dir / download from here
        for key in ("root", "offline_dir", "download"):
            ds.pop(key, None)
        key = json.dumps(ds, sort_keys=True, default=str)
        if key not in self._data:
            try:
                cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), ds)
            except Exception as exc:  # omegaconf's validation errors have no common base worth naming
                raise UserError(f"the run's dataset settings are not valid here ({type(exc).__name__})") from None
            self._data[key] = load_data(data_settings(cfg), torch.device("cpu"))
        return self._data[key]

    def _compute(self, run: Run, target: int, finetune: int | None) -> dict[str, Any] | None:

        model_pt = RunFolder(run.folder).model_pt
        ckpt = load_file(model_pt)
        if is_custom(ckpt) and not self.trust_model_code:
            raise UserError(f"model.pt holds a custom model ({ckpt['spec'].get('target')!r}), whose class rmtprune "
                            f"imports only when asked: pass --trust-model-code for runs you trust")
        trusted = ckpt.get("spec") if self.trust_model_code else None
        model = rebuild_model(ckpt, model_pt, trusted)
        data = self._dataset(run)
        cfg = run.summary["config"]
        batch = int(cfg.get("eval_batch_size") or len(data.test_x))
        pruned, n_nonzero = prune_to_count(model, target, keep_masks=bool(finetune))
        # above the target only where pruning every weight is not enough; below it only where the
        # model has fewer non-zero parameters than the target to begin with (nothing to prune)
        if n_nonzero > target * (1 + COUNT_TOLERANCE):
            self._warn(run, f"magnitude pruning cannot reach {target:,} non-zero parameters "
                            f"(it leaves {n_nonzero:,}): no baseline at this count")
            return None
        loss, acc = evaluate(pruned, data.test_x, data.test_y, batch)
        row = {"target_params": int(target), "n_nonzero": n_nonzero, "test_acc": acc, "test_loss": loss,
               "finetune_epochs": finetune, "finetuned_n_nonzero": None, "finetuned_test_acc": None,
               "finetuned_test_loss": None, "code_version": __version__}
        if finetune is not None:
            if finetune > 0:
                try:
                    _finetune(pruned, data, run, finetune)
                except RunFailed as exc:
                    self._warn(run, f"fine-tuning the magnitude-pruned model failed: {exc}")
                    return row | {"finetune_epochs": None}
            remove_masks(pruned)
            ft_loss, ft_acc = evaluate(pruned, data.test_x, data.test_y, batch)
            row.update(finetuned_n_nonzero=count_nonzero(pruned), finetuned_test_acc=ft_acc,
                       finetuned_test_loss=ft_loss)
        return row


def _finetune(model: Any, data: Any, run: Run, epochs: int) -> None:
    """``epochs`` of the run's own SGD at its last lr, masks kept (see the module doc)."""
    import torch
    from omegaconf import OmegaConf

    cfg = run.summary["config"]
    if cfg.get("batch_size") is None:
        raise UserError("the run's config has no batch_size: cannot fine-tune like it")
    try:
        opt_cfg = OmegaConf.merge(OmegaConf.structured(OptimizerConfig), cfg.get("optimizer") or {})
    except Exception as exc:  # omegaconf's validation errors have no common base worth naming
        raise UserError(f"the run's optimizer settings are not valid here ({type(exc).__name__})") from None
    last = run.metrics["lr"].iloc[-1] if "lr" in run.metrics and len(run.metrics) else math.nan
    lr = float(last) if last == last else float(opt_cfg.lr)
    torch.manual_seed(run.seed)
    gen = torch.Generator().manual_seed(run.seed)
    opt = make_optimizer(model, optimizer_settings(opt_cfg), lr)
    with BatchProgress("none") as progress:
        for e in range(1, epochs + 1):
            train_epoch(model, data, opt, gen, int(cfg["batch_size"]), float(opt_cfg.l1), progress, e)


def _value(row: dict[str, Any], tuned: dict[str, Any] | None, source: str) -> BaselineValue:
    return BaselineValue(_num(row["test_acc"]), _num(row["test_loss"]),
                         _num(tuned["finetuned_test_acc"]) if tuned else math.nan,
                         _num(tuned["finetuned_test_loss"]) if tuned else math.nan, source)


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None and v != "" else math.nan
    except (TypeError, ValueError):
        return math.nan


def _tidy(row: dict[str, Any]) -> dict[str, Any]:
    """Counts as whole numbers (pandas reads them back as floats), missing values as None."""
    out = {}
    for k in CACHE_COLUMNS:
        v = row.get(k)
        if k == "code_version":
            out[k] = None if v is None or v != v else str(v)
        elif v is None or v != v or v == "":
            out[k] = None
        else:
            out[k] = float(v) if k.endswith(("_acc", "_loss")) else int(v)
    return out


def _same_epochs(col: pd.Series, epochs: int | None) -> pd.Series:
    return col.isna() if epochs is None else (col == epochs)


def _cached(cache: pd.DataFrame, target: int, finetune: int | None, current_only: bool) -> dict[str, Any] | None:
    """The cached row for ``target``: any (``finetune`` None), or one with ``finetune`` epochs of
    fine-tuning done; ``current_only``: made by this rmtprune version."""
    if cache.empty:
        return None
    rows = cache[cache["target_params"] == target]
    if current_only:
        rows = rows[rows["code_version"].astype(str) == __version__]
    if finetune is not None:
        rows = rows[(rows["finetune_epochs"] == finetune) & rows["finetuned_test_acc"].notna()]
    rows = rows[rows["test_acc"].notna()]
    return None if rows.empty else rows.iloc[-1].to_dict()
