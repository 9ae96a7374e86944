"""The post-training magnitude baseline at an exact parameter count: the count is hit, the accuracy is
that of an independent pruning and evaluation, fine-tuning keeps the masks, and the cache in the run
folder stands in for a model.pt that is gone."""

from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from tests_support.runs import fake_run

from rmtprune.config.build import data_settings
from rmtprune.config.schema import DatasetConfig
from rmtprune.data import load_data
from rmtprune.nn.masks import count_nonzero, prune_to_count
from rmtprune.nn.models import build_model
from rmtprune.report.baseline import CACHE, CACHE_COLUMNS, MagnitudeBaseline, finetune_epochs
from rmtprune.runs.walk import load_run
from rmtprune.train.checkpoint import model_payload, save_atomic

WIDTHS = [784, 64, 32, 10]
DATASET = {"name": "synthetic", "input_shape": [1, 28, 28], "num_classes": 10, "train_size": 300,
           "test_size": 400, "root": "/elsewhere/not/here", "offline_dir": "/nor/here"}


def small_model(seed: int = 0, zero_biases: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model({"kind": "mlp", "widths": WIDTHS})
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.normal_()
        if zero_biases:
            model.layers[0].bias[:5] = 0.0      # zeros outside the weights are not counted
        model.layers[1].weight[:, :3] = 0.0     # weights that are zero already
    return model


@functools.lru_cache(maxsize=None)
def _trained(seed: int, zero_biases: bool) -> dict[str, torch.Tensor]:
    model = small_model(seed, zero_biases)
    data = load_data(data_settings(_dataset()), torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.train_x), data.train_y).backward()
        opt.step()
    if zero_biases:
        with torch.no_grad():
            model.layers[0].bias[:5] = 0.0
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_model(seed: int = 3, zero_biases: bool = True) -> torch.nn.Module:
    """small_model fitted to the synthetic training set (full-batch SGD), so that pruning changes
    its test accuracy."""
    model = small_model(seed, zero_biases)
    model.load_state_dict(_trained(seed, zero_biases))
    return model


def _dataset():
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                           {k: v for k, v in DATASET.items() if k not in ("root", "offline_dir")})


def numpy_count(model: torch.nn.Module) -> int:
    return int(sum(np.count_nonzero(v.detach().numpy()) for v in model.state_dict().values()))


@pytest.mark.parametrize("share", [0.0, 0.3, 0.9, 0.995])
def test_prune_to_count_leaves_exactly_the_target_and_zeroes_the_smallest_weights(share):
    model = small_model()
    before = numpy_count(model)
    target = int(before * (1 - share)) if share else before
    pruned, n = prune_to_count(model, target)
    assert n == target == numpy_count(pruned)
    assert numpy_count(model) == before  # the model itself is untouched
    old = torch.cat([l.weight.flatten() for l in model.layers]).abs()
    new = torch.cat([l.weight.flatten() for l in pruned.layers]).abs()
    zeroed, kept = old[(new == 0) & (old > 0)], new[new > 0]
    if zeroed.numel():
        assert zeroed.max() <= kept.min()
    assert all(torch.equal(a.bias, b.bias) for a, b in zip(model.layers, pruned.layers))


def test_prune_to_count_with_masks_counts_the_masked_weights():
    model = small_model()
    target = numpy_count(model) // 4
    pruned, n = prune_to_count(model, target, keep_masks=True)
    assert n == target == count_nonzero(pruned)
    assert any(name.endswith("weight_orig") for name, _ in pruned.named_parameters())


def test_finetune_epochs_count_from_the_last_event():
    from rmtprune.runs.walk import Run

    def run(**cols):
        return Run(Path("."), {}, {}, pd.DataFrame({"epoch": [1, 2, 3, 4, 5], **cols}), None, None)

    nan = float("nan")
    assert finetune_epochs(run(test_acc_after_event=[0.5, 0.5, 0.5, nan, nan])) == 2
    # runs made before test_acc_after_event: the last epoch whose parameter count changed
    assert finetune_epochs(run(n_params=[9, 8, 7, 7, 7], n_params_after=[8, 7, 7, 7, 7])) == 3
    assert finetune_epochs(run(n_params=[9] * 5, n_params_after=[9] * 5)) == 0


def normal_run_folder(folder: Path, seed: int = 3, zero_biases: bool = True) -> Path:
    folder.mkdir(parents=True)
    model = trained_model(seed, zero_biases)
    save_atomic(model_payload(model, {"kind": "mlp", "widths": WIDTHS}, 10, [1, 28, 28]), folder / "model.pt")
    cfg = {"topology": "-".join(map(str, WIDTHS)), "seed": seed, "batch_size": 64, "eval_batch_size": 128,
           "dataset": DATASET, "model": {"name": "mlp"}, "pruning": {"name": "none"},
           "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "l1": 0.0, "l2": 0.0, "lr_decay": 1.0}}
    fake_run(folder, cfg, [{"epoch": 1, "train_loss": 1, "train_acc": 0.5, "test_loss": 1, "test_acc": 0.5, "n_params": 1,
                            "n_params_after": 1, "lr": 0.01}])
    return folder


def independent_accuracy(folder: Path, target: int) -> float:
    """Threshold chosen with numpy on the saved weights, logits computed by hand."""
    state = torch.load(folder / "model.pt", weights_only=True)["state_dict"]
    weights = {k: v.numpy().astype(np.float64) for k, v in state.items()}
    names = [k for k in weights if k.endswith("weight")]
    nonzero = sum(np.count_nonzero(v) for v in weights.values())
    mags = np.sort(np.concatenate([np.abs(weights[k]).ravel() for k in names]))
    mags = mags[mags > 0]
    cut = mags[nonzero - target - 1]  # the (nonzero - target)-th smallest non-zero magnitude
    for k in names:
        weights[k][np.abs(weights[k]) <= cut] = 0.0
    assert sum(np.count_nonzero(v) for v in weights.values()) == target
    data = load_data(data_settings(_dataset()), torch.device("cpu"))
    x = data.test_x.flatten(1).numpy().astype(np.float64)
    for i in range(len(WIDTHS) - 1):
        x = x @ weights[f"layers.{i}.weight"].T + weights[f"layers.{i}.bias"]
        if i < len(WIDTHS) - 2:
            x = np.maximum(x, 0)
    return float(np.mean(x.argmax(1) == data.test_y.numpy()))


def test_the_baseline_is_an_exact_magnitude_pruning_evaluated_on_the_run_test_set_and_cached(tmp_path):
    folder = normal_run_folder(tmp_path / "none3")
    run = load_run(folder)
    target = numpy_count(trained_model(3)) // 20
    value = MagnitudeBaseline().value(run, target, None)
    assert value.source == "model.pt"
    assert value.test_acc == pytest.approx(independent_accuracy(folder, target), abs=1 / 400 + 1e-12)
    cache = pd.read_csv(folder / CACHE)
    assert list(cache.columns) == CACHE_COLUMNS and len(cache) == 1
    row = cache.iloc[0]
    assert row["target_params"] == target and abs(row["n_nonzero"] - target) <= 1e-3 * target
    assert row["test_acc"] == value.test_acc and row["code_version"] == __import__("rmtprune").__version__

    (folder / "model.pt").unlink()
    cached = MagnitudeBaseline().value(load_run(folder), target, None)
    assert cached.source == "cache" and cached.test_acc == value.test_acc and cached.test_loss == value.test_loss
    assert MagnitudeBaseline().value(load_run(folder), target + 1, None) is None  # not cached, no model


def test_fine_tuning_keeps_the_masks_and_is_cached_beside_the_plain_value(tmp_path):
    # no zero biases: training would make them non-zero, and only the weights are masked
    folder = normal_run_folder(tmp_path / "none3", zero_biases=False)
    target = numpy_count(trained_model(3, zero_biases=False)) // 5
    base = MagnitudeBaseline()
    value = base.value(load_run(folder), target, 2)
    assert value.source == "model.pt" and not base.warnings
    assert value.finetuned_test_acc == value.finetuned_test_acc  # computed
    assert value.finetuned_test_loss != value.test_loss           # it trained (lr 0.01, 2 epochs)
    row = pd.read_csv(folder / CACHE).iloc[0]
    assert row["finetune_epochs"] == 2 and row["finetuned_n_nonzero"] == row["n_nonzero"] == target
    # the same seed gives the same fine-tuned model
    again = tmp_path / "again"
    shutil.copytree(folder, again)
    (again / CACHE).unlink()
    assert MagnitudeBaseline().value(load_run(again), target, 2).finetuned_test_acc == value.finetuned_test_acc
    # model gone: fine-tuned values of another length cannot be made; the plain value still comes from the cache
    (folder / "model.pt").unlink()
    late = MagnitudeBaseline()
    other = late.value(load_run(folder), target, 3)
    assert other.source == "cache" and other.test_acc == value.test_acc
    assert math.isnan(other.finetuned_test_acc)
    assert "without fine-tuning" in late.warnings[0]["reason"]
    assert MagnitudeBaseline().value(load_run(folder), target, 2).finetuned_test_acc == value.finetuned_test_acc


def test_a_model_or_data_that_cannot_be_read_is_a_warning(tmp_path):
    folder = normal_run_folder(tmp_path / "none3")
    (folder / "model.pt").write_bytes(b"not a checkpoint")
    base = MagnitudeBaseline()
    assert base.value(load_run(folder), 1000, None) is None
    assert "not computed" in base.warnings[0]["reason"] and not (folder / CACHE).exists()
