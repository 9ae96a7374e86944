"""Training speed against the matmul bound, and the cost of a pruning event (not a test).

Prints, for the default MLP on MNIST (or synthetic data of the same shape with --synthetic):
  * epoch time next to the matmul-bound time: 6 * sum(in*out) FLOPs per sample * N samples over
    the fp32 matmul throughput measured in this run (a 2048^3 matmul);
  * the time of one RMT pruning event over the epoch time;
  * the forward time of the pruned model over the dense one, next to their parameter ratio.

    python benchmarks/bench_train.py [--topology 784-1000-1000-500-10] [--synthetic] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from omegaconf import OmegaConf

from rmtprune.config import DatasetConfig, OptimizerConfig, PruningConfig, parse_topology
from rmtprune.data import load_data
from rmtprune.models import build_model, count_parameters
from rmtprune.progress import BatchProgress
from rmtprune.pruner import RMTPruner
from rmtprune.train import make_optimizer, train_epoch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def forward_time(model: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    model.eval()
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="784-1000-1000-500-10")
    ap.add_argument("--synthetic", action="store_true", help="60,000 synthetic samples instead of MNIST")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                         OmegaConf.load(os.path.join(ROOT, "conf", "dataset",
                                                     "synthetic.yaml" if args.synthetic else "mnist.yaml")))
    if args.synthetic:
        ds.train_size, ds.test_size = 60000, 10000
    data = load_data(ds, torch.device("cpu"))
    widths = parse_topology(args.topology)
    torch.manual_seed(0)
    model = build_model({"kind": "mlp", "widths": widths})
    opt_cfg = OmegaConf.structured(OptimizerConfig)
    opt = make_optimizer(model, opt_cfg, opt_cfg.lr)
    gen = torch.Generator().manual_seed(0)
    n = len(data.train_x)
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    flops = 6 * macs * n

    gflops = matmul_gflops()
    with BatchProgress("none") as progress:
        train_epoch(model, data, opt, gen, 128, float(opt_cfg.l1), progress, 1)  # warm-up
        t = time.perf_counter()
        train_epoch(model, data, opt, gen, 128, float(opt_cfg.l1), progress, 2)
        epoch = time.perf_counter() - t
    bound = flops / (gflops * 1e9)

    x = data.test_x[:4096]
    dense_fwd = forward_time(model, x)
    dense_params = count_parameters(model)
    pcfg = OmegaConf.merge(OmegaConf.structured(PruningConfig), {"name": "rmt"})
    pruner = RMTPruner(pcfg, lambda e: 0.0, 10)
    t = time.perf_counter()
    event = pruner.step(model, 2)
    prune_s = time.perf_counter() - t
    pruned_fwd = forward_time(model, x)
    pruned_params = count_parameters(model)

    print(f"topology {args.topology}, {n} samples, batch 128, {torch.get_num_threads()} threads")
    print(f"fp32 matmul throughput (2048^3)      {gflops:8.1f} GFLOP/s")
    print(f"training FLOPs per epoch (6*MACs*N)  {flops / 1e9:8.1f} GFLOP")
    print(f"matmul-bound epoch time              {bound:8.2f} s")
    print(f"measured epoch time                  {epoch:8.2f} s")
    print(f"epoch / matmul bound                 {epoch / bound:8.2f} x   (target <= 1.3)")
    print(f"one pruning event (oneshot, {len(event.records)} layers) {prune_s:8.2f} s = {prune_s / epoch:.3f} of an epoch")
    print(f"parameters pruned / dense            {pruned_params / dense_params:8.3f}")
    print(f"forward time pruned / dense (4096)   {pruned_fwd / dense_fwd:8.3f}")


if __name__ == "__main__":
    main()
