"""Section 4's probes and the activation-space Hessian against literal float64 computations: per-channel loops,
explicit Hessians of the loss as a function of a layer's activations, and the paper's identities."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.models import NoisyBatchNorm
from landscape.probes import activation_hessian, bn_curvature, bn_gradient
from landscape.probes.theory import batch_norm_layers


def _mlp(eps=1e-5, channels=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, channels), nn.BatchNorm1d(channels, eps=eps), nn.Tanh(), nn.Linear(channels, 2))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-0.5, 0.5)
    model.double()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (6,))
    return model, (x, y)


def _cnn(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(inplace=True),  # in place after the tapped output: the tap must hand on a copy
        nn.Conv2d(3, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).double()
    with torch.no_grad():
        for m in (model[1], model[4]):
            m.weight.uniform_(0.5, 2.0)
            m.bias.uniform_(-0.5, 0.5)
    return model, (torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (5,)))


def _loss_of_y(model, batch):
    """The MLP's loss as a function of the BN layer's input y (its first linear layer's output), literally."""
    x, target = batch
    lin, bn, act, head = model
    y0 = lin(x).detach()

    def after_bn(z):
        return F.cross_entropy(head(act(z)), target)

    def loss(y):
        z = F.batch_norm(y, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        return after_bn(z)

    return y0, loss, after_bn


def test_theorem_4_1_terms_against_a_literal_per_channel_computation():
    model, batch = _mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    r = bn_gradient(model, F.cross_entropy, batch)
    assert r.layers == ["1"]
    y0, loss, after_bn = _loss_of_y(model, batch)
    y = y0.clone().requires_grad_()
    (gy,) = torch.autograd.grad(loss(y), y)
    bn = model[1]
    m = y0.shape[0]
    lhs = scaled = mean_part = proj_part = exact = 0.0
    for j in range(y0.shape[1]):
        col = y0[:, j]
        mu, var = col.mean(), ((col - col.mean()) ** 2).mean()
        sigma = math.sqrt(var + bn.eps)
        y_hat = (col - mu) / sigma
        z = (bn.weight[j] * y_hat + bn.bias[j]).detach()
        zz = F.batch_norm(y0, None, None, bn.weight, bn.bias, training=True, eps=bn.eps).detach().requires_grad_()
        (gz,) = torch.autograd.grad(after_bn(zz), zz)
        g = gz[:, j]
        assert torch.allclose(zz[:, j], z)
        k = float(bn.weight[j].detach()) ** 2 / sigma**2
        rho = float(var / (var + bn.eps))
        lhs += float((gy[:, j] ** 2).sum())
        scaled += k * float((g**2).sum())
        mean_part += k * float(g.sum()) ** 2 / m
        proj_part += k * float((g * y_hat).sum()) ** 2 / m
        exact += k * (float((g**2).sum()) - float(g.sum()) ** 2 / m - (2 - rho) * float((g * y_hat).sum()) ** 2 / m)
    assert r.grad_y_sq["1"] == pytest.approx(lhs, rel=1e-12)
    assert r.scaled["1"] == pytest.approx(scaled, rel=1e-12)
    assert r.mean_part["1"] == pytest.approx(mean_part, rel=1e-10, abs=1e-16)
    assert r.proj_part["1"] == pytest.approx(proj_part, rel=1e-10, abs=1e-16)
    assert r.bound["1"] == pytest.approx(scaled - mean_part - proj_part, rel=1e-12)
    assert lhs == pytest.approx(exact, rel=1e-12)  # the identity with eps, to float64 rounding
    assert r.identity_error["1"] < 1e-12
    assert r.violations["1"] == 0 and r.tightness["1"] <= 1 + 1e-12
    assert r.scale_factor["1"] * r.projection_factor["1"] == pytest.approx(lhs / r.grad_z_sq["1"], rel=1e-12)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # pure: running stats untouched


def test_with_a_negligible_eps_the_paper_identity_is_exact():
    model, batch = _mlp(eps=1e-30)
    r = bn_gradient(model, F.cross_entropy, batch)
    # (2 - rho) = 1 to rounding: equality (PyTorch refuses eps = 0)
    assert r.grad_y_sq["1"] == pytest.approx(r.bound["1"], rel=1e-12)
    assert r.tightness["1"] == pytest.approx(1.0, abs=1e-12)


def test_theorem_4_2_identity_against_explicit_hessians():
    model, batch = _mlp(channels=2)
    r = bn_curvature(model, F.cross_entropy, batch)
    y0, loss, after_bn = _loss_of_y(model, batch)
    bn = model[1]
    H_y = torch.autograd.functional.hessian(loss, y0).reshape(y0.numel(), y0.numel())
    z0 = F.batch_norm(y0, None, None, bn.weight, bn.bias, training=True, eps=bn.eps).detach()
    H_z = torch.autograd.functional.hessian(after_bn, z0).reshape(z0.numel(), z0.numel())
    y = y0.clone().requires_grad_()
    (v,) = torch.autograd.grad(loss(y), y)
    z = z0.clone().requires_grad_()
    (g,) = torch.autograd.grad(after_bn(z), z)
    J = torch.autograd.functional.jacobian(
        lambda t: F.batch_norm(t, None, None, bn.weight, bn.bias, training=True, eps=bn.eps), y0
    ).reshape(y0.numel(), y0.numel())
    v, g = v.reshape(-1), g.reshape(-1)
    assert r.quad_y["1"] == pytest.approx(float(v @ H_y @ v), rel=1e-10)
    assert r.quad_z["1"] == pytest.approx(float((J @ v) @ H_z @ (J @ v)), rel=1e-10)
    assert r.curvature_z["1"] == pytest.approx(float(g @ H_z @ g / (g @ g)), rel=1e-10)
    assert r.identity_error["1"] < 1e-10  # quad_y = quad_z + BN's own term, exactly
    assert r.quad_z["1"] + r.bn_term["1"] == pytest.approx(r.quad_y["1"], rel=1e-10)


def test_theorem_4_2_in_the_papers_form_for_one_channel_with_a_negligible_eps():
    model, batch = _mlp(eps=1e-30, channels=1, seed=3)
    r = bn_curvature(model, F.cross_entropy, batch)
    g_report = bn_gradient(model, F.cross_entropy, batch)
    y0, loss, after_bn = _loss_of_y(model, batch)
    bn = model[1]
    m = y0.shape[0]
    mu, var = y0.mean(0), y0.var(0, unbiased=False)
    sigma, gamma = float(var.sqrt()), float(bn.weight.detach())
    y_hat = ((y0 - mu) / var.sqrt()).reshape(-1)
    z0 = F.batch_norm(y0, None, None, bn.weight, bn.bias, training=True, eps=1e-30).detach()
    H_z = torch.autograd.functional.hessian(after_bn, z0).reshape(m, m)
    y = y0.clone().requires_grad_()
    (v,) = torch.autograd.grad(loss(y), y)
    z = z0.clone().requires_grad_()
    (g,) = torch.autograd.grad(after_bn(z), z)
    v, g = v.reshape(-1), g.reshape(-1)
    paper = gamma**2 / sigma**2 * (float(v @ H_z @ v) - float(g @ y_hat) * float(v @ v) / (m * gamma))
    assert r.quad_y["1"] == pytest.approx(paper, rel=1e-9)
    assert g_report.identity_error["1"] < 1e-12


def test_a_conv_network_with_an_in_place_relu_after_the_tap():
    model, batch = _cnn()
    r = bn_gradient(model, F.cross_entropy, batch)
    c = bn_curvature(model, F.cross_entropy, batch)
    assert r.layers == c.layers == ["1", "4"]
    assert r.m == {"1": 5 * 16, "4": 5 * 16}  # the positions are part of the batch
    assert max(r.identity_error.values()) < 1e-12
    assert max(c.identity_error.values()) < 1e-9
    # The left side against autograd on the model itself: the gradient with respect to the first conv's output.
    x, t = batch
    y = model[0](x).detach().requires_grad_()
    (gy,) = torch.autograd.grad(F.cross_entropy(model[1:](y), t), y)
    assert r.grad_y_sq["1"] == pytest.approx(float((gy**2).sum()), rel=1e-12)


def test_activation_hessian_against_an_explicit_hessian():
    model, batch = _cnn(seed=1)
    x, t = batch
    r = activation_hessian(model, F.cross_entropy, batch, ["1", "3"], iters=60, tol=1e-10)
    for name, upto in (("1", 2), ("3", 4)):  # the output of BN "1" (read by the in-place ReLU) and of conv "3"
        a0 = model[:upto](x).detach()
        rest = model[upto:]
        H = torch.autograd.functional.hessian(lambda a, rest=rest: F.cross_entropy(rest(a.clone()), t), a0)
        H = H.reshape(a0.numel(), a0.numel())
        a = a0.clone().requires_grad_()
        (g,) = torch.autograd.grad(F.cross_entropy(rest(a.clone()), t), a)
        g = g.reshape(-1)
        assert r.grad_norm[name] == pytest.approx(float(g.norm()), rel=1e-12)
        assert r.curvature[name] == pytest.approx(float(g @ H @ g / (g @ g)), rel=1e-10)
        assert r.top[name] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)


def test_activation_hessian_of_a_layer_before_batch_norm_includes_the_normalisation():
    model, batch = _mlp()
    r = activation_hessian(model, F.cross_entropy, batch, ["0"], iters=0)
    c = bn_curvature(model, F.cross_entropy, batch)
    assert r.top["0"] is None
    assert r.curvature["0"] == pytest.approx(c.curvature_y["1"], rel=1e-10)  # the same Hessian, H_y


def test_refusals():
    model, batch = _mlp()
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        bn_gradient(nn.Sequential(nn.Linear(4, 2)).double(), F.cross_entropy, batch)
    with pytest.raises(ValueError, match="not one of PyTorch's BatchNorm"):
        bn_gradient(model, F.cross_entropy, batch, ["0"])
    model.eval()
    assert batch_norm_layers(model) == []  # running statistics: not what the theorems describe
    with pytest.raises(ValueError, match="running statistics"):
        bn_gradient(model, F.cross_entropy, batch, ["1"])
    noisy = nn.Sequential(nn.Conv2d(2, 3, 3), NoisyBatchNorm(3))
    assert batch_norm_layers(noisy) == []
    twice = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    twice.forward = lambda x: twice[1](twice[1](twice[0](x)))
    with pytest.raises(ValueError, match="more than once"):
        activation_hessian(twice, lambda o, t: o.sum(), (batch[0].float(), None), ["1"], iters=0)


def _conv_bn(bn=True, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(2, 3, 3, padding=1)] + ([nn.BatchNorm2d(3)] if bn else []) + [nn.ReLU(), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(3 * 16, 3)).double()


def test_effective_lr_against_literal_formulas():
    from landscape.probes import effective_lr

    model = _conv_bn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, t = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    F.cross_entropy(model(x), t).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = effective_lr(model, F.cross_entropy, (x, t), after, params=before, optimizer=opt)
    assert r.layers == ["0", "1", "4"] and r.rule == "lr/||w||^2"
    w = torch.cat([before["0.weight"].reshape(-1), before["0.bias"]])
    w2 = torch.cat([after["0.weight"].reshape(-1), after["0.bias"]])
    cos = float(w @ w2 / (w.norm() * w2.norm()))
    assert r.weight_norm["0"] == pytest.approx(float(w.norm()), rel=1e-14)
    assert r.angle["0"] == pytest.approx(math.acos(min(cos, 1.0)), rel=1e-6)
    assert r.relative_update["0"] == pytest.approx(float((w2 - w).norm() / w.norm()), rel=1e-12)
    assert r.effective_lr["0"] == pytest.approx(0.1 / float(w.norm()) ** 2, rel=1e-12)
    # The conv before BN is scale-invariant (weight and bias together); BN's own affine and the head are not.
    assert r.invariant == {"0": True, "1": False, "4": False}
    assert r.invariance["0"] < 1e-4  # BN's eps: invariance to 1e-6 here
    plain = effective_lr(_conv_bn(bn=False), F.cross_entropy, (x, t), dict(_conv_bn(bn=False).named_parameters()))
    assert plain.invariant["0"] is False and plain.effective_lr["0"] is None  # no optimizer: no rule
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    r_adam = effective_lr(model, F.cross_entropy, (x, t), after, optimizer=adam, check=False)
    assert r_adam.rule == "lr/||w||" and r_adam.invariant["0"] is None
    assert r_adam.effective_lr["0"] == pytest.approx(0.01 / float(w2.norm()), rel=1e-12)  # at the model's weights


def test_a_scale_invariant_layers_gradient_is_orthogonal_to_its_weights():
    """The property the effective learning rate rests on, on the same network: <w, dL/dw> = 0 for the conv before
    BN (to eps)."""
    model = _conv_bn()
    x, t = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    F.cross_entropy(model(x), t).backward()
    w = torch.cat([model[0].weight.reshape(-1), model[0].bias]).detach()
    g = torch.cat([model[0].weight.grad.reshape(-1), model[0].bias.grad])
    assert abs(float(w @ g)) < 1e-4 * float(w.norm() * g.norm())  # 3e-6 here: eps
