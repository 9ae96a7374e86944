"""Layers written as two thin factors, W = W2 @ W1 with inner rank r.

* :class:`LowRankLinear`: Linear(in -> r, no bias) then Linear(r -> out, the original bias);
  parameters (in + out) r (+ out bias) instead of in * out.
* :class:`LowRankConv2d`: a k x k Conv2d(in -> groups * r, the original stride, padding,
  dilation and groups, no bias) then a 1 x 1 Conv2d(groups * r -> out, groups, the bias).
  Viewing the weight as the (out, in/groups * k * k) matrix W, each group's r intermediate
  channels carry the same r right factors; the 1 x 1 conv mixes them with the left factors
  of that group's output rows. Parameters r (in k^2 + out) (+ out bias).

The factors are created uninitialised (``torch.nn.utils.skip_init``, no RNG drawn): the surgery or
``load_state_dict`` fills them.

Both expose ``weight`` and ``bias`` as a dense Linear / Conv2d does, so that a split layer keeps working
where its parent module reads them instead of calling it: ``nn.MultiheadAttention`` passes
``out_proj.weight`` to ``F.multi_head_attention_forward``, and the fast path of
``nn.TransformerEncoderLayer`` passes ``linear1.weight`` / ``linear2.weight`` to a fused kernel. ``weight``
is the product of the factors (the (out, in) matrix; (out, in/groups, kh, kw) for a conv), computed on
each read and differentiable, so gradients reach the factors; it is a property, not a parameter, so the
parameter count, the state_dict keys (``first.weight``, ``second.weight``) and every checkpoint written
before stay as they were. A module that calls the layer gets the cheap path through the two factors;
one that reads ``weight`` pays one out x in x r product per forward pass (not per sample). This keeps
the split classes (and so the ledger, ``factorise_to_match`` and the checkpoints) unchanged, where an
``nn.Linear`` with a ``torch.nn.utils.parametrize`` weight would rename the state_dict keys
(``parametrizations.weight.original0``) and break the files written before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import skip_init

pass
if TYPE_CHECKING:  # importing rmtprune (the Python API) must not import the config machinery
    pass


class TwoFactors(nn.Module):
    """What both factorised layers share: ``first`` then ``second``, the bias on ``second``."""

    first: nn.Module
    second: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @property
    def bias(self) -> torch.Tensor | None:
        return self.second.bias


class LowRankLinear(TwoFactors):
    """y = second(first(x)); ``weight_matrix()`` is the (out, in) product second.weight @ first.weight."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        # skip_init: the factors are always filled by the surgery or load_state_dict, and drawing an init
        # would consume the global RNG (dropout masks of the two arms would differ after the first split)
        self.first = skip_init(nn.Linear, in_features, rank, bias=False, device=device or "cpu", dtype=dtype)
        self.second = skip_init(nn.Linear, rank, out_features, bias=bias, device=device or "cpu", dtype=dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dense (out, in) weight second.weight @ first.weight, for modules that read it (attention)."""
        return self.weight_matrix()

    def weight_matrix(self) -> torch.Tensor:
        return self.second.weight @ self.first.weight

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(left (out, r), right (r, in)) with weight_matrix() = left @ right."""
        return self.second.weight, self.first.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankConv2d(TwoFactors):
    """A Conv2d of rank r per group: k x k conv to groups * r channels, then a grouped 1 x 1 conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], rank: int,
                 stride: tuple[int, int] = (1, 1), padding: tuple[int, int] | str = (0, 0),
                 dilation: tuple[int, int] = (1, 1), groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.rank, self.groups = in_channels, out_channels, rank, groups
        self.kernel_size = tuple(kernel_size)
        self.first = skip_init(nn.Conv2d, in_channels, groups * rank, kernel_size, stride=stride, padding=padding,
                               dilation=dilation, groups=groups, bias=False, padding_mode=padding_mode,
                               device=device or "cpu", dtype=dtype)
        self.second = skip_init(nn.Conv2d, groups * rank, out_channels, 1, groups=groups, bias=bias,
                                device=device or "cpu", dtype=dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dense (out, in/groups, kh, kw) weight of the product, for modules that read it."""
        return self.weight_matrix().reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(left (out, r), right (r, in/groups * k * k)) of the shared factorisation.

        The right factor is read from the first group's channels (all groups start equal; after
        training they may differ, and then the product below is the exact per-group matrix of
        group 0 only, so :meth:`weight_matrix` builds the product group by group instead).
        """
        left = self.second.weight.reshape(self.out_channels, self.rank)
        right = self.first.weight[: self.rank].reshape(self.rank, -1)
        return left, right

    def weight_matrix(self) -> torch.Tensor:
        """(out, in/groups * k * k): output row o of group g is left[o] @ right_g."""
        g, r = self.groups, self.rank
        out_per = self.out_channels // g
        left = self.second.weight.reshape(g, out_per, r)
        right = self.first.weight.reshape(g, r, -1)
        return torch.bmm(left, right).reshape(self.out_channels, -1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"rank={self.rank}, groups={self.groups}")


LOW_RANK_TYPES = (LowRankLinear, LowRankConv2d)


PRUNABLE_TYPES = (nn.Linear, nn.Conv2d, LowRankLinear, LowRankConv2d)


class ShrunkLinear(nn.Linear):
    """An nn.Linear that ``pruning=neuron`` made smaller (units removed): the same layer, marked so that a
    checkpoint records its shape (``shrunk_shapes``) and :func:`build_model` rebuilds it."""


def shrunk_shapes(model: nn.Module) -> dict[str, list[int]]:
    """{layer name: [out, in]} of the layers ``pruning=neuron`` shrank (:class:`ShrunkLinear`)."""
    return {name: [m.out_features, m.in_features] for name, m in model.named_modules() if isinstance(m, ShrunkLinear)}
