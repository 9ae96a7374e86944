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

from rmtprune.nn.geometry import _dtype, layer_matrix_shape, param_count, split_weight_count, weight_count
from rmtprune.nn.layers import LOW_RANK_TYPES, LowRankConv2d, LowRankLinear, ShrunkLinear

SVD = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def layer_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, m) matrix (the product of the factors for a split layer)."""
    if isinstance(module, LOW_RANK_TYPES):
        return module.weight_matrix().detach()
    return module.weight.detach().reshape(module.weight.shape[0], -1)


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
    of ``rmtprune.nn.split_cost`` allows it), else truncate in place (``truncate``) or leave it (``skip_no_saving``).

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
