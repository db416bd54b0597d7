"""The sweep along the optimizer's update and Cockpit's alpha (landscape.probes.update), exact where they can be."""

import math

import pytest
import torch

from landscape.probes import gradient_sweep, sharpness
from landscape.probes.optimizer import update_direction
from landscape.probes.update import critical_search, critical_sharpness, step_alpha, update_sweep
from tests.probes.reference import CE, F64, assert_same, backward, batch_for, full_hessian, full_state, mlp_bn


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


# ------------------------------------------------------------------ critical sharpness (Kalra et al. 2026)

MSE = torch.nn.functional.mse_loss


def linear_regression(seed=0):
    """A model whose MSE loss is exactly quadratic in its weights: critical sharpness has a closed form."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(5, 3).to(F64)
    g = torch.Generator().manual_seed(seed + 1)
    return model, (torch.randn(32, 5, generator=g, dtype=F64), torch.randn(32, 3, generator=g, dtype=F64))


def step_and_grad(model, batch, loss_fn, opt, steps=3):
    """A few real steps (so momentum and Adam's moments are not empty), then the gradient of the next."""
    for _ in range(steps):
        model.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        opt.step()
    model.zero_grad()
    loss_fn(model(batch[0]), batch[1]).backward()


@pytest.mark.parametrize("a, b", [(-1.0, 2.0), (-0.3, 0.01), (-5.0, 400.0)])
def test_the_search_finds_a_quadratics_root_exactly_within_a_few_calls(a, b):
    """phi(s) = a s + b s^2 / 2 comes back to 0 at s = -2a/b; phi(s)/s is linear, so false position is exact."""
    r = critical_search(lambda s: a * s + 0.5 * b * s * s, max_evals=9, rtol=1e-6)
    assert r["s"] == pytest.approx(-2 * a / b, rel=1e-12) and r["converged"] and r["calls"] <= 9
    lo, hi = r["bracket"]
    assert lo <= -2 * a / b <= hi or r["s"] == pytest.approx(lo) or r["s"] == pytest.approx(hi)


def test_the_search_against_brent_on_a_curved_line_and_its_refusals():
    from scipy.optimize import brentq

    phi = lambda s: -s + 0.4 * s**2 + 0.2 * s**3  # noqa: E731  one root beyond 0, not a quadratic
    root = brentq(lambda s: phi(s) / s, 1e-9, 10.0, xtol=1e-14)
    r = critical_search(phi, max_evals=12, rtol=1e-8)
    assert r["s"] == pytest.approx(root, rel=1e-6)
    overflow = critical_search(lambda s: -s if s < 3 else math.inf, max_evals=20, rtol=1e-3)
    assert overflow["s"] == pytest.approx(3.0, rel=1e-2)  # an overflowing loss counts as a rise
    falls = critical_search(lambda s: -s, max_evals=4, rtol=1e-3)
    assert falls["s"] is None and falls["above"] == 8.0  # 1, 2, 4, 8: still falling
    rises = critical_search(lambda s: s, max_evals=4, rtol=1e-3)
    assert rises["s"] is None and rises["below"] == 0.125


@pytest.mark.parametrize("make", ["sgd", "sgd_momentum", "adam"])
def test_critical_sharpness_on_a_quadratic_is_the_curvature_along_the_update(make):
    """Exact: on a quadratic loss, lambda_c = d'Hd / (-g'd) with d = u / lr; under plain SGD g'Hg / g'g,
    at most the top eigenvalue. Forward passes only, at most max_forward of them; the model untouched."""
    model, batch = linear_regression()
    lr = {"sgd": 0.05, "sgd_momentum": 0.05, "adam": 0.01}[make]
    opt = {
        "sgd": lambda p: torch.optim.SGD(p, lr=lr),
        "sgd_momentum": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p, lr=lr),
    }[make](model.parameters())
    step_and_grad(model, batch, MSE, opt)
    before = full_state(model, opt)
    r = critical_sharpness(model, opt, MSE, batch, max_forward=10, rtol=1e-6)
    assert_same(before, full_state(model, opt))
    H = full_hessian(model, batch, MSE)[0]
    d = torch.cat([v.reshape(-1) for v in update_direction(opt, model).values()]) / lr
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    expected = float(d @ H @ d / -(g @ d))
    assert r["critical_sharpness"] == pytest.approx(expected, rel=1e-9)
    assert r["over_threshold"] == pytest.approx(expected / (2 / lr), rel=1e-9) and r["threshold"] == 2 / lr
    assert r["cost"]["forward"] <= 10 and r["cost"]["backward"] == 0 and r["cost"]["hvp"] == 0
    if make == "sgd":
        assert expected == pytest.approx(float(g @ H @ g / (g @ g)), rel=1e-12)
        assert r["critical_sharpness"] <= float(torch.linalg.eigvalsh(H)[-1]) * (1 + 1e-9)


def test_critical_sharpness_on_a_small_network_against_a_literal_scan_and_the_hvp_sharpness():
    """A BN network in float64: the literal definition (the loss along the step, scanned on a fine grid and
    the first rise refined by Brent's method) within rtol; its quadratic prediction d'Hd / (-g'd) from the
    exact Hessian within 10%; and under SGD below the top eigenvalue (sharpness probe, Lanczos)."""
    from scipy.optimize import brentq

    from tests.probes.reference import literal_loss_and_grad

    model = mlp_bn()
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)  # a step beyond its critical one (s_c about 0.55)
    step_and_grad(model, batch, CE, opt, steps=5)
    r = critical_sharpness(model, opt, CE, batch, max_forward=10, rtol=1e-4)
    u = update_direction(opt, model)
    w = {n: p.detach() for n, p in model.named_parameters()}
    f0 = literal_loss_and_grad(model, batch)[0]
    phi = lambda s: literal_loss_and_grad(model, batch, {n: w[n] + s * u[n] for n in w})[0] - f0  # noqa: E731
    grid = [0.01 * k for k in range(1, 500)]
    first = next(s for s in grid if phi(s) >= 0)
    s_c = brentq(phi, first - 0.01, first, xtol=1e-12)
    assert r["critical_multiple"] == pytest.approx(s_c, rel=1e-3) and r["cost"]["forward"] <= 10
    assert r["critical_sharpness"] == pytest.approx(2 / (s_c * 3.0), rel=1e-3)
    H, g, _, _ = full_hessian(model, batch)
    quadratic = float(g @ H @ g / (g @ g))
    assert r["critical_sharpness"] == pytest.approx(quadratic, rel=0.1)
    top = sharpness(model, CE, batch, iters=40).value
    assert r["critical_sharpness"] <= top
