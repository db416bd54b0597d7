"""The gradient sweep (landscape.probes.sweeps) against its literal definition and a quadratic's exact answers."""

import pytest
import torch

from landscape.probes import (
    gradient_sweep,
    sharpness,
)
from tests.probes.reference import CE, F64, MODELS, Quadratic, batch_for, flat, literal_loss_and_grad


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_gradient_sweep_matches_the_literal_definition(make):
    model, etas = make(), [0.01, 0.05, 0.2]
    batch = batch_for(model)
    r = gradient_sweep(model, CE, batch, etas)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss0, g = literal_loss_and_grad(model, batch)
    assert r.loss == pytest.approx(loss0, rel=1e-12)
    assert r.grad_norm == pytest.approx(flat(g).norm().item(), rel=1e-12)
    ratios = []
    for k, eta in enumerate(etas):
        loss_k, g_k = literal_loss_and_grad(model, batch, {n: w[n] - eta * g[n] for n in w})
        change = (flat(g_k) - flat(g)).norm().item()
        assert r.losses[k] == pytest.approx(loss_k, rel=1e-10)
        assert r.grad_change[k] == pytest.approx(change, rel=1e-10)
        ratios.append(change / (eta * flat(g).norm().item()))
    assert r.beta_eff == pytest.approx(max(ratios), rel=1e-10)
    assert r.cost == {"forward": 4, "backward": 4, "hvp": 0}


def test_gradient_sweep_on_a_quadratic_is_exact():
    """L(w) = w'Aw/2: g = Aw, grad L(w - eta g) - g = -eta A g, so grad_change = eta ||Ag||
    and beta_eff = ||Ag|| / ||g|| (the curvature along the step), at every eta."""
    torch.manual_seed(0)
    M = torch.randn(6, 6, dtype=F64)
    A = M @ M.T + torch.eye(6, dtype=F64)
    w = torch.randn(6, dtype=F64)
    model = Quadratic(w.clone())
    quad = lambda out, _: 0.5 * out @ A @ out  # noqa: E731
    etas = [0.001, 0.01, 0.1]
    r = gradient_sweep(model, quad, (torch.zeros(1), None), etas)
    g = A @ w
    for k, eta in enumerate(etas):
        step = w - eta * g
        assert r.losses[k] == pytest.approx((0.5 * step @ A @ step).item(), rel=1e-12)
        assert r.grad_change[k] == pytest.approx(eta * (A @ g).norm().item(), rel=1e-10)
    assert r.beta_eff == pytest.approx(((A @ g).norm() / g.norm()).item(), rel=1e-10)
    # and the top eigenvalue of the quadratic's Hessian is A's
    s = sharpness(model, quad, (torch.zeros(1), None), iters=6, tol=1e-12)
    assert s.value == pytest.approx(torch.linalg.eigvalsh(A)[-1].item(), rel=1e-10)


def test_scale_free_companions_on_a_quadratic_are_exact():
    """The companions of Figure 4 read off a sweep's record: on L = w'Aw/2 the loss departs from its
    first-order prediction by eta^2 g'Ag/2, so rel_loss_departure = eta_max g'Ag / (2 g'g), and
    rel_grad_change = eta_max ||Ag|| / ||g||; both unchanged when w (hence g) is scaled by 1000."""
    from landscape.probes import registry

    torch.manual_seed(1)
    M = torch.randn(5, 5, dtype=F64)
    A = M @ M.T + torch.eye(5, dtype=F64)
    quad = lambda out, _: 0.5 * out @ A @ out  # noqa: E731
    etas = [0.002, 0.01, 0.02]
    w = torch.randn(5, dtype=F64)
    for scale in (1.0, 1000.0):
        r = gradient_sweep(Quadratic(scale * w), quad, (torch.zeros(1), None), etas).as_dict()
        g = A @ (scale * w)
        dep = registry.quantity("gradient_sweep", r, "rel_loss_departure")
        assert dep == pytest.approx((etas[-1] * (g @ A @ g) / (2 * g @ g)).item(), rel=1e-6)
        rel = registry.quantity("gradient_sweep", r, "rel_grad_change")
        assert rel == pytest.approx((etas[-1] * (A @ g).norm() / g.norm()).item(), rel=1e-10)
    # a record without the fields it needs, or with a zero gradient, has no value
    assert (
        registry.quantity(
            "gradient_sweep",
            {"loss": 1.0, "grad_norm": 0.0, "etas": [0.1], "losses": [1.0], "grad_change": [0.0]},
            "rel_loss_departure",
        )
        is None
    )
    assert registry.quantity("gradient_sweep", {"grad_change": [0.1]}, "rel_grad_change") is None


def test_relative_steps_are_fractions_of_the_weights_norm():
    """gradient_sweep with relative=True: each step's norm is etas[k] x ||w||, and the sweep is the plain sweep at
    those absolute steps."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from landscape.probes import Monitor, every, gradient_sweep

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    records = []
    monitor = Monitor(
        records.append,
        model,
        opt,
        F.cross_entropy,
        every(1),
        probes=["gradient_sweep"],
        options={"gradient_sweep": {"etas": [0.01, 0.03], "relative": True}},
    )
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    monitor.observe(1, (x, y), loss)
    monitor.close()
    v = records[0]["values"]
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert v["weight_norm"] == pytest.approx(float(w.norm()), rel=1e-12)
    assert [e * float(g.norm()) for e in v["etas"]] == pytest.approx([0.01 * float(w.norm()), 0.03 * float(w.norm())])
    plain = gradient_sweep(model, F.cross_entropy, (x, y), v["etas"])
    assert v["losses"] == pytest.approx(plain.losses, rel=1e-12)
