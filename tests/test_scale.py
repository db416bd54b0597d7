"""Probes where a model has no double backward, or trains in mixed precision.

- The finite-difference Hessian-vector product (a central difference of two gradients, step
  ``eps^(1/3) max(||w||, 1) / ||v||``) against the exact one: relative error below 1e-9 in float64
  (3e-11 measured) and 1e-3 in float32 (2e-5 measured).
- A ViT with PyTorch's fused attention (``attention="sdpa"``, no double backward on the CPU) is probed
  through the finite difference automatically; its sharpness and trace equal the written-out ViT's
  (exact products) to 1e-5 relative in float64.
- Under bf16 autocast the probes' values lie within 2% of float32's (about five bf16 epsilons; 0.1-0.4%
  measured on this model).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape.probes.functional import Objective, current_params, evaluation
from landscape.probes.monitor import Monitor
from landscape.probes.schedules import every


def _rel(a: dict, b: dict) -> float:
    num = sum(float(((a[n] - b[n]).double() ** 2).sum()) for n in a) ** 0.5
    return num / sum(float((a[n].double() ** 2).sum()) for n in a) ** 0.5


@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_the_finite_difference_hvp_against_the_exact_one(dtype, bound):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 3)).to(dtype)
    x, y = torch.randn(32, 10, dtype=dtype), torch.randint(0, 3, (32,))
    w = current_params(model)
    g = torch.Generator().manual_seed(1)
    v = {n: torch.randn(p.shape, generator=g).to(dtype) for n, p in w.items()}
    f = Objective.of(model, nn.functional.cross_entropy, (x, y))
    with evaluation(hvp="exact"):
        exact = f.hessian_operator(w)[2](v)
    with evaluation(hvp="finite_difference"):
        fd = f.hessian_operator(w)[2](v)
    assert f.cost.fd_hvp == 1 and _rel(exact, fd) < bound


def _records(model, x, y, probes, **kw):
    out = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(out.append, model, opt, nn.functional.cross_entropy, every(1), probes=probes, step_hook=False,
                      options={"sharpness": {"iters": 20, "tol": 1e-10}, "hessian_trace": {"samples": 8}}, **kw)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    monitor.observe(1, (x, y), loss)
    monitor.close()
    return {r["probe"]: r for r in out}


def _vits():
    from landscape.models.vit import ViT

    torch.manual_seed(0)
    explicit = ViT(dim=16, depth=1, heads=2).double()
    sdpa = ViT(dim=16, depth=1, heads=2, attention="sdpa").double()
    sdpa.load_state_dict(explicit.state_dict())
    return explicit, sdpa


def test_an_sdpa_vit_is_probed_by_finite_differences_and_agrees_with_written_out_attention():
    explicit, sdpa = _vits()
    x, y = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    a, b = _records(explicit, x, y, ["sharpness", "hessian_trace"]), _records(sdpa, x, y, ["sharpness", "hessian_trace"])
    for probe in ("sharpness", "hessian_trace"):
        assert "fd_hvp" not in a[probe]["cost"] and b[probe]["cost"]["fd_hvp"] == b[probe]["cost"]["hvp"] > 0
        va, vb = a[probe]["values"]["value"], b[probe]["values"]["value"]
        assert abs(va - vb) <= 1e-5 * abs(va)


def test_exact_hvps_asked_of_a_model_without_double_backward_raise():
    _, sdpa = _vits()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    with pytest.raises(RuntimeError, match="not implemented"):
        _records(sdpa, x, y, ["sharpness"], hvp="exact")
    with pytest.raises(ValueError, match="hvp must be one of"):
        _records(sdpa, x, y, ["sharpness"], hvp="fd")


def test_probes_under_bf16_autocast_are_within_two_percent_of_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    probes = ["gradient_sweep", "sharpness", "hessian_trace", "loss_slice"]
    full = _records(model, x, y, probes)
    half = _records(model, x, y, probes, autocast={"device_type": "cpu", "dtype": torch.bfloat16})
    pairs = [(full["gradient_sweep"]["values"][k], half["gradient_sweep"]["values"][k]) for k in ("loss", "grad_norm")]
    pairs += [(full[p]["values"]["value"], half[p]["values"]["value"]) for p in ("sharpness", "hessian_trace")]
    pairs += list(zip(full["loss_slice"]["values"]["losses"], half["loss_slice"]["values"]["losses"]))
    assert all(abs(a - b) <= 0.02 * abs(a) for a, b in pairs), pairs
    assert any(a != b for a, b in pairs)  # autocast really ran: bf16 rounding shows somewhere
