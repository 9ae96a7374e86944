"""The training step (rmtprune.train.step): bitwise equal to the unfused step it replaced with the default
settings, and the precision / compile / deterministic options, on the CPU."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import rmtprune.train.step as step_mod
from rmtprune.config.build import data_settings, optimizer_settings, run_settings
from rmtprune.config.schema import DatasetConfig, RunConfig
from rmtprune.data import Data, load_data
from rmtprune.errors import RunFailed
from rmtprune.nn.models import build_model
from rmtprune.train.progress import BatchProgress
from rmtprune.train.state import make_optimizer
from rmtprune.train.step import configure_numerics, train_epoch, update_chunked_, update_foreach_

CPU = torch.device("cpu")


def reference_train_epoch(model, data, opt, gen, batch_size, l1, epoch):
    """The training epoch as it was before rmtprune.train.step (commit 920e682), kept as the reference:
    zero_grad(set_to_none=False), L1 by foreach add, torch.optim.SGD.step."""
    model.train()
    n = len(data.train_x)
    perm = torch.randperm(n, generator=gen).to(data.train_x.device)
    n_batches = math.ceil(n / batch_size)
    params = [p for p in model.parameters()]
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    for b in range(n_batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        x, y = data.train_x[idx], data.train_y[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if l1 > 0:
            grads = [p.grad for p in params]
            torch._foreach_add_(grads, torch._foreach_sign(params), alpha=l1)
        opt.step()
        with torch.no_grad():
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.argmax(1) == y).sum()
        if b % 20 == 19 or b == n_batches - 1:
            if not math.isfinite(float(loss_sum)):
                raise RunFailed("nan")
    return float(loss_sum) / n, float(correct) / n


def synthetic(train_size=600, test_size=100) -> Data:
    ds = OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                         {"name": "synthetic", "train_size": train_size, "test_size": test_size})
    return load_data(data_settings(ds), CPU)


def opt_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(RunConfig).optimizer, kw)


MLP = {"kind": "mlp", "widths": [784, 96, 64, 10]}
CNN = {"kind": "cnn", "input_shape": [1, 28, 28], "num_classes": 10, "channels": [4, 8], "kernel_size": 3,
       "pool_after": [1], "hidden": 32, "conv_dropout": 0.2, "fc_dropout": 0.3}


def train(spec, data, epochs, *, reference=False, lrs=(0.05, 0.03, 0.02), l1=1e-3, l2=1e-3, **kw):
    """Train from seed 0 with the old (reference) or the new epoch; returns metrics, model, optimizer."""
    torch.manual_seed(0)
    model = build_model(spec)
    cfg = opt_cfg(l2=l2)
    opt = make_optimizer(model, optimizer_settings(cfg), lrs[0])
    gen = torch.Generator().manual_seed(0)
    out = []
    for e in range(1, epochs + 1):
        for g in opt.param_groups:
            g["lr"] = lrs[e - 1]
        if reference:
            out.append(reference_train_epoch(model, data, opt, gen, 64, l1, e))
        else:
            with BatchProgress("none") as progress:
                out.append(train_epoch(model, data, opt, gen, 64, l1, progress, e, **kw))
    return out, model, opt


def assert_same_state(m1, o1, m2, o2):
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), name
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(o1.state[p1]["momentum_buffer"], o2.state[p2]["momentum_buffer"])


@pytest.mark.slow
@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_default_step_is_bitwise_the_unfused_step(spec, monkeypatch):
    # small chunks, so every weight is updated in several chunks with ragged ends
    monkeypatch.setattr(step_mod, "CPU_CHUNK", 999)
    data = synthetic()
    old, m_old, o_old = train(spec, data, 3, reference=True)
    new, m_new, o_new = train(spec, data, 3)
    assert new == old  # exact: same losses and accuracies to the last bit
    assert_same_state(m_old, o_old, m_new, o_new)


@pytest.mark.parametrize("momentum,weight_decay,l1", [(0.9, 1e-2, 1e-3), (0.0, 1e-2, 1e-3), (0.9, 0.0, 0.0),
                                                      (0.5, 0.0, 1e-3)])
@pytest.mark.parametrize("impl", ["chunked", "foreach"])
def test_fused_update_equals_sgd_with_the_l1_gradient(impl, momentum, weight_decay, l1):
    """theta' = theta - lr buf, buf = m buf + g + l1 sign(theta) + wd theta, bitwise as torch's SGD,
    from no momentum buffer (first step: buf = g) and from an existing one."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(37, 53), (53,), (3, 2, 5, 5), (1000,)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    params[0][0, :5] = 0.0  # sign(0) = 0: no L1 pull
    grads = [torch.randn(s, generator=gen) for s in shapes]
    for first in (True, False):
        bufs = [None if first else torch.randn(s, generator=gen) for s in shapes]
        ref_p = [p.clone().requires_grad_(False) for p in params]
        opt = torch.optim.SGD(ref_p, lr=0.1, momentum=momentum, weight_decay=weight_decay)
        for p, g, b in zip(ref_p, grads, bufs):
            p.grad = g.clone()
            if b is not None and momentum:
                opt.state[p]["momentum_buffer"] = b.clone()
        with torch.no_grad():
            if l1:
                torch._foreach_add_([p.grad for p in ref_p], torch._foreach_sign(ref_p), alpha=l1)
            opt.step()
        new_p, new_g = [p.clone() for p in params], [g.clone() for g in grads]
        new_b = [b.clone() if b is not None and momentum else None for b in bufs]
        if impl == "chunked":
            out = update_chunked_(new_p, new_g, new_b, 0.1, momentum, weight_decay, l1, chunk=100)
        else:
            out = update_foreach_(new_p, new_g, new_b, 0.1, momentum, weight_decay, l1)
        for p, q in zip(ref_p, new_p):
            assert torch.equal(p, q)
        if momentum:
            for p, b in zip(ref_p, out):
                assert torch.equal(opt.state[p]["momentum_buffer"], b)


def test_an_optimizer_the_step_does_not_fuse_runs_its_own_step():
    data = synthetic(300)
    results = []
    for reference in (True, False):
        torch.manual_seed(0)
        model = build_model(MLP)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
        gen = torch.Generator().manual_seed(0)
        if reference:
            results.append(reference_train_epoch(model, data, opt, gen, 64, 1e-3, 1))
        else:
            with BatchProgress("none") as progress:
                results.append(train_epoch(model, data, opt, gen, 64, 1e-3, progress, 1))
    assert results[0] == results[1]


def test_nan_loss_raises_at_a_logging_point():
    data = synthetic(300)
    with pytest.raises(RunFailed, match="loss became"):
        train(MLP, data, 1, lrs=(1e5,))


def numerics(**kw):
    return OmegaConf.merge(OmegaConf.structured(RunConfig), kw)


@pytest.fixture
def restore_numerics(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    configure_numerics(run_settings(numerics()), CPU)


def tf32_flag() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)


def test_deterministic_switches_torch_cudnn_and_cublas_and_back(restore_numerics):
    info = configure_numerics(run_settings(numerics(deterministic=True)), CPU)
    assert info["deterministic"] is True
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    configure_numerics(run_settings(numerics(deterministic=False)), CPU)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_tf32_sets_the_cuda_flags_and_reports_it_unused_on_the_cpu(restore_numerics):
    configure_numerics(run_settings(numerics(precision="fp32")), CPU)
    assert not tf32_flag()
    info = configure_numerics(run_settings(numerics(precision="tf32")), CPU)
    assert tf32_flag() and info["tf32"] is False  # requested, but TF32 does not exist on the CPU
    configure_numerics(run_settings(numerics(precision="bf16")), CPU)
    assert not tf32_flag()


def test_bf16_autocasts_the_forward_pass_and_still_learns():
    data = synthetic(640, 400)
    seen = []
    torch.manual_seed(0)
    model = build_model(MLP)
    model.layers[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = make_optimizer(model, optimizer_settings(opt_cfg()), 0.05)
    gen = torch.Generator().manual_seed(0)
    with BatchProgress("none") as progress:
        bf16 = [train_epoch(model, data, opt, gen, 64, 1e-4, progress, e, precision="bf16") for e in (1, 2)]
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    fp32 = train(MLP, data, 2, lrs=(0.05,) * 2, l1=1e-4)[0]
    assert bf16 != fp32  # bf16 matmuls round differently ...
    assert bf16[-1][1] > 0.6 and abs(bf16[-1][1] - fp32[-1][1]) < 0.05  # ... and learn as well (chance: 0.1)
    assert abs(bf16[-1][0] - fp32[-1][0]) < 0.1 * fp32[-1][0]


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step(restore_numerics):
    """torch.compile (Inductor on the CPU) fuses the update into one kernel: the same arithmetic up
    to rounding, so the losses agree to ~1e-5 relative, and the momentum lives in the optimizer."""
    pytest.importorskip("torch._inductor")
    configure_numerics(run_settings(numerics(compile=True)), CPU)
    data = synthetic(256, 64)
    spec = {"kind": "mlp", "widths": [784, 32, 10]}
    compiled, m_c, o_c = train(spec, data, 2, compile=True)
    eager, m_e, o_e = train(spec, data, 2)
    for (lc, ac), (le, ae) in zip(compiled, eager):
        assert lc == pytest.approx(le, rel=1e-4) and abs(ac - ae) <= 2 / 256
    for pc, pe in zip(m_c.parameters(), m_e.parameters()):
        assert torch.allclose(pc, pe, rtol=1e-3, atol=1e-5)
        assert o_c.state[pc]["momentum_buffer"].shape == pc.shape
