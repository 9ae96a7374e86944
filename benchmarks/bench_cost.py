"""Cost of equal parameter counts (not a test): the paper's MLP dense, cut to low rank, and magnitude-pruned
to the same count, stored dense and as CSR (``torch.sparse_csr``, int32 indices), on the CPU.

Prints, per model: parameters, ``model_bytes`` (CSR bytes for the sparse one), FLOPs per sample and the
latency at batch 1 and 256 relative to the dense model (``rmtprune.nn.costs``). The weights are random: the
timings depend on shapes and sparsity only.

    python benchmarks/bench_cost.py [--rank 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

from rmtprune.nn.costs import latencies
from rmtprune.nn.geometry import count_parameters, csr_bytes, flops, model_bytes
from rmtprune.nn.masks import prune_to_count
from rmtprune.nn.models import build_model
from rmtprune.nn.select import prunable_layers
from rmtprune.nn.surgery import apply_rank, layer_svd

WIDTHS = [784, 1000, 1000, 1000, 500, 10]
SPEC = {"kind": "mlp", "widths": WIDTHS}


class CSRLinear(nn.Module):
    """y = x W^T + b with W in CSR (int32 indices): what storing a magnitude-pruned layer sparsely costs."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__()
        w = dense.weight.detach().to_sparse_csr()
        # the CSR arrays as buffers (a sparse CSR tensor cannot be deep-copied); the view on them is free
        self.register_buffer("crow", w.crow_indices().int())
        self.register_buffer("col", w.col_indices().int())
        self.register_buffer("values", w.values())
        self.register_buffer("bias", dense.bias.detach())
        self.shape = tuple(w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.sparse_csr_tensor(self.crow, self.col, self.values, self.shape, check_invariants=False)
        return torch.addmm(self.bias[:, None], weight, x.T).T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=100, help="rank of every hidden layer of the low-rank model")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.manual_seed(0)
    dense = build_model(SPEC)
    lowrank = build_model(SPEC)
    for name, module in prunable_layers(lowrank)[:-1]:
        lowrank.set_submodule(name, apply_rank(module, args.rank, min(module.weight.shape), layer_svd(module)).module)
    target = count_parameters(lowrank)
    magnitude, _ = prune_to_count(dense, target)
    sparse = [name for name, _ in prunable_layers(magnitude)]
    csr = build_model(SPEC)
    for name, module in prunable_layers(magnitude):
        csr.set_submodule(name, CSRLinear(module))
    # (label, model timed, non-zero parameters, bytes, dense FLOPs)
    rows = [("dense", dense, count_parameters(dense), model_bytes(dense), flops(dense, WIDTHS[:1])),
            (f"lowrank r={args.rank}", lowrank, target, model_bytes(lowrank), flops(lowrank, WIDTHS[:1])),
            ("magnitude, dense storage", magnitude, target, model_bytes(magnitude), flops(magnitude, WIDTHS[:1])),
            ("magnitude, CSR", csr, target, csr_bytes(magnitude, sparse), flops(magnitude, WIDTHS[:1]))]
    print(f"{'model':28s} {'params':>10s} {'bytes':>12s} {'FLOPs':>12s} {'b1 / dense':>11s} {'b256 / dense':>13s}")
    for label, model, params, nbytes, n_flops in rows:
        lat = latencies(model, dense, WIDTHS[:1])
        print(f"{label:28s} {params:>10,} {nbytes:>12,} {n_flops:>12,} {lat['latency_b1_ratio']:>11.2f} "
              f"{lat['latency_b256_ratio']:>13.2f}")


if __name__ == "__main__":
    main()
