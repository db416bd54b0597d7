"""The sweep along the optimizer's update and Cockpit's alpha (landscape.probes.update), exact where they can be."""

import math

import pytest
import torch

from landscape.probes import gradient_sweep
from landscape.probes.optimizer import update_direction
from landscape.probes.update import step_alpha, update_sweep
from tests.probes.reference import CE, F64, backward, batch_for, mlp_bn


def test_the_update_sweep_under_plain_sgd_is_the_gradient_sweep():
    model = mlp_bn()
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    backward(model, batch)
    r = update_sweep(model, opt, CE, batch, [0.5, 2.0, 4.0])
    g = gradient_sweep(model, CE, batch, [0.05, 0.2, 0.4])
    assert r["losses"] == pytest.approx(g.losses, rel=1e-12)
    assert r["grad_change"] == pytest.approx(g.grad_change, rel=1e-10)
    assert r["beta_eff"] == pytest.approx(g.beta_eff, rel=1e-10)
    assert r["update_norm"] == pytest.approx(0.1 * g.grad_norm, rel=1e-12)
    assert r["slope"] == pytest.approx(-g.grad_norm, rel=1e-12)  # along -g the slope is -||g||
    assert r["scales"] == [0.5, 2.0, 4.0] and r["alpha"] is not None  # s = 1 evaluated for alpha, not reported


@pytest.mark.parametrize("distance, alpha", [(1.0, 0.0), (2.0, 1.0), (0.5, -0.5), (3.0, 2.0)])
def test_alpha_is_exact_on_a_parabola(distance, alpha):
    """f(tau) = (tau - 1)^2 + 3: the valley floor at tau = 1, back at the start's height at tau = 2."""
    f = lambda t: (t - 1) ** 2 + 3  # noqa: E731
    df = lambda t: 2 * (t - 1)  # noqa: E731
    assert step_alpha(distance, f(0), f(distance), df(0), df(distance)) == pytest.approx(alpha, abs=1e-12)
    assert step_alpha(1.0, 0.0, -1.0, -0.5, -1.5) == -1.0  # concave: still going downhill
    assert step_alpha(0.0, 1.0, 1.0, 0.0, 0.0) is None


def test_alpha_of_a_real_step_matches_the_fit_by_hand():
    model = mlp_bn()
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    backward(model, batch)
    r = update_sweep(model, opt, CE, batch, [1.0])
    u = update_direction(opt, model)
    w = {n: p.detach() for n, p in model.named_parameters()}
    d = math.sqrt(sum(float((v * v).sum()) for v in u.values()))
    from tests.probes.reference import literal_loss_and_grad

    f0, g0 = literal_loss_and_grad(model, batch)
    f1, g1 = literal_loss_and_grad(model, batch, {n: w[n] + u[n] for n in w})
    slope = lambda g: sum(float((g[n] * u[n]).sum()) for n in u) / d  # noqa: E731
    phi = torch.tensor([[1, 0, 0], [1, d, d * d], [0, 1, 0], [0, 1, 2 * d]], dtype=F64)
    c, b, a = torch.linalg.lstsq(phi, torch.tensor([[f0], [f1], [slope(g0)], [slope(g1)]], dtype=F64)).solution[:, 0]
    expected = -1.0 if a <= 0 else float(2 * d / (-b / a) - 1)
    assert r["alpha"] == pytest.approx(expected, rel=1e-8, abs=1e-12)
