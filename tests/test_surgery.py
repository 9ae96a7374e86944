"""Layer surgery: exactness, Eckart–Young optimality, parameter counts, trainability."""

import numpy as np
import pytest
import torch
from torch import nn

from rmtprune.nn.geometry import param_count
from rmtprune.nn.layers import LowRankConv2d, LowRankLinear
from rmtprune.nn.surgery import apply_rank, layer_matrix, layer_svd, split

torch.manual_seed(0)


def test_full_rank_split_reproduces_a_linear_layer():
    layer = nn.Linear(60, 40).double()
    x = torch.randn(8, 60, dtype=torch.float64)
    new = split(layer, layer_svd(layer), 40)
    assert isinstance(new, LowRankLinear) and new.rank == 40
    torch.testing.assert_close(new(x), layer(x), rtol=1e-10, atol=1e-10)
    assert new.second.bias is not None and torch.equal(new.second.bias, layer.bias)


@pytest.mark.parametrize("stride,padding,groups,dilation", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 4, 2), (2, 1, 2, 1)])
def test_full_rank_split_reproduces_a_conv_layer(stride, padding, groups, dilation):
    conv = nn.Conv2d(8, 12, 3, stride=stride, padding=padding, groups=groups, dilation=dilation).double()
    x = torch.randn(2, 8, 11, 11, dtype=torch.float64)
    p = min(layer_matrix(conv).shape)
    new = split(conv, layer_svd(conv), p)
    assert isinstance(new, LowRankConv2d)
    assert new.first.stride == conv.stride and new.first.padding == conv.padding and new.first.groups == groups
    torch.testing.assert_close(new(x), conv(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(new.weight_matrix(), layer_matrix(conv), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("module", [nn.Linear(50, 30), nn.Conv2d(6, 20, 3)])
def test_rank_r_split_is_the_best_rank_r_approximation(module):
    module = module.double()
    w = layer_matrix(module).numpy()
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    for r in (1, 3, 7):
        new = split(module, layer_svd(module), r)
        approx = layer_matrix(new).numpy()
        np.testing.assert_allclose(approx, (u[:, :r] * s[:r]) @ vt[:r], atol=1e-10)
        # Eckart–Young: the error is exactly the discarded spectrum
        assert np.linalg.norm(w - approx) == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), rel=1e-9)
        assert np.linalg.norm(w - approx, 2) == pytest.approx(s[r], rel=1e-9)


def test_parameter_counts_match_the_formula():
    lin = nn.Linear(300, 200)
    out = apply_rank(lin, 20, 200)
    assert out.action == "split"
    assert param_count(out.module) == (300 + 200) * 20 + 200
    conv = nn.Conv2d(32, 64, 3)
    out = apply_rank(conv, 10, 64)
    assert param_count(out.module) == 10 * (32 * 9 + 64) + 64
    grouped = nn.Conv2d(32, 64, 3, groups=4)
    out = apply_rank(grouped, 5, 64)
    assert param_count(out.module) == 5 * (32 * 9 + 64) + 64


def test_no_saving_truncates_in_place_or_skips():
    lin = nn.Linear(100, 100).double()
    w = layer_matrix(lin).numpy()
    u, s, vt = np.linalg.svd(w)
    ident = id(lin.weight)
    out = apply_rank(lin, 80, 100)  # 200 * 80 > 100 * 100: no saving
    assert out.action == "truncate" and out.module is lin and id(lin.weight) == ident
    assert np.linalg.matrix_rank(lin.weight.detach().numpy()) == 80
    np.testing.assert_allclose(lin.weight.detach().numpy(), (u[:, :80] * s[:80]) @ vt[:80], atol=1e-10)
    lin2 = nn.Linear(100, 100)
    before = lin2.weight.detach().clone()
    out = apply_rank(lin2, 80, 100, truncate=False)
    assert out.action == "skip_no_saving" and torch.equal(lin2.weight, before)
    assert apply_rank(lin2, 100, 100).action == "keep"


def test_resplit_keeps_bias_and_uses_the_product():
    lin = nn.Linear(80, 60).double()
    first = apply_rank(lin, 30, 60).module
    second = apply_rank(first, 10, 30)
    assert second.action == "split" and second.module.rank == 10
    assert torch.equal(second.module.second.bias, lin.bias)
    w = layer_matrix(lin).numpy()
    u, s, vt = np.linalg.svd(w)
    np.testing.assert_allclose(layer_matrix(second.module).numpy(), (u[:, :10] * s[:10]) @ vt[:10], atol=1e-9)


def test_qr_path_svd_of_a_split_layer_matches_dense_svd():
    lr = LowRankLinear(70, 50, 12).double()  # factors are created uninitialised: fill them
    with torch.no_grad():
        for p in lr.parameters():
            p.normal_()
    u, s, vh = layer_svd(lr)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(layer_matrix(lr).numpy(), compute_uv=False)[:12], rtol=1e-9)
    torch.testing.assert_close((u * s) @ vh, layer_matrix(lr))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_and_dtype_are_kept(dtype):
    lin = nn.Linear(40, 30).to(dtype)
    new = apply_rank(lin, 5, 30).module
    assert all(p.dtype == dtype for p in new.parameters())


def test_one_optimizer_step_changes_the_new_factors():
    lin = nn.Linear(40, 30)
    new = apply_rank(lin, 5, 30).module
    opt = torch.optim.SGD(new.parameters(), lr=0.1)
    before = [p.detach().clone() for p in new.parameters()]
    loss = new(torch.randn(16, 40)).pow(2).sum()
    loss.backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, new.parameters()))


@pytest.mark.parametrize("shape", [(40, 200), (200, 40), (60, 60)])
def test_the_gram_path_gives_the_svd_of_the_layer(shape):
    """The float64 Gram eigendecomposition (the GPU's driver for rectangular layers) against the SVD:
    the same singular values and the same rank-r truncations."""
    out, inp = shape
    layer = nn.Linear(inp, out).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out, 5, dtype=torch.float64) @ torch.randn(5, inp, dtype=torch.float64)
                           + 0.01 * torch.randn(out, inp, dtype=torch.float64))
    u, s, vh = layer_svd(layer, method="gram")
    u2, s2, vh2 = layer_svd(layer, method="svd")
    np.testing.assert_allclose(s.numpy(), s2.numpy(), rtol=1e-9, atol=1e-9 * float(s2[0]))
    for r in (1, 5, 20):
        torch.testing.assert_close((u[:, :r] * s[:r]) @ vh[:r], (u2[:, :r] * s2[:r]) @ vh2[:r], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close((u * s) @ vh, layer.weight.detach(), rtol=1e-7, atol=1e-9)
