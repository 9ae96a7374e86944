"""Training speed against the matmul bound, where the time goes, and a plain-PyTorch loop beside ours
(not a test). Every figure is measured in this one run.

For an MLP (default: the default 784-1000-1000-500-10) on MNIST (or synthetic data of its shape):
  * matmul rates: a large square fp32 matmul (2048^3 on the CPU, 8192^3 on CUDA; on CUDA also TF32
    and bf16), and the step's own GEMMs (batch 128) timed alone;
  * epoch time / matmul bound, the bound being 6 * sum(in * out) FLOPs per sample * N samples at
    the large-matmul fp32 rate (forward 2, backward 4 FLOPs per weight and sample);
  * a per-step breakdown: forward + backward, the fused L1 + SGD update, the unfused update it
    replaced (foreach L1 add + torch.optim.SGD), the batch gather;
  * a plain-PyTorch loop a user would write (TensorDataset + DataLoader(shuffle=True), nn.Sequential,
    L1 as a loss term, torch.optim.SGD with weight decay, loss.item() per batch), one epoch;
  * one RMT pruning event (one-shot, every layer) / one epoch; forward time pruned / dense;
  * on CUDA also: epoch time for precision=tf32 and bf16 (and compile=true with --compile), the SVD /
    eigenvalue drivers for the layer shapes, and the time to write a training checkpoint.

    python benchmarks/bench_train.py [--device cpu|cuda] [--topology 784-1000-1000-500-10]
        [--synthetic] [--train-size N] [--threads N] [--compile] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from rmtprune.config.build import data_settings, optimizer_settings, run_settings
from rmtprune.config.schema import DatasetConfig, OptimizerConfig, RunConfig
from rmtprune.data import Data, load_data
from rmtprune.nn.geometry import count_parameters
from rmtprune.nn.models import build_model, parse_topology
from rmtprune.prune.rmt import RMTPruner
from rmtprune.train.checkpoint import model_payload, save_atomic
from rmtprune.train.progress import BatchProgress
from rmtprune.train.state import make_optimizer
from rmtprune.train.step import TrainStep, configure_numerics, train_epoch, update_chunked_, update_foreach_

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 128


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2, rounds: int = 3) -> float:
    """Seconds per call of ``fn`` (device work included): the best of ``rounds`` means over ``repeats``
    calls, after ``warmup`` calls (the best round is the least disturbed by other work on the machine)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t) / repeats)
    return best


def matmul_tflops(device: torch.device, dtype: torch.dtype = torch.float32, tf32: bool = False) -> float:
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    if device.type == "cuda":
        _tf32(tf32)
    try:
        seconds = timed(lambda: a @ b, device, repeats=10 if device.type == "cuda" else 3)
    finally:
        if device.type == "cuda":
            _tf32(False)
    return 2 * n**3 / seconds / 1e12


def _tf32(on: bool) -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), {"precision": "tf32" if on else "fp32"})
    configure_numerics(run_settings(cfg), torch.device("cuda"))


def gemm_shapes_seconds(widths: list[int], device: torch.device, batch: int = BATCH) -> float:
    """One step's matmuls alone: per layer the forward x W^T and the backward dY^T X and (but for the
    first layer, whose input needs no gradient) dY W."""
    mats = []
    for a, b in zip(widths[:-1], widths[1:]):
        mats.append((torch.randn(batch, a, device=device), torch.randn(b, a, device=device),
                     torch.randn(batch, b, device=device)))

    def step() -> None:
        for i, (x, w, dy) in enumerate(mats):
            x @ w.T
            dy.T @ x
            if i:
                dy @ w

    return timed(step, device, repeats=20)


def step_breakdown(model: torch.nn.Module, data: Data, l1: float, device: torch.device) -> dict[str, float]:
    """Seconds per step of its parts (the model is trained a little on the way)."""
    opt = make_optimizer(model, optimizer_settings(OmegaConf.structured(OptimizerConfig)), 0.01)
    params = list(model.parameters())
    idx = torch.randperm(len(data.train_x), device=device)[:BATCH]
    x, y = data.train_x[idx], data.train_y[idx]
    step = TrainStep(model, opt, l1)
    step(x, y)  # creates the momentum buffers

    def fwd_bwd() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    out = {"forward_backward": timed(fwd_bwd, device, 30)}
    group = opt.param_groups[0]
    bufs = [opt.state[p]["momentum_buffer"] for p in params]
    grads = [p.grad for p in params]
    scratch = torch.empty(1 << 18)
    if device.type == "cpu":
        fused = lambda: update_chunked_(params, grads, bufs, 1e-9, group["momentum"], group["weight_decay"], l1,
                                        scratch=scratch)
    else:
        fused = lambda: update_foreach_(params, grads, bufs, 1e-9, group["momentum"], group["weight_decay"], l1)
    out["update_fused"] = timed(fused, device, 30)
    lr = group["lr"]
    group["lr"] = 1e-9

    def unfused() -> None:
        with torch.no_grad():
            torch._foreach_add_(grads, torch._foreach_sign(params), alpha=l1)
        opt.step()

    out["update_unfused"] = timed(unfused, device, 30)
    group["lr"] = lr
    perm = torch.randperm(len(data.train_x), device=device)
    out["gather_batch"] = timed(lambda: (data.train_x[perm[:BATCH]], data.train_y[perm[:BATCH]]), device, 50)
    out["full_step"] = timed(lambda: step(x, y), device, 30)
    return out


def epoch_seconds(spec: dict[str, Any], data: Data, device: torch.device, l1: float, precision: str = "fp32",
                  compile: bool = False) -> tuple[float, torch.nn.Module]:
    """(seconds of the second epoch, the model after two epochs)."""
    torch.manual_seed(0)
    model = build_model(spec).to(device)
    opt_cfg = OmegaConf.structured(OptimizerConfig)
    opt = make_optimizer(model, optimizer_settings(opt_cfg), opt_cfg.lr)
    gen = torch.Generator().manual_seed(0)
    with BatchProgress("none") as progress:
        train_epoch(model, data, opt, gen, BATCH, l1, progress, 1, precision=precision, compile=compile)
        sync(device)
        t = time.perf_counter()
        train_epoch(model, data, opt, gen, BATCH, l1, progress, 2, precision=precision, compile=compile)
        sync(device)
    return time.perf_counter() - t, model


def baseline_epoch_seconds(widths: list[int], data: Data, device: torch.device, l1: float) -> float:
    """One epoch of the loop a user would write with stock PyTorch (second epoch timed)."""
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    cfg = OmegaConf.structured(OptimizerConfig)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=2 * cfg.l2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train_x, data.train_y),
                                         batch_size=BATCH, shuffle=True)

    def one_epoch() -> float:
        total = 0.0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + l1 * sum(p.abs().sum() for p in model.parameters())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        return total

    one_epoch()
    sync(device)
    t = time.perf_counter()
    one_epoch()
    sync(device)
    return time.perf_counter() - t


def forward_seconds(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> float:
    model.eval()
    with torch.no_grad():
        seconds = timed(lambda: model(x), device, 5)
    model.train()
    return seconds


def decomposition_drivers(widths: list[int], device: torch.device) -> dict[str, float]:
    """Seconds to get the singular values of each layer shape: svdvals (per CUDA driver), and the
    eigenvalues of the Gram matrix W W^T (smaller side) in float32 and float64."""
    out: dict[str, float] = {}
    for a, b in sorted({(b, a) for a, b in zip(widths[:-1], widths[1:]) if min(a, b) >= 100}):
        w = torch.randn(a, b, device=device) / b**0.5
        g = w @ w.T if a <= b else w.T @ w
        name = f"{a}x{b}"
        drivers: list[str | None] = ["gesvd", "gesvdj", "gesvda"] if device.type == "cuda" else [None]
        for drv in drivers:
            try:
                out[f"svdvals_{drv or 'default'}_{name}"] = timed(lambda: torch.linalg.svdvals(w, driver=drv),
                                                                  device, 3, warmup=1)
            except RuntimeError as exc:  # a driver the build lacks
                out[f"svdvals_{drv}_{name}"] = float("nan")
                print(f"  svdvals driver {drv}: {str(exc).splitlines()[0][:100]}")
        out[f"eigh_gram_fp32_{name}"] = timed(lambda: torch.linalg.eigvalsh(g), device, 3, warmup=1)
        g64 = g.double()
        out[f"eigh_gram_fp64_{name}"] = timed(lambda: torch.linalg.eigvalsh(g64), device, 3, warmup=1)
    return out


def checkpoint_seconds(model: torch.nn.Module, spec: dict[str, Any]) -> float:
    opt = make_optimizer(model, optimizer_settings(OmegaConf.structured(OptimizerConfig)), 0.01)
    for p in model.parameters():
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ckpt = model_payload(model, spec, 10, [1, 28, 28])
        ckpt.update(optimizer=opt.state_dict(), epoch=1)
        save_atomic(ckpt, Path(tmp) / "checkpoint.pt")
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--topology", default="784-1000-1000-500-10")
    ap.add_argument("--synthetic", action="store_true", help="synthetic MNIST-shaped data instead of MNIST")
    ap.add_argument("--train-size", type=int, default=60000, help="training samples (default: all 60,000)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--compile", action="store_true", help="also time an epoch with compile=true")
    ap.add_argument("--compile-only", action="store_true", help="only the epoch without and with compile=true")
    ap.add_argument("--skip-baseline", action="store_true", help="do not time the plain-PyTorch loop")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configure_numerics(run_settings(OmegaConf.structured(RunConfig)), device)
    name = "synthetic" if args.synthetic else "mnist"
    ds = OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                         OmegaConf.load(os.path.join(ROOT, "rmtprune", "conf", "dataset", f"{name}.yaml")))
    ds.train_size, ds.test_size = args.train_size, 10000
    data = load_data(data_settings(ds), device)
    widths = parse_topology(args.topology)
    spec = {"kind": "mlp", "widths": widths}
    l1 = float(OmegaConf.structured(OptimizerConfig).l1)
    n = len(data.train_x)
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    flops = 6 * macs * n
    steps = -(-n // BATCH)
    r: dict[str, Any] = {"device": str(device), "topology": args.topology, "samples": n, "batch": BATCH,
                         "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        r["gpu"] = torch.cuda.get_device_name(device)

    if args.compile_only:
        compile_only(r, spec, data, device, l1, args.json)
        return
    r["matmul_tflops_fp32"] = matmul_tflops(device)
    if device.type == "cuda":
        r["matmul_tflops_tf32"] = matmul_tflops(device, tf32=True)
        r["matmul_tflops_bf16"] = matmul_tflops(device, torch.bfloat16)
    r["gemm_shapes_step_s"] = gemm_shapes_seconds(widths, device)
    r["epoch_s"], model = epoch_seconds(spec, data, device, l1)
    r["matmul_bound_s"] = flops / (r["matmul_tflops_fp32"] * 1e12)
    r["epoch_over_bound"] = r["epoch_s"] / r["matmul_bound_s"]
    r["epoch_over_gemm_shapes"] = r["epoch_s"] / (r["gemm_shapes_step_s"] * steps)
    r["breakdown_per_step_s"] = step_breakdown(build_model(spec).to(device), data, l1, device)
    if device.type == "cuda":
        for precision in ("tf32", "bf16"):
            configure_numerics(run_settings(OmegaConf.merge(OmegaConf.structured(RunConfig), {"precision": precision})), device)
            r[f"epoch_s_{precision}"] = epoch_seconds(spec, data, device, l1, precision=precision)[0]
        configure_numerics(run_settings(OmegaConf.structured(RunConfig)), device)
        r["matmul_bound_s_bf16"] = flops / (r["matmul_tflops_bf16"] * 1e12)
    if args.compile:
        configure_numerics(run_settings(OmegaConf.merge(OmegaConf.structured(RunConfig), {"compile": True})), device)
        t = time.perf_counter()
        r["epoch_s_compile"] = epoch_seconds(spec, data, device, l1, compile=True)[0]
        r["compile_total_s"] = time.perf_counter() - t
    if not args.skip_baseline:
        r["baseline_epoch_s"] = baseline_epoch_seconds(widths, data, device, l1)
        r["baseline_over_ours"] = r["baseline_epoch_s"] / r["epoch_s"]

    x = data.test_x[:4096]
    dense_fwd, dense_params = forward_seconds(model, x, device), count_parameters(model)
    r["checkpoint_s"] = checkpoint_seconds(model, spec)
    pruner = RMTPruner(schedule="oneshot")  # rmtprune/conf/pruning/rmt.yaml's defaults, one cut to the spikes
    sync(device)
    t = time.perf_counter()
    event = pruner.step(model, 2)
    sync(device)
    r["prune_event_s"] = time.perf_counter() - t
    r["prune_event_over_epoch"] = r["prune_event_s"] / r["epoch_s"]
    r["prune_layers"] = len(event.records)
    r["params_pruned_over_dense"] = count_parameters(model) / dense_params
    r["forward_pruned_over_dense"] = forward_seconds(model, x, device) / dense_fwd
    if device.type == "cuda":
        r["decomposition_s"] = decomposition_drivers(widths, device)

    report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")


def compile_only(r: dict[str, Any], spec: dict[str, Any], data: Data, device: torch.device, l1: float,
                 json_path: str | None) -> None:
    r["epoch_s"] = epoch_seconds(spec, data, device, l1)[0]
    configure_numerics(run_settings(OmegaConf.merge(OmegaConf.structured(RunConfig), {"compile": True})), device)
    t = time.perf_counter()
    r["epoch_s_compile"] = epoch_seconds(spec, data, device, l1, compile=True)[0]
    r["compile_total_s"] = time.perf_counter() - t  # two epochs, compilation included
    r["compile_speedup"] = r["epoch_s"] / r["epoch_s_compile"]
    print(f"{r['topology']} on {r['device']}: epoch {r['epoch_s']:.3f} s eager, {r['epoch_s_compile']:.3f} s with "
          f"compile=true ({r['compile_speedup']:.2f} x; compiling and two epochs {r['compile_total_s']:.1f} s)",
          flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(r, indent=1) + "\n")


def report(r: dict[str, Any]) -> None:
    b = r["breakdown_per_step_s"]
    ms = lambda s: f"{1e3 * s:7.2f} ms"
    lines = [
        f"{r['topology']} on {r['device']}{' (' + r['gpu'] + ')' if 'gpu' in r else ''}, {r['samples']} samples, "
        f"batch {r['batch']}, {r['threads']} threads, torch {r['torch']}",
        f"matmul rate, fp32 large square          {r['matmul_tflops_fp32'] * 1e3:9.1f} GFLOP/s",
    ]
    if "matmul_tflops_tf32" in r:
        lines.append(f"matmul rate, tf32 / bf16                {r['matmul_tflops_tf32'] * 1e3:9.1f} / "
                     f"{r['matmul_tflops_bf16'] * 1e3:.1f} GFLOP/s")
    lines += [
        f"matmul-bound epoch (6*MACs*N at fp32)   {r['matmul_bound_s']:9.3f} s",
        f"measured epoch                          {r['epoch_s']:9.3f} s",
        f"epoch / matmul bound                    {r['epoch_over_bound']:9.2f} x   (target <= 1.3)",
        f"epoch / the step's GEMMs timed alone    {r['epoch_over_gemm_shapes']:9.2f} x",
        "per step: " + ", ".join(f"{k} {ms(v).strip()}" for k, v in b.items()),
        f"  (GEMMs at the step's shapes alone {ms(r['gemm_shapes_step_s']).strip()}; update fused / unfused "
        f"{b['update_fused'] / b['update_unfused']:.2f})",
    ]
    for precision in ("tf32", "bf16", "compile"):
        if f"epoch_s_{precision}" in r:
            lines.append(f"epoch with {precision:<8}                    {r[f'epoch_s_{precision}']:9.3f} s")
    if "matmul_bound_s_bf16" in r:
        lines.append(f"epoch bf16 / bf16 matmul bound          {r['epoch_s_bf16'] / r['matmul_bound_s_bf16']:9.1f} x")
    if "baseline_epoch_s" in r:
        lines.append(f"plain-PyTorch loop epoch                {r['baseline_epoch_s']:9.3f} s = "
                     f"{r['baseline_over_ours']:.2f} x ours")
    lines += [
        f"one pruning event ({r['prune_layers']} layers)           {r['prune_event_s']:9.3f} s = "
        f"{r['prune_event_over_epoch']:.3f} of an epoch   (target <= 0.1)",
        f"write checkpoint.pt                     {r['checkpoint_s']:9.3f} s",
        f"parameters pruned / dense               {r['params_pruned_over_dense']:9.3f}",
        f"forward time pruned / dense (4096)      {r['forward_pruned_over_dense']:9.3f}",
    ]
    for k, v in r.get("decomposition_s", {}).items():
        lines.append(f"  {k:<36} {ms(v)}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
