"""Every probe against a slow, literal implementation of its definition (float64), and
against exact answers where they exist; then the promise that probes change nothing."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape.probes import (Monitor, activation_stats, distribution_shift, every, explicit, gradient_sweep,
                              ics_opti, log_spaced, resolve_layers, sharpness)
from landscape.runs import read_metrics

F64 = torch.float64


def mlp_bn(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(6, 3))
    return nn.Sequential(*layers).to(F64).train()


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3),
                         nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to(F64).train()


def batch_for(model, seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    conv = isinstance(model[0], nn.Conv2d)
    x = torch.randn(n, 2, 6, 6, generator=g, dtype=F64) if conv else torch.randn(n, 5, generator=g, dtype=F64)
    return x, torch.randint(0, 3, (n,), generator=g)


CE = nn.functional.cross_entropy
MODELS = {"mlp_bn": mlp_bn, "cnn": small_cnn}


# ------------------------------------------------------------------ literal references


def literal_loss_and_grad(model, batch, weights=None):
    """The obvious way: a copy of the model, weights written in, autograd .backward()."""
    m = copy.deepcopy(model)
    if weights is not None:
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(weights[n])
    m.zero_grad()
    loss = CE(m(batch[0]), batch[1])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}


def flat(d):
    return torch.cat([v.reshape(-1) for v in d.values()])


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


class Quadratic(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return self.w


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
    assert registry.quantity("gradient_sweep", {"loss": 1.0, "grad_norm": 0.0, "etas": [0.1], "losses": [1.0],
                                                "grad_change": [0.0]}, "rel_loss_departure") is None
    assert registry.quantity("gradient_sweep", {"grad_change": [0.1]}, "rel_grad_change") is None


def full_hessian(model, batch):
    """The Hessian of the batch loss in every parameter, by autograd on a flat vector (the slow,
    obvious way); also the gradient, the parameter names and shapes."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of_flat(v):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            params[n] = v[i:i + k].view(s)
            i += k
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        return CE(torch.func.functional_call(model, (params, buffers), (batch[0],)), batch[1])

    w = w0.clone().requires_grad_()
    g = torch.autograd.grad(loss_of_flat(w), w)[0]
    return torch.autograd.functional.hessian(loss_of_flat, w0), g.detach(), names, shapes


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


def test_ics_opti_on_a_two_layer_linear_net_by_hand():
    """f(x) = W2 W1 x, L = 1/2 sum ||f(x) - y||^2:  G1 = W2' R X', G2 = R (W1 X)' with R = W2 W1 X - Y.
    Layer 1 has nothing before it (G' = G); layer 2 sees W1 updated: G2' = R' (W1n X)'."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).to(F64)
    X, Y = torch.randn(3, 10, dtype=F64), torch.randn(2, 10, dtype=F64)
    W1, W2 = net[0].weight.detach().clone(), net[1].weight.detach().clone()
    W1n, W2n = W1 + 0.1 * torch.randn_like(W1), W2 + 0.1 * torch.randn_like(W2)
    loss = lambda out, y: 0.5 * ((out - y) ** 2).sum()  # noqa: E731
    r = ics_opti(net, loss, (X.T, Y.T), {"0.weight": W1n, "1.weight": W2n})
    R = W2 @ W1 @ X - Y
    G2 = R @ (W1 @ X).T
    G2n = (W2 @ W1n @ X - Y) @ (W1n @ X).T
    assert r.layers == ["0", "1"]
    assert r.l2["0"] == 0.0 and r.cosine["0"] == pytest.approx(1.0, abs=1e-15)
    assert r.l2["1"] == pytest.approx((G2 - G2n).norm().item(), rel=1e-12)
    assert r.cosine["1"] == pytest.approx((G2 * G2n).sum().item() / (G2.norm() * G2n.norm()).item(), rel=1e-12)
    assert r.grad_norm["0"] == pytest.approx((W2.T @ R @ X.T).norm().item(), rel=1e-12)


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_ics_opti_matches_the_literal_definition_with_a_real_optimizer_step(make):
    model = make()
    batch = batch_for(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    w_t = {n: p.detach().clone() for n, p in model.named_parameters()}
    CE(model(batch[0]), batch[1]).backward()
    opt.step()
    w_next = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = ics_opti(model, CE, batch, w_next, params=w_t)
    layers = resolve_layers(model)
    names = list(w_t)
    _, G = literal_loss_and_grad(model, batch, w_t)
    for label, pnames in layers:
        first = names.index(pnames[0])
        mixed = {n: (w_next[n] if names.index(n) < first else w_t[n]) for n in names}
        _, G_mixed = literal_loss_and_grad(model, batch, mixed)
        a, b = flat({n: G[n] for n in pnames}), flat({n: G_mixed[n] for n in pnames})
        assert r.l2[label] == pytest.approx((a - b).norm().item(), rel=1e-9, abs=1e-14)
        assert r.cosine[label] == pytest.approx((a @ b / (a.norm() * b.norm())).item(), rel=1e-9)


def test_layers_argument_selects_and_groups():
    model = mlp_bn()
    assert [label for label, _ in resolve_layers(model)] == ["0", "1", "3", "5"]
    grouped = resolve_layers(model, {"block": ["0", "1"], "head": ["5"]})
    assert grouped == [("block", ["0.weight", "0.bias", "1.weight", "1.bias"]), ("head", ["5.weight", "5.bias"])]
    batch = batch_for(model)
    w = {n: p.detach() + 0.01 for n, p in model.named_parameters()}
    r = ics_opti(model, CE, batch, w, layers={"block": ["0", "1"], "head": ["5"]})
    assert r.layers == ["block", "head"] and r.l2["block"] == 0.0 and r.l2["head"] > 0
    with pytest.raises(KeyError, match="no module named 'nope'"):
        resolve_layers(model, ["nope"])


def test_activation_stats_match_a_hooked_forward():
    model = small_cnn()
    batch = batch_for(model)
    s = activation_stats(model, batch, ["3", "5"])
    seen = {}
    ref = copy.deepcopy(model)
    ref[3].register_forward_hook(lambda m, a, o: seen.__setitem__("3", a[0].detach().clone()))
    ref[5].register_forward_hook(lambda m, a, o: seen.__setitem__("5", a[0].detach().clone()))
    ref(batch[0])
    for layer in ("3", "5"):
        x = seen[layer].reshape(-1)
        st = s.stats[layer]
        assert st["mean"] == pytest.approx(x.mean().item(), rel=1e-12)
        assert st["std"] == pytest.approx(x.std().item(), rel=1e-12)
        assert st["quantiles"]["0.5"] == pytest.approx(torch.quantile(x, 0.5).item(), rel=1e-12)
        assert sum(st["hist"]["counts"]) == x.numel() == st["numel"]
    out = activation_stats(model, batch[0], ["3"], where="output")
    assert out.stats["3"]["numel"] == 16 * 2 * 4 * 4


def test_distribution_shift_is_exact_for_a_translation():
    from scipy.stats import wasserstein_distance

    model = nn.Sequential(nn.Identity(), nn.Linear(1, 1)).to(F64)
    x = torch.randn(4000, 1, dtype=F64)
    a = activation_stats(model, x, ["1"])
    b = activation_stats(model, 2 * x + 0.5, ["1"])
    shift = distribution_shift(a, b)["1"]
    assert shift["mean_change"] == pytest.approx(x.mean().item() + 0.5, rel=1e-9)
    assert shift["std_change"] == pytest.approx(x.std().item(), rel=1e-9)
    exact = wasserstein_distance(x.numpy().ravel(), (2 * x + 0.5).numpy().ravel())
    assert shift["wasserstein"] == pytest.approx(exact, rel=0.05)  # sketch of 128 quantiles
    assert distribution_shift(a, a)["1"] == {"mean_change": 0.0, "std_change": 0.0, "wasserstein": 0.0}


# ------------------------------------------------------------------ probes change nothing


def full_state(model, opt):
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
            "buffers": {n: b.clone() for n, b in model.named_buffers()},
            "opt": copy.deepcopy(opt.state_dict()), "rng": torch.get_rng_state().clone(),
            "training": [m.training for m in model.modules()]}


def assert_same(a, b):
    for key in ("params", "grads", "buffers"):
        for n in a[key]:
            assert (a[key][n] is None and b[key][n] is None) or torch.equal(a[key][n], b[key][n]), (key, n)
    assert torch.equal(a["rng"], b["rng"]) and a["training"] == b["training"]
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for field in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][field]), torch.as_tensor(sb[k][field]))


PROBE_CALLS = {
    "gradient_sweep": lambda m, b, o: gradient_sweep(m, CE, b, [0.1, 0.5]),
    "gradient_sweep_eval": lambda m, b, o: gradient_sweep(m, CE, b, [0.1], eval_mode=True),
    "sharpness": lambda m, b, o: sharpness(m, CE, b, iters=5),
    "ics_opti": lambda m, b, o: ics_opti(m, CE, b, {n: p.detach() * 1.01 for n, p in m.named_parameters()}),
    "activation_stats": lambda m, b, o: activation_stats(m, b),
}


@pytest.mark.parametrize("probe", PROBE_CALLS)
def test_a_probe_leaves_everything_as_it_found_it(probe):
    model = mlp_bn(dropout=0.3)
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):  # real optimizer state, running stats and gradients
        opt.zero_grad()
        CE(model(batch[0]), batch[1]).backward()
        opt.step()
    before = full_state(model, opt)
    PROBE_CALLS[probe](model, batch, opt)
    assert_same(before, full_state(model, opt))


def test_eval_mode_flag_uses_running_statistics_and_restores_the_mode():
    model = mlp_bn()
    batch = batch_for(model)
    for _ in range(3):
        model(batch[0])  # move the running statistics away from their initial values
    r = gradient_sweep(model, CE, batch, [0.1], eval_mode=True)
    assert model.training
    model.eval()
    with torch.no_grad():
        assert r.loss == pytest.approx(CE(model(batch[0]), batch[1]).item(), rel=1e-12)
    model.train()
    assert gradient_sweep(model, CE, batch, [0.1]).loss != pytest.approx(r.loss)


def test_dropout_draws_the_same_mask_for_every_evaluation():
    model = mlp_bn(dropout=0.5)
    batch = batch_for(model)
    a = gradient_sweep(model, CE, batch, [1e-12])
    assert a.losses[0] == pytest.approx(a.loss, rel=1e-9)  # a tiny step: same mask, same loss
    assert a.grad_change[0] < 1e-8


# ------------------------------------------------------------------ any model


class KwargsTupleNet(nn.Module):
    """forward takes keyword arguments and returns a tuple (logits, aux)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, *, scale=1.0):
        h = self.norm(self.embed(x) * scale)
        return self.head(h), h


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


ANY_MODELS = {
    "batchnorm_train": (lambda: mlp_bn(), lambda: batch_for(mlp_bn())),
    "dropout": (lambda: mlp_bn(dropout=0.2), lambda: batch_for(mlp_bn())),
    "layernorm_kwargs_tuple": (lambda: KwargsTupleNet().to(F64),
                               lambda: ({"x": torch.randn(8, 5, dtype=F64), "scale": 2.0}, torch.randint(0, 3, (8,)))),
    "transformer": (lambda: TinyTransformer().to(F64).train(),
                    lambda: (torch.randn(4, 6, 4, dtype=F64), torch.randint(0, 3, (4,)))),
}


@pytest.mark.parametrize("kind", ANY_MODELS)
def test_probes_run_on_any_model(kind):
    make_model, make_batch = ANY_MODELS[kind]
    torch.manual_seed(0)
    model, batch = make_model(), make_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = full_state(model, opt)
    sweep = gradient_sweep(model, CE, batch, [0.05, 0.1])
    assert all(math.isfinite(v) for v in sweep.losses + sweep.grad_change + [sweep.beta_eff])
    s = sharpness(model, CE, batch, iters=8)
    assert math.isfinite(s.value)
    ics = ics_opti(model, CE, batch, {n: p.detach() - 0.01 for n, p in model.named_parameters()})
    assert len(ics.layers) >= 3 and all(math.isfinite(v) for v in ics.l2.values())
    acts = activation_stats(model, batch)
    assert all(math.isfinite(v["mean"]) for v in acts.stats.values())
    assert_same(before, full_state(model, opt))


def test_ics_matches_a_fresh_computation_when_the_optimizer_hook_finishes_it(tmp_path):
    """Monitor: ics_opti measured through the optimizer's post-step hook equals a direct call."""
    model = mlp_bn()
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    records = []
    mon = Monitor(records.append, model, opt, CE, explicit([2]), probes=["ics_opti", "gradient_sweep"])
    for step in (1, 2):
        mon.before_forward(step)
        w_t = {n: p.detach().clone() for n, p in model.named_parameters()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        loss = CE(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        mon.observe(step, batch, loss)
        opt.step()
    mon.close()
    (sweep,) = [r for r in records if r["probe"] == "gradient_sweep"]
    (ics,) = [r for r in records if r["probe"] == "ics_opti"]
    assert sweep["step"] == ics["step"] == 2 and sweep["cost"]["backward"] == 8  # reused the step's gradient
    direct = ics_opti(model, CE, batch, {n: p.detach() for n, p in model.named_parameters()}, params=w_t,
                      buffers=buffers)
    for layer in direct.layers:
        assert ics["values"]["l2"][layer] == pytest.approx(direct.l2[layer], rel=1e-10, abs=1e-15)
    fresh = gradient_sweep(model, CE, batch, [m * 0.1 for m in mon.options["gradient_sweep"].etas], params=w_t, buffers=buffers)
    assert sweep["values"]["losses"] == pytest.approx(fresh.losses, rel=1e-10)
    assert sweep["values"]["beta_eff"] == pytest.approx(fresh.beta_eff, rel=1e-10)


def test_monitor_in_a_users_own_loop_writes_a_run_directory(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.fc = nn.Linear(512, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with Monitor(tmp_path / "resnet", model, opt, CE, every(2), probes=["gradient_sweep", "ics_opti", "sharpness"],
                 options={"gradient_sweep": {"etas": (1.0, 4.0)}, "sharpness": {"iters": 3}},
                 layers=["conv1", "layer1", "layer4", "fc"]) as monitor:
        for step in range(1, 4):
            loss = CE(model(x), y)
            opt.zero_grad()
            loss.backward()
            monitor.observe(step, (x, y), loss)
            opt.step()
            monitor.log_train(step, loss=loss.item())
    recs = read_metrics(tmp_path / "resnet" / "metrics.jsonl")
    probes = [(r["step"], r["probe"]) for r in recs if r["kind"] == "probe"]
    assert probes == [(1, "gradient_sweep"), (1, "sharpness"), (1, "ics_opti"),
                      (2, "gradient_sweep"), (2, "sharpness"), (2, "ics_opti")]
    ics = [r for r in recs if r.get("probe") == "ics_opti"][0]
    assert ics["values"]["layers"] == ["conv1", "layer1", "layer4", "fc"]
    sharp = [r for r in recs if r.get("probe") == "sharpness"][0]
    assert sharp["values"]["threshold"] == pytest.approx(2 * 1.9 / 0.01)
    assert all(r["cost"]["seconds"] > 0 for r in recs if r["kind"] == "probe")
    assert (tmp_path / "resnet" / "status.json").exists() and (tmp_path / "resnet" / "monitor.yaml").exists()
    with pytest.raises(Exception, match="already exists"):
        Monitor(tmp_path / "resnet", model, opt, CE)


def test_schedules():
    s = every(10)
    assert [t for t in range(1, 31) if s(t)] == [1, 10, 20, 30]
    assert [t for t in range(1, 100) if explicit([3, 50])(t)] == [3, 50]
    chosen = [t for t in range(1, 1001) if log_spaced(1000, 10)(t)]
    assert chosen[0] == 1 and chosen[-1] == 1000 and len(chosen) == 10
    assert np.all(np.diff(np.log(chosen)) > 0.5)


def test_both_hessian_vector_product_routes_agree():
    from landscape.probes.functional import Objective, current_params

    model = small_cnn()
    f = Objective.of(model, CE, batch_for(model))
    w = current_params(model)
    v = {n: torch.randn_like(t) for n, t in w.items()}
    _, _, hvp = f.hessian_operator(w)
    a, b = hvp(v), f.hvp(w, v)
    for n in w:
        torch.testing.assert_close(a[n], b[n], rtol=1e-10, atol=1e-12)
    assert f.cost.hvp == 2


@pytest.mark.slow
def test_the_readme_monitor_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python example, executed verbatim (in a temporary directory), twice: force=True re-runs it."""
    from tests.conftest import doc_block

    code, page = doc_block("import torch, torchvision\nfrom landscape.probes import Monitor")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, page, "exec"), {})
    exec(compile(code, page, "exec"), {})
    recs = read_metrics(tmp_path / "runs" / "resnet18" / "metrics.jsonl")
    assert {r["probe"] for r in recs if r["kind"] == "probe"} == {"gradient_sweep", "ics_opti", "sharpness"}
    assert [r["step"] for r in recs if r.get("probe") == "sharpness"] == [1, 10, 20]


def test_probes_on_diverged_weights_return_nan_instead_of_raising():
    model = mlp_bn()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    batch = batch_for(model)
    assert math.isnan(sharpness(model, CE, batch, iters=5).value)
    assert math.isnan(gradient_sweep(model, CE, batch, [0.1]).loss)
    ics = ics_opti(model, CE, batch, {n: p.detach() for n, p in model.named_parameters()})
    assert any(math.isnan(v) for v in ics.l2.values())
    acts = activation_stats(model, batch)
    assert math.isnan(acts.stats["5"]["mean"])
