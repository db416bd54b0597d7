"""ICS_opti and the activation statistics (landscape.probes.ics) against literal computations."""

import copy

import pytest
import torch
from torch import nn

from landscape.probes import (
    activation_stats,
    distribution_shift,
    ics_opti,
    resolve_layers,
)
from tests.probes.reference import CE, F64, MODELS, batch_for, flat, literal_loss_and_grad, small_cnn


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


def test_per_unit_percentiles_are_numpys_of_each_units_values():
    """Ioffe and Szegedy's Figure 1(b, c): the 15th, 50th and 85th percentiles of one unit's input over the batch."""
    import numpy as np
    import torch
    from torch import nn

    from landscape.probes import activation_stats

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(3 * 4, 2), nn.Sigmoid()).double()
    x = torch.randn(7, 2, 4, 4, dtype=torch.float64)
    r = activation_stats(model, x, ["type:Sigmoid"], units=2)
    conv_out = model[0](x).detach().numpy()  # (7, 3, 2, 2): the units are channels, positions part of the batch
    for unit in range(2):
        values = conv_out[:, unit].reshape(-1)
        for level in (0.15, 0.5, 0.85):
            assert r.stats["1"]["units"][str(level)][unit] == np.percentile(values, 100 * level)
    assert len(r.stats["4"]["units"]["0.5"]) == 2
    assert "units" not in activation_stats(model, x, ["type:Sigmoid"]).stats["1"]  # records as before by default
