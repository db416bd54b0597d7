"""The curvature probes (landscape.probes.hessian) against exact answers on tiny float64 models: the full Hessian,
its blocks, its trace and its eigenvalues, a real Adam state; purity."""

import numpy as np
import pytest
import torch
from torch import nn

from landscape.probes import (
    Monitor,
    curvature,
    explicit,
    hessian_trace,
    layer_sharpness,
    preconditioner,
    resolve_layers,
    sharpness,
    spectral_density,
)
from tests.probes.reference import (
    CE,
    CURVATURE_CALLS,
    F64,
    MODELS,
    assert_same,
    batch_for,
    full_hessian,
    full_state,
    mlp_bn,
    offsets,
)


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_sharpness_matches_the_full_hessian(make):
    model = make()
    batch = batch_for(model)
    H, _, names, _ = full_hessian(model, batch)
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert 100 <= w0.numel() <= 400  # a few hundred parameters
    top = torch.linalg.eigvalsh(H)[-1].item()
    r = sharpness(model, CE, batch, iters=200, tol=1e-9)
    assert r.converged and r.value == pytest.approx(top, rel=1e-7)
    assert r.hvps == r.cost["hvp"] and r.hvps < w0.numel()
    quick = sharpness(model, CE, batch, iters=200, tol=1e-2)
    assert abs(quick.value - top) <= quick.residual + 1e-12  # the residual bounds the error
    assert quick.hvps <= r.hvps


def adam_trained(make, steps=3, amsgrad=False, cls=torch.optim.Adam):
    model = make()
    batch = batch_for(model)
    opt = cls(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-6, amsgrad=amsgrad)
    for _ in range(steps):
        opt.zero_grad()
        CE(model(batch[0]), batch[1]).backward()
        opt.step()
    return model, batch, opt


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("amsgrad", [False, True])
def test_preconditioned_sharpness_is_the_top_eigenvalue_of_p_inverse_h_from_a_real_adam_state(make, amsgrad):
    model, batch, opt = adam_trained(make, amsgrad=amsgrad)
    H, _, names, shapes = full_hessian(model, batch)
    P = preconditioner(opt, model)
    # literally: v_hat = v / (1 - beta2^t), P = sqrt(v_hat) + eps
    for n, p in model.named_parameters():
        state = opt.state[p]
        v = state["max_exp_avg_sq"] if amsgrad else state["exp_avg_sq"]
        assert torch.allclose(P[n], (v / (1 - 0.99**3)).sqrt() + 1e-6, rtol=1e-14, atol=0)
    d = torch.cat([P[n].reshape(-1) for n in names]).rsqrt()
    top = torch.linalg.eigvalsh(d[:, None] * H * d[None, :])[-1].item()
    top_pinv_h = torch.linalg.eigvals(torch.diag(d**2) @ H).real.max().item()  # the same spectrum as P^-1 H
    assert top == pytest.approx(top_pinv_h, rel=1e-8)
    r = sharpness(model, CE, batch, iters=300, tol=1e-10, preconditioner=P)
    assert r.preconditioned and r.value == pytest.approx(top, rel=1e-7)
    assert abs(sharpness(model, CE, batch, iters=300, tol=1e-10).value - top) > 1e-3 * abs(top)  # it differs from H's


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_curvature_is_g_h_g_over_g_g(make):
    model = make()
    batch = batch_for(model)
    H, g, _, _ = full_hessian(model, batch)
    r = curvature(model, CE, batch)
    assert r.value == pytest.approx((g @ H @ g / (g @ g)).item(), rel=1e-10)
    assert r.grad_norm == pytest.approx(g.norm().item(), rel=1e-12) and r.cost["hvp"] == 1


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_layer_sharpness_is_the_top_eigenvalue_of_each_diagonal_block(make):
    model = make()
    batch = batch_for(model)
    H, _, names, shapes = full_hessian(model, batch)
    at = offsets(names, shapes)
    r = layer_sharpness(model, CE, batch, iters=200, tol=1e-10)
    groups = resolve_layers(model)
    assert r.layers == [label for label, _ in groups]
    for label, params in groups:
        idx = torch.cat([torch.arange(*at[n]) for n in params])
        top = torch.linalg.eigvalsh(H[idx][:, idx])[-1].item()
        assert r.values[label] == pytest.approx(top, rel=1e-7, abs=1e-10), label
    grouped = layer_sharpness(model, CE, batch, {"all": [""]}, iters=300, tol=1e-10)  # one group: the whole Hessian
    assert grouped.values["all"] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-7)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_the_trace_estimate_is_within_its_standard_error_of_the_exact_trace(method):
    model = mlp_bn()
    batch = batch_for(model)
    H, _, _, _ = full_hessian(model, batch)
    exact = torch.trace(H).item()
    z = np.array(
        [
            (lambda r: (r.value - exact) / r.stderr)(hessian_trace(model, CE, batch, samples=30, method=method, seed=s))
            for s in range(60)
        ]
    )
    # z-scores of an unbiased estimate with an honest standard error: mean near 0, spread near 1
    assert abs(z.mean()) < 0.45 and 0.6 < z.std() < 1.6
    assert np.mean(np.abs(z) < 2.5) >= 0.9


def test_hutch_plus_plus_is_exact_when_the_hessian_has_low_rank():
    """On a linear least-squares model with 2 inputs, H = 2 X^T X / n has rank 2 in a 2-dim space:
    the subspace part finds it all and the remainder is zero."""
    model = nn.Linear(2, 1, bias=False).to(F64)
    x = torch.randn(20, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(20, 1, dtype=F64, generator=torch.Generator().manual_seed(1))
    r = hessian_trace(model, nn.functional.mse_loss, (x, y), samples=6, method="hutch++")
    assert r.value == pytest.approx(torch.trace(2 * x.T @ x / 20).item(), rel=1e-10) and r.stderr < 1e-10


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_the_spectral_density_is_close_to_the_exact_eigenvalues(make):
    from scipy.stats import wasserstein_distance

    model = make()
    batch = batch_for(model)
    H, _, _, _ = full_hessian(model, batch)
    exact = torch.linalg.eigvalsh(H).numpy()
    r = spectral_density(model, CE, batch, vectors=20, steps=40, bins=30)
    nodes, weights = np.concatenate(r.nodes), np.concatenate(r.weights)
    assert all(abs(sum(w) - 1) < 1e-10 for w in r.weights) and sum(r.density) == pytest.approx(1.0, rel=1e-10)
    spread = exact.max() - exact.min()
    # the quadrature measure is within 2% of the spectrum's range of the true eigenvalue distribution
    assert wasserstein_distance(nodes, exact, u_weights=weights) < 0.02 * spread
    assert nodes.max() == pytest.approx(exact.max(), rel=1e-6)  # Lanczos finds the extreme eigenvalues
    assert len(r.edges) == 31


@pytest.mark.parametrize("probe", CURVATURE_CALLS)
def test_a_curvature_probe_leaves_everything_as_it_found_it(probe):
    model, batch, opt = adam_trained(lambda: mlp_bn(dropout=0.3), cls=torch.optim.AdamW)
    before = full_state(model, opt)
    CURVATURE_CALLS[probe](model, batch, opt)
    assert_same(before, full_state(model, opt))


def test_monitor_records_preconditioned_sharpness_against_adams_threshold_and_warm_starts(tmp_path):
    model = mlp_bn()
    batch = batch_for(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        CE,
        explicit([1, 3, 4]),
        probes=["preconditioned_sharpness", "curvature"],
        options={"preconditioned_sharpness": {"iters": 50, "tol": 1e-6, "warm_start": True}},
    )
    for step in range(1, 5):
        mon.before_forward(step)
        loss = CE(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        mon.observe(step, batch, loss)
        if step == 3:
            expected = sharpness(model, CE, batch, iters=300, tol=1e-10, preconditioner=preconditioner(opt, model))
        opt.step()
    sharp = [r for r in records if r["probe"] == "preconditioned_sharpness"]
    assert sharp[0]["values"]["value"] is None and "before its first step" in sharp[0]["values"]["note"]
    assert sharp[1]["values"]["preconditioned"] and sharp[1]["values"]["threshold"] == pytest.approx(38 / 0.01)
    assert sharp[1]["values"]["value"] == pytest.approx(expected.value, rel=1e-5)
    assert not sharp[1]["values"]["warm_start"] and sharp[2]["values"]["warm_start"]
    assert "vector" not in sharp[1]["values"] and [r["step"] for r in records if r["probe"] == "curvature"] == [1, 3, 4]
