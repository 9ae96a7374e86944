"""The split=auto cost model (rmtprune/nn/split_cost.py) against measured CPU times, one thread.

For the prunable layers of torchvision's resnet18 and mobilenet_v3_small (weights=None, every Linear /
Conv2d with at least 10 singular values) and the paper's MLP 784-1000-1000-1000-500-10, at ranks
r = f r_max (r_max: the rank at which a split stops saving parameters; f in --fractions), it prints per
layer and rank the model's cost ratio split / dense and its choice, the measured ratio (best of
--repeats rounds calling the dense layer and the two factors in turn, on a batch of --batch inputs of
the layer's own input shape, measured in this one run) and whether the two agree; then per model the inference time of the
whole network dense, with every layer cut at --model-fraction split=always, and split=auto (the same
ranks, truncated in place where auto says so; and the sums of the interleaved layer times, which hold
better under a changing load), and the least-squares fit of the cost model's constants
(t = c (MACs + MU activations + NU positions) + c KAPPA calls) to the layer timings.

    python benchmarks/bench_split.py                       # all three networks, images 112, batch 32
    python benchmarks/bench_split.py --image 224 --batch 64 --models mobilenet_v3_small
    python benchmarks/bench_split.py --quick               # smallest form: mobilenet's decisions, no timing

Depthwise-heavy blocks: the blocks (``features.N``) whose depthwise convolutions do at least
DEPTHWISE_HEAVY of their MACs; the summary says whether auto split any of their layers.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rmtprune.nn.geometry import layer_groups, layer_matrix_shape  # noqa: E402
from rmtprune.nn.models import MLP
from rmtprune.nn.select import prunable_layers  # noqa: E402
from rmtprune.nn.split_cost import KAPPA, MU, NU, SplitRule, dense_cost, kernel_area, split_cost  # noqa: E402
from rmtprune.nn.surgery import apply_rank, layer_svd

MODELS = ("resnet18", "mobilenet_v3_small", "mlp")
DEPTHWISE_HEAVY = 0.15


def build(name: str, image: int) -> tuple[nn.Module, torch.Tensor]:
    """The network (random init, eval mode) and one input sample as a batch of 1."""
    torch.manual_seed(0)
    if name == "mlp":
        return MLP([784, 1000, 1000, 1000, 500, 10]).eval(), torch.zeros(1, 1, 28, 28)
    import torchvision

    return getattr(torchvision.models, name)(weights=None).eval(), torch.zeros(1, 3, image, image)


def input_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """{layer: the shape of its input for one sample}, from one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in prunable_layers(model)]
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    return shapes


def r_max(module: nn.Module) -> float:
    """The rank below which the split has fewer weights: out m / (out + groups m)."""
    out, m = layer_matrix_shape(module)
    return out * m / (out + layer_groups(module) * m)


def best_time(fn: Any, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return min(times)


def interleaved(modules: list[nn.Module], x: torch.Tensor, repeats: int) -> list[float]:
    """Best time of each module over ``repeats`` rounds that call them in turn (a passing load hits all)."""
    times = [[best_time(m, x, 1) for m in modules] for _ in range(repeats)]
    return [min(t[i] for t in times) for i in range(len(modules))]


def depthwise_heavy(model: nn.Module, positions: dict[str, int]) -> set[str]:
    """Blocks ``a.b`` whose depthwise convolutions do at least DEPTHWISE_HEAVY of the block's MACs."""
    macs: dict[str, list[float]] = {}
    for name, m in prunable_layers(model):
        out, k = layer_matrix_shape(m)
        block = ".".join(name.split(".")[:2])
        share = macs.setdefault(block, [0.0, 0.0])
        share[0] += positions.get(name, 0) * out * k
        if layer_groups(m) > 1 and layer_groups(m) == getattr(m, "in_channels", 0):
            share[1] += positions.get(name, 0) * out * k
    return {b for b, (total, dw) in macs.items() if total and dw / total >= DEPTHWISE_HEAVY}


def layer_rows(name: str, model: nn.Module, example: torch.Tensor, batch: int, fractions: list[float],
               repeats: int) -> list[dict[str, Any]]:
    rule = SplitRule("auto", batch, example)
    shapes = input_shapes(model, example) if repeats else {}
    heavy = depthwise_heavy(model, {n: rule.positions(model, n) or 0 for n, _ in prunable_layers(model)})
    rows = []
    for lname, module in prunable_layers(model):
        out, m = layer_matrix_shape(module)
        if min(out, m) < 10:
            continue
        positions = rule.positions(model, lname)
        svd = layer_svd(module) if repeats else None
        x = torch.randn(batch, *shapes[lname]) if repeats else None
        for f in fractions:
            rank = max(1, int(f * r_max(module)))
            if rank >= r_max(module):  # no split saves parameters here (a depthwise conv): not the rule's case
                continue
            ok, _ = rule.decide(model, lname, module, rank)
            model_ratio = split_cost(module, rank, positions, batch) / dense_cost(module, positions, batch)
            measured = dense_t = np.nan
            if repeats:
                factors = apply_rank(copy.deepcopy(module), rank, min(out, m), svd).module
                dense_t, split_t = interleaved([module, factors], x, repeats)
                measured = split_t / dense_t
            rows.append({"model": name, "layer": lname, "block": ".".join(lname.split(".")[:2]),
                         "depthwise_heavy": ".".join(lname.split(".")[:2]) in heavy, "out": out, "m": m,
                         "groups": layer_groups(module), "k2": kernel_area(module), "positions": positions,
                         "rank": rank, "fraction": f, "model_ratio": model_ratio,
                         "choice": "split" if ok else "truncate", "measured_ratio": measured,
                         "dense_s": dense_t, "agree": bool(np.isnan(measured) or (measured < 1) == ok)})
    return rows


def whole_model(name: str, model: nn.Module, example: torch.Tensor, batch: int, fraction: float,
                repeats: int) -> dict[str, float]:
    """Inference seconds of the network dense, cut at ``fraction`` of r_max with split=always, and split=auto."""
    x = example.expand(batch, *example.shape[1:]).clone().normal_()
    nets = {"dense": model}
    for mode in ("always", "auto"):
        cut = copy.deepcopy(model)
        rule = SplitRule(mode, batch, example)
        for lname, module in prunable_layers(cut):
            o, m = layer_matrix_shape(module)
            rank = max(1, int(fraction * r_max(module)))
            if min(o, m) < 10 or rank >= min(o, m):
                continue
            ok, _ = rule.decide(cut, lname, module, rank)
            result = apply_rank(module, rank, min(o, m), split_ok=ok)
            if result.action == "split":
                cut.set_submodule(lname, result.module)
        nets[mode] = cut
    return dict(zip(nets, interleaved(list(nets.values()), x, repeats)))


def layer_sums(rows: list[dict[str, Any]]) -> dict[float, dict[str, float]]:
    """Per rank fraction: the summed layer times with every layer split (always), split where the model says
    so (auto), and split where the measurement says so (oracle), over the summed dense times. Each layer's
    pair was timed interleaved, so these hold better under a changing load than timing whole networks."""
    out: dict[float, dict[str, float]] = {}
    for f in sorted({r["fraction"] for r in rows}):
        at = [r for r in rows if r["fraction"] == f]
        dense = sum(r["dense_s"] for r in at)
        split = {"always": lambda r: True, "auto": lambda r: r["choice"] == "split",
                 "oracle": lambda r: r["measured_ratio"] < 1}
        out[f] = {k: sum(r["dense_s"] * (r["measured_ratio"] if rule(r) else 1.0) for r in at) / dense
                  for k, rule in split.items()}
    return out


def fit_constants(rows: list[dict[str, Any]], batch: int) -> tuple[float, float, float]:
    """(MU, NU, KAPPA) of the non-negative least-squares fit t = c (MACs + MU activations + NU positions + KAPPA
    calls) over the timings, in relative error (each equation divided by its time)."""
    from scipy.optimize import nnls

    a, t = [], []
    for r in rows:
        n = batch * r["positions"]
        n_in = r["m"] * r["groups"] // r["k2"]
        dense = (n * r["out"] * r["m"], n * (n_in + r["out"]), n, 1.0)
        split = (n * r["rank"] * (n_in * r["k2"] + r["out"]), n * (n_in + 2 * r["groups"] * r["rank"] + r["out"]),
                 2 * n, 2.0)
        a += [dense, split]
        t += [r["dense_s"], r["dense_s"] * r["measured_ratio"]]
    t_arr = np.array(t)
    c = nnls(np.array(a) / t_arr[:, None], np.ones_like(t_arr))[0]
    return float(c[1] / c[0]), float(c[2] / c[0]), float(c[3] / c[0])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image", type=int, default=112)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9])
    ap.add_argument("--model-fraction", type=float, default=0.75)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (0: decisions only)")
    ap.add_argument("--quick", action="store_true", help="mobilenet_v3_small at 224 x 224, batch 64: decisions only")
    ap.add_argument("--csv", help="also write the per-layer rows to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.image, args.batch, args.repeats = ["mobilenet_v3_small"], 224, 64, 0
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    print(f"cost model MU={MU:g} NU={NU:g} KAPPA={KAPPA:g}; batch {args.batch}, images {args.image}, 1 thread")
    for name in args.models:
        model, example = build(name, args.image)
        got = layer_rows(name, model, example, args.batch, args.fractions, args.repeats)
        rows += got
        for r in got:
            print(f"{name:19s} {r['layer']:28s} {r['out']:5d}x{r['m']:<5d} g{r['groups']:<4d} P{r['positions']:<6d} "
                  f"r{r['rank']:<4d} model {r['model_ratio']:.2f} -> {r['choice']:8s} "
                  f"measured {r['measured_ratio']:.2f}{'' if r['agree'] else '  DISAGREE'}")
        heavy = [r for r in got if r["depthwise_heavy"]]
        print(f"{name}: auto split {sum(r['choice'] == 'split' for r in heavy)} of {len(heavy)} (layer, rank) cases in "
              f"depthwise-heavy blocks {sorted({r['block'] for r in heavy})}")
        if args.repeats:
            timed = [r for r in got if not np.isnan(r["measured_ratio"])]
            print(f"{name}: the model's choice agrees with the measurement in {sum(r['agree'] for r in timed)} of "
                  f"{len(timed)} cases")
            heavy = [r for r in timed if r["depthwise_heavy"]]
            for part, sel in (("all layers", timed), ("depthwise-heavy blocks", heavy)):
                for f, v in layer_sums(sel).items() if sel else ():
                    print(f"{name}: {part} at {f} r_max, summed layer time / dense: split=always {v['always']:.2f}, "
                          f"split=auto {v['auto']:.2f}, split where measured faster {v['oracle']:.2f}")
            t = whole_model(name, model, example, args.batch, args.model_fraction, args.repeats)
            print(f"{name}: whole network at {args.model_fraction} r_max, batch {args.batch}: dense "
                  f"{1e3 * t['dense']:.1f} ms, split=always {t['always'] / t['dense']:.2f}x, "
                  f"split=auto {t['auto'] / t['dense']:.2f}x")
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
    if args.repeats:
        mu, nu, kappa = fit_constants([r for r in rows if not np.isnan(r["measured_ratio"])], args.batch)
        print(f"least-squares constants from these timings: MU={mu:.3g} NU={nu:.3g} KAPPA={kappa:.3g} "
              f"(rmtprune/nn/split_cost.py: {MU:g}, {NU:g}, {KAPPA:g})")
    return rows


if __name__ == "__main__":
    main()
