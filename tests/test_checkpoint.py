"""checkpoint.save_atomic stores every tensor on the CPU, so checkpoints of GPU runs load anywhere."""

from __future__ import annotations

from collections import OrderedDict

import torch

from rmtprune.train.checkpoint import save_atomic, to_cpu


class OnGpu(torch.Tensor):
    """Stand-in for a CUDA tensor on a machine without one: a CPU tensor that reports device cuda:0
    and supports only what moving it to the CPU needs (detach, copy to cpu)."""

    @staticmethod
    def __new__(cls, data: torch.Tensor) -> "OnGpu":
        r = torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=data.dtype, strides=data.stride(),
                                                device=torch.device("cuda", 0))
        r.payload = data
        return r

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.detach.default:
            return OnGpu(args[0].payload)
        if func is torch.ops.aten._to_copy.default and kwargs.get("device") == torch.device("cpu"):
            return args[0].payload.clone()
        raise NotImplementedError(f"{func} on a stand-in GPU tensor")


def test_optimizer_state_of_a_gpu_run_is_saved_on_the_cpu(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = opt.state_dict()
    buffers = {k: v["momentum_buffer"] for k, v in state["state"].items()}
    for v in state["state"].values():
        v["momentum_buffer"] = OnGpu(v["momentum_buffer"])
    ckpt = {"optimizer": state, "rng": {"cuda": OnGpu(torch.arange(4, dtype=torch.uint8))},
            "state_dict": OrderedDict(w=OnGpu(torch.ones(2))), "history": [(1, OnGpu(torch.zeros(1)))], "lr": 0.1}
    assert all(v["momentum_buffer"].device.type == "cuda" for v in ckpt["optimizer"]["state"].values())

    save_atomic(ckpt, tmp_path / "checkpoint.pt")
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no map_location
    tensors = []

    def walk(obj):
        if torch.is_tensor(obj):
            tensors.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(loaded)
    assert len(tensors) == 5 and all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)
    for k, buf in buffers.items():
        assert torch.equal(loaded["optimizer"]["state"][k]["momentum_buffer"], buf)
    assert isinstance(loaded["state_dict"], OrderedDict) and loaded["lr"] == 0.1
    # and the state goes back into an optimizer (which puts it on its parameters' device)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded["optimizer"])
    assert all(opt2.state[p]["momentum_buffer"].device == p.device for p in model.parameters())


def test_to_cpu_keeps_cpu_tensors_and_plain_values():
    t = torch.ones(3)
    out = to_cpu({"a": t, "b": [1, "x", (t,)], "c": None})
    assert out["a"] is t and out["b"][2][0] is t and out["b"][:2] == [1, "x"] and out["c"] is None
