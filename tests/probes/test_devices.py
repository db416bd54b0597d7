"""The GPU path made ready without a GPU: the trainer and every probe run with the model on the ``meta``
device under a dispatch mode that fails any operation mixing a device tensor with a host (CPU) tensor and
records every read-back to the host. A CUDA user would meet exactly these operations, so a probe that made
a tensor on the CPU by accident (``torch.zeros(n)`` without ``device=``), or copied a parameter-sized vector
to the host inside its loop, fails here.

Reads of values (``.item()``, ``float(t)``, ``.tolist()``) cannot run on ``meta`` (it holds no data): the
mode answers them with stand-ins (0.5 for a float, -1 for an integer, True for a flag), which is enough
for every code path to run to its end; the numbers are meaningless and never checked.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from landscape.probes import registry
from landscape.probes.monitor import Monitor
from landscape.probes.schedules import every

SUMMARY = 1024  # the most elements one read-back to the host may carry (a probe's summary, never a vector)


def _stand_in(shape, dtype):
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype)
    if dtype.is_floating_point or dtype.is_complex:
        return torch.full(shape, 0.5, dtype=dtype)
    return torch.full(shape, -1, dtype=dtype)


class DeviceGuard(TorchDispatchMode):
    """Records every op that mixes devices (tensors with at least one dimension: a 0-d CPU tensor is a
    scalar PyTorch moves itself) and every read-back from the meta device, answering reads with stand-ins."""

    def __init__(self):
        super().__init__()
        self.mixed: list[str] = []
        self.reads: list[int] = []  # elements per read-back

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default and tensors[0].device.type == "meta":
            self.reads.append(1)
            return _stand_in((), tensors[0].dtype).item()
        if (
            func is torch.ops.aten._to_copy.default
            and tensors[0].device.type == "meta"
            and kwargs.get("device") is not None
            and torch.device(kwargs["device"]).type == "cpu"
        ):
            self.reads.append(tensors[0].numel())
            return _stand_in(tensors[0].shape, kwargs.get("dtype") or tensors[0].dtype)
        devices = {t.device.type for t in tensors if t.dim() > 0}
        if len(devices) > 1:
            self.mixed.append(f"{func} on {sorted(devices)}")
        return func(*args, **kwargs)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_the_guard_catches_a_host_tensor_meeting_a_device_one():
    guard = DeviceGuard()
    with guard:
        w = torch.ones(5, device="meta")
        with pytest.raises(RuntimeError):  # meta refuses it too, as CUDA would
            _ = w + torch.ones(5)  # the mistake: a tensor made without device=
        _ = float(w.sum())
        _ = w.tolist()
    assert guard.mixed and guard.reads == [1, 5]


@pytest.mark.parametrize("name", registry.names())
def test_every_probe_keeps_to_the_models_device(name, monkeypatch):
    monkeypatch.setattr("landscape.probes.monitor.REFUSE_META", False)
    model = _model().to("meta")
    x, y = torch.randn(8, 3, 8, 8, device="meta"), torch.zeros(8, dtype=torch.long, device="meta")
    opt = (
        torch.optim.Adam(model.parameters(), lr=0.1)
        if name == "update_sweep"
        else torch.optim.SGD(model.parameters(), lr=0.1)
    )
    n = sum(p.numel() for p in model.parameters())
    guard, records = DeviceGuard(), []
    with guard:
        monitor = Monitor(
            records.append,
            model,
            opt,
            nn.functional.cross_entropy,
            every(1),
            probes=[name],
            layers=["type:Conv2d", "type:Linear"],
        )
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        monitor.observe(1, (x, y), loss)
        opt.step()
        monitor.close()
    assert [r["probe"] for r in records] == [name]
    assert guard.mixed == []
    assert max(guard.reads, default=0) <= min(SUMMARY, n - 1), f"{name} read {max(guard.reads)} elements back"


def test_the_trainer_with_probes_keeps_to_the_models_device(tmp_path, monkeypatch):
    monkeypatch.setattr("landscape.probes.monitor.REFUSE_META", False)
    import landscape.train as T
    from landscape.config import load_config

    cfg = {
        "name": "meta",
        "steps": 4,
        "model": {"arch": "vgg", "vgg": {"width": 0.0625}},
        "data": {"dataset": "synthetic", "synthetic_size": 32, "batch_size": 8},
        "log": {"train_every": 2, "eval_every": 2, "checkpoint_every": 4},
        "probes": {
            "enabled": ["gradient_sweep", "sharpness", "ics_opti", "activation_stats", "edge_eigenvalues"],
            "schedule": "every",
            "every": 2,
            "layers": ["type:Conv2d", "type:Linear"],
            "sharpness": {"iters": 4},
            "edge_eigenvalues": {"max_products": 8, "min_products": 8},
        },
    }
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(T, "resolve_device", lambda name: torch.device("meta"))
    guard = DeviceGuard()
    with guard:
        status = T.train(load_config(path), out=tmp_path / "runs", progress=False)
    assert status["status"] == "done" and status["step"] == 4
    assert guard.mixed == []
    assert max(guard.reads) <= SUMMARY, f"the trainer read {max(guard.reads)} elements back"
