"""Surgery on one layer: replace it by its rank-r approximation, split or in place; or keep some of its
units (rows and columns of a Linear layer, :func:`keep_units`, for ``pruning=neuron``).

For a layer with matrix W (out, m) (m = in for Linear, in/groups * k * k for Conv2d) and thin
SVD W = U diag(s) V^T, the rank-r approximation W_r = U_r diag(s_r) V_r^T is the best one in
Frobenius and spectral norm (Eckart–Young). It is stored as

* a split: W1 = diag(sqrt(s_r)) V_r^T (no bias), W2 = U_r diag(sqrt(s_r)) (the original bias),
  when that is smaller: r (groups * m + out) < out * m; or
* a truncation in place: W <- W_r, same shape (no parameter saving).

Device and dtype are kept; the bias survives every re-split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init

from .lowrank import LOW_RANK_TYPES, LowRankConv2d, LowRankLinear
from .models import ShrunkLinear, count_parameters

SVD = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def layer_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, m) matrix (the product of the factors for a split layer)."""
    if isinstance(module, LOW_RANK_TYPES):
        return module.weight_matrix().detach()
    return module.weight.detach().reshape(module.weight.shape[0], -1)


def layer_groups(module: nn.Module) -> int:
    return int(getattr(module, "groups", 1))


def weight_count(module: nn.Module) -> int:
    """Weight entries of the layer (biases excluded)."""
    if isinstance(module, LOW_RANK_TYPES):
        return module.first.weight.numel() + module.second.weight.numel()
    return module.weight.numel()


def param_count(module: nn.Module) -> int:
    """The layer's parameter count (models.count_parameters, the one home of parameter counting)."""
    return count_parameters(module)


def split_weight_count(module: nn.Module, rank: int) -> int:
    """Weights of the split form at ``rank``: r (groups * m + out)."""
    out, m = layer_matrix_shape(module)
    return rank * (layer_groups(module) * m + out)


def layer_matrix_shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, LowRankLinear):
        return module.out_features, module.in_features
    if isinstance(module, LowRankConv2d):
        kh, kw = module.kernel_size
        return module.out_channels, module.in_channels // module.groups * kh * kw
    w = module.weight
    return int(w.shape[0]), int(w[0].numel())


def layer_svd(module: nn.Module, method: str = "auto") -> SVD:
    """Thin SVD (U (out, q), s (q,) descending, Vh (q, m)) of the layer's matrix.

    A split layer (one group) is decomposed through QR of its factors, at O((out + m) r^2) cost:
    W2 = Q2 R2, W1^T = Q1 R1, W2 W1 = Q2 (R2 R1^T) Q1^T, then the SVD of the small r x r core.
    Computed in float32 at least (float64 stays float64). A dense layer: ``method="svd"``
    (``torch.linalg.svd``) or ``"gram"``: the float64 eigendecomposition of the p x p Gram matrix,
    W W^T = U diag(s^2) U^T (W (out, m), out <= m; the transpose otherwise), V = W^T U diag(1 / s) for
    s > 0 (zero columns for exact zeros, which no cut keeps); ``"auto"`` takes the Gram path on CUDA
    for rectangular matrices (m >= 2 out or out >= 2 m), where it is the faster driver, and the SVD
    elsewhere.
    """
    work = torch.float64 if _dtype(module) == torch.float64 else torch.float32
    w = None
    if not isinstance(module, LOW_RANK_TYPES):
        w = layer_matrix(module)
        p, n = min(w.shape), max(w.shape)
        if method == "gram" or (method == "auto" and w.is_cuda and n >= 2 * p):
            return _gram_svd(w.double(), work)
    if isinstance(module, LowRankLinear) or (isinstance(module, LowRankConv2d) and module.groups == 1):
        left, right = (f.detach().to(work) for f in module.factors())
        q2, r2 = torch.linalg.qr(left)
        q1, r1 = torch.linalg.qr(right.T)
        uc, s, vhc = torch.linalg.svd(r2 @ r1.T)
        return q2 @ uc, s, vhc @ q1.T
    u, s, vh = torch.linalg.svd((w if w is not None else layer_matrix(module)).to(work), full_matrices=False)
    return u, s, vh


def _gram_svd(w: torch.Tensor, work: torch.dtype) -> SVD:
    """Thin SVD of a float64 matrix through its small Gram matrix (see :func:`layer_svd`)."""
    transposed = w.shape[0] > w.shape[1]
    a = w.T if transposed else w                       # (p, n), p <= n
    ev, u = torch.linalg.eigh(a @ a.T)                 # ascending
    ev, u = ev.flip(0).clamp_min(0.0), u.flip(1)
    s = ev.sqrt()
    inv = torch.where(s > s[0] * torch.finfo(torch.float64).eps * max(a.shape), 1.0 / s, torch.zeros_like(s))
    v = (a.T @ u) * inv                                # (n, p)
    if transposed:                                     # w = a^T = v diag(s) u^T
        return v.to(work), s.to(work), u.T.to(work)
    return u.to(work), s.to(work), v.T.to(work)


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def split(module: nn.Module, svd: SVD, rank: int) -> nn.Module:
    """A LowRankLinear / LowRankConv2d holding the rank-``rank`` approximation of ``module``."""
    u, s, vh = svd
    root = torch.sqrt(s[:rank])
    left = u[:, :rank] * root            # (out, r) = U_r diag(sqrt s)
    right = root[:, None] * vh[:rank]    # (r, m)   = diag(sqrt s) V_r^T
    dtype, device = _dtype(module), _device(module)
    bias = module.bias
    if isinstance(module, (nn.Linear, LowRankLinear)):
        out, m = layer_matrix_shape(module)
        new = LowRankLinear(m, out, rank, bias=bias is not None, device=device, dtype=dtype)
        new.first.weight.data.copy_(right)
        new.second.weight.data.copy_(left)
    else:
        conv = module.first if isinstance(module, LowRankConv2d) else module
        g = conv.groups
        in_ch = conv.in_channels
        out = module.out_channels
        new = LowRankConv2d(in_ch, out, conv.kernel_size, rank, stride=conv.stride, padding=conv.padding,
                            dilation=conv.dilation, groups=g, bias=bias is not None,
                            padding_mode=conv.padding_mode, device=device, dtype=dtype)
        kh, kw = conv.kernel_size
        first = right.reshape(1, rank, in_ch // g, kh, kw).expand(g, -1, -1, -1, -1)
        new.first.weight.data.copy_(first.reshape(g * rank, in_ch // g, kh, kw))
        new.second.weight.data.copy_(left.reshape(out, rank, 1, 1))
    if bias is not None:
        new.second.bias.data.copy_(bias.detach())
    return new


def truncate_(module: nn.Module, svd: SVD, rank: int) -> None:
    """Replace a dense layer's weight in place by its rank-``rank`` approximation."""
    u, s, vh = svd
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    module.weight.data.copy_(approx.reshape(module.weight.shape).to(module.weight.dtype))


@dataclass
class Surgery:
    """What :func:`apply_rank` did: the resulting module and the decision."""

    module: nn.Module
    action: str            # split | truncate | skip_no_saving | keep
    rank_before: int
    rank_after: int
    params_before: int
    params_after: int


def apply_rank(module: nn.Module, rank: int, current_rank: int, svd: SVD | None = None,
               *, truncate: bool = True, split_ok: bool = True) -> Surgery:
    """Bring ``module`` to ``rank`` (< current_rank): split if smaller (and ``split_ok``: the split rule
    of ``rmtprune.cost`` allows it), else truncate in place (``truncate``) or leave it (``skip_no_saving``).

    ``current_rank`` is the layer's rank now (p for a dense layer never pruned). A target rank at
    or above it changes nothing (action ``keep``). A split layer is always re-split, since its
    smaller rank is always smaller.
    """
    before = param_count(module)
    action = rank_action(module, rank, current_rank, truncate=truncate, split_ok=split_ok)
    if action in ("keep", "skip_no_saving"):
        return Surgery(module, action, current_rank, current_rank, before, before)
    svd = svd if svd is not None else layer_svd(module)
    if action == "split":
        new = split(module, svd, rank)
        return Surgery(new, "split", current_rank, rank, before, param_count(new))
    truncate_(module, svd, rank)
    return Surgery(module, "truncate", current_rank, rank, before, before)


def rank_action(module: nn.Module, rank: int, current_rank: int, *, truncate: bool = True,
                split_ok: bool = True) -> str:
    """What :func:`apply_rank` does, decided from the shapes alone: ``keep`` (rank >= current_rank), ``split``
    (a split layer, or ``split_ok`` and r (groups m + out) < out m), else ``truncate`` (or ``skip_no_saving``
    without ``truncate``)."""
    if rank >= current_rank:
        return "keep"
    if isinstance(module, LOW_RANK_TYPES) or (split_ok and split_weight_count(module, rank) < weight_count(module)):
        return "split"
    return "truncate" if truncate else "skip_no_saving"


def planned_params(module: nn.Module, rank: int, action: str) -> int:
    """The layer's parameter count after :func:`apply_rank` took ``action`` at ``rank`` (without doing it):
    r (groups m + out) + bias for a split, unchanged otherwise."""
    if action != "split":
        return param_count(module)
    return split_weight_count(module, rank) + (module.bias.numel() if module.bias is not None else 0)


# Costs of a whole model, from its tensors and layer geometry (what ``summary.json`` records).
INDEX_BYTES = 4  # CSR column indices and row pointers as int32


def model_bytes(model: nn.Module) -> int:
    """Dense storage of the model as saved: sum of numel * element size over its state_dict (parameters
    and persistent buffers; a split layer holds its two factors)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def csr_bytes(model: nn.Module, layers: list[str]) -> int:
    """Storage with the weights of ``layers`` in CSR and the rest dense: a weight viewed as its (rows, m)
    matrix (:func:`layer_matrix`) with nnz non-zeros takes nnz * element size (values) + 4 nnz (int32
    column indices) + 4 (rows + 1) (int32 row pointers) bytes instead of rows * m * element size."""
    total = model_bytes(model)
    for name in layers:
        w = model.get_submodule(name).weight.detach()
        rows, nnz = w.shape[0], int(torch.count_nonzero(w))
        total += nnz * (w.element_size() + INDEX_BYTES) + INDEX_BYTES * (rows + 1) - w.numel() * w.element_size()
    return total


@torch.no_grad()
def flops(model: nn.Module, input_shape: list[int]) -> int:
    """Dense FLOPs per sample, 2 x the multiply-adds of every Linear and Conv2d (the factors of a split
    layer included): 2 * weight[0].numel() * output.numel() for one input of ``input_shape`` (Linear:
    2 in out per position; Conv2d: 2 (in / groups) kh kw * out H_out W_out). Biases, normalisation and
    activations are not counted. The output sizes come from one forward pass in eval mode."""
    total = 0

    def count(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * module.weight[0].numel() * output.numel()

    device = next(model.parameters()).device
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, device=device, dtype=_dtype(model)))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


def keep_units(module: nn.Linear, rows: torch.Tensor | Any = None, cols: torch.Tensor | Any = None) -> nn.Linear:
    """A new nn.Linear (a ``ShrunkLinear``, so checkpoints record its shape) holding ``module``'s rows ``rows`` (output units, with their bias entries) and columns
    ``cols`` (input units); None keeps them all. Weight (out, in) -> (len(rows), len(cols)); same device and
    dtype; draws no random numbers."""
    w, b = module.weight.detach(), module.bias
    rows = torch.arange(w.shape[0]) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    cols = torch.arange(w.shape[1]) if cols is None else torch.as_tensor(cols, dtype=torch.long)
    rows, cols = rows.to(w.device), cols.to(w.device)
    new = skip_init(ShrunkLinear, len(cols), len(rows), bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w[rows][:, cols])
        if b is not None:
            new.bias.copy_(b.detach()[rows])
    return new
