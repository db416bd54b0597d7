import math

import pytest
import torch
from torch import nn

from landscape.config import ModelConfig
from landscape.models import LpNorm, NoisyBatchNorm, build_model


@pytest.mark.parametrize("depth, convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
@pytest.mark.parametrize("norm", ["none", "batch", "noisy_batch", "l1", "l2", "linf"])
def test_vgg_variants(depth, convs, norm):
    model = build_model(ModelConfig(vgg_depth=depth, width=0.0625, norm=norm))
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(conv) == convs
    assert [c.out_channels for c in conv][:1] == [4]  # 64 * 0.0625
    assert all((c.bias is None) == (norm != "none") for c in conv)
    # conv -> norm -> ReLU
    feats = list(model.features)
    for i, m in enumerate(feats):
        if isinstance(m, nn.Conv2d):
            assert isinstance(feats[i + 2], nn.ReLU)
            assert isinstance(feats[i + 1], nn.Identity) == (norm == "none")
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_mlp_head_is_512_512_10_scaled_by_width():
    model = build_model(ModelConfig(width=0.5, head="mlp"))
    linear = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(256, 256), (256, 256), (256, 10)]


def test_init_schemes_and_seeds():
    x = build_model(ModelConfig(width=0.25, init="xavier"), seed=1)
    w = x.features[0].weight
    bound = math.sqrt(6 / (3 * 9 + 16 * 9))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    k = build_model(ModelConfig(width=0.25, init="kaiming"), seed=1).features[0].weight
    assert abs(k.std().item() - math.sqrt(2 / 27)) < 0.05
    d = build_model(ModelConfig(width=0.25, init="torch_default"), seed=1).features[0].weight
    assert not torch.equal(w, d)
    assert torch.equal(w, build_model(ModelConfig(width=0.25), seed=1).features[0].weight)
    assert not torch.equal(w, build_model(ModelConfig(width=0.25), seed=2).features[0].weight)
    state = torch.get_rng_state()
    build_model(ModelConfig(width=0.25), seed=3)
    assert torch.equal(state, torch.get_rng_state()), "building a model must not consume the global RNG"


def test_noisy_bn_draws_in_the_documented_ranges():
    layer = NoisyBatchNorm(64, seed=0, layer=2, mean_range=(-0.5, 0.5), scale_range=(1.0, 1.25),
                           mean_spread=0.1, scale_std=0.1)
    mus, sigmas = [], []
    for step in range(200):
        d = layer.draw(512, step)
        mu, sigma = d["mu"].item(), d["sigma"].item()
        assert -0.5 <= mu <= 0.5 and 1.0 <= sigma <= 1.25
        assert (d["m"] >= mu - 0.1).all() and (d["m"] <= mu + 0.1).all()
        assert abs(d["s"].mean().item() - sigma) < 0.01
        assert abs(d["s"].std().item() - 0.1) < 0.01
        mus.append(mu)
        sigmas.append(sigma)
    # per-step parameters cover their ranges (uniform): means near the middle, spread across
    assert abs(sum(mus) / 200) < 0.08 and max(mus) - min(mus) > 0.8
    assert abs(sum(sigmas) / 200 - 1.125) < 0.03
    assert torch.equal(layer.draw(4, 7)["m"], layer.draw(4, 7)["m"])  # pure in (seed, layer, step)
    assert not torch.equal(layer.draw(4, 7)["m"], NoisyBatchNorm(64, seed=0, layer=3).draw(4, 7)["m"])


def test_noisy_bn_applies_the_noise_after_bn_in_train_mode_only():
    torch.manual_seed(0)
    layer = NoisyBatchNorm(3, seed=1, layer=0)
    bn = nn.BatchNorm2d(3)
    x = torch.randn(5, 3, 4, 4)
    y = layer(x)
    d = layer.draw(5, 0)
    expected = bn(x) * d["s"][:, :, None, None] + d["m"][:, :, None, None]
    torch.testing.assert_close(y, expected)
    assert layer.noise_step.item() == 1
    layer.eval()
    bn.eval()
    torch.testing.assert_close(layer(x), bn(x))
    assert layer.noise_step.item() == 1


@pytest.mark.parametrize("p", [1, 2, float("inf")])
def test_lp_norm_matches_its_definition(p):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64) * 3 + 1
    layer = LpNorm(3, p).double()
    y = layer(x)
    for c in range(3):
        v = x[:, c].reshape(-1)
        scale = v.abs().max() if p == float("inf") else (v.abs() ** p).mean() ** (1 / p)
        torch.testing.assert_close(y[:, c], (x[:, c] - v.mean()) / (scale + 1e-5))
    # running estimates move toward the batch statistics and serve eval mode
    assert layer.running_mean[0] != 0
    layer.eval()
    assert layer(x).shape == x.shape


def test_deep_linear_network():
    dln = build_model(ModelConfig(arch="dln", dln_depth=25, dln_width=10), in_dim=10, out_dim=10)
    linear = [m for m in dln.modules() if isinstance(m, nn.Linear)]
    assert len(linear) == 25 and all(m.bias is None for m in linear)
    x = torch.randn(7, 10)
    product = torch.eye(10)
    for m in linear:
        product = m.weight @ product
    torch.testing.assert_close(dln(x), x @ product.T, rtol=1e-4, atol=1e-5)
    bn = build_model(ModelConfig(arch="dln", dln_depth=4, norm="batch"), in_dim=10, out_dim=3)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in bn.modules()) == 3
    assert bn(x).shape == (7, 3)
