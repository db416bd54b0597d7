import math

import pytest
import torch
from torch import nn

from landscape.config import DlnConfig, MlpConfig, ModelConfig, ResnetConfig, VggConfig
from landscape.models import LpNorm, NoisyBatchNorm, build_model


@pytest.mark.parametrize("depth, convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
@pytest.mark.parametrize("norm", ["none", "batch", "noisy_batch", "l1", "l2", "linf"])
def test_vgg_variants(depth, convs, norm):
    model = build_model(ModelConfig(norm=norm, vgg=VggConfig(depth=depth, width=0.0625)))
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
    model = build_model(ModelConfig(vgg=VggConfig(width=0.5, head="mlp")))
    linear = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(256, 256), (256, 256), (256, 10)]


def test_init_schemes_and_seeds():
    x = build_model(ModelConfig(init="xavier", vgg=VggConfig(width=0.25)), seed=1)
    w = x.features[0].weight
    bound = math.sqrt(6 / (3 * 9 + 16 * 9))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    k = build_model(ModelConfig(init="kaiming", vgg=VggConfig(width=0.25)), seed=1).features[0].weight
    assert abs(k.std().item() - math.sqrt(2 / 27)) < 0.05
    d = build_model(ModelConfig(init="torch_default", vgg=VggConfig(width=0.25)), seed=1).features[0].weight
    assert not torch.equal(w, d)
    assert torch.equal(w, build_model(ModelConfig(vgg=VggConfig(width=0.25)), seed=1).features[0].weight)
    assert not torch.equal(w, build_model(ModelConfig(vgg=VggConfig(width=0.25)), seed=2).features[0].weight)
    state = torch.get_rng_state()
    build_model(ModelConfig(vgg=VggConfig(width=0.25)), seed=3)
    assert torch.equal(state, torch.get_rng_state()), "building a model must not consume the global RNG"


def test_noisy_bn_draws_follow_algorithm_1_in_distribution():
    """Per unit j and step: mu_j ~ U(-0.5, 0.5), sigma_j ~ U(1, 1.25); per activation (sample, row,
    column): m ~ U(mu_j - 0.1, mu_j + 0.1), s ~ N(sigma_j, 0.1^2) (the paper's Appendix A.2.1)."""
    layer = NoisyBatchNorm(64, seed=0, layer=2)
    assert layer.form == "per_unit"
    mus, sigmas = [], []
    for step in range(50):
        d = layer.draw((8, 64, 6, 6), step)
        mu, sigma, m, s = d["mu"], d["sigma"], d["m"], d["s"]
        assert mu.shape == sigma.shape == (64,) and m.shape == s.shape == (8, 64, 6, 6)
        assert ((mu >= -0.5) & (mu <= 0.5)).all() and ((sigma >= 1.0) & (sigma <= 1.25)).all()
        lo, hi = (mu - 0.1).view(1, -1, 1, 1), (mu + 0.1).view(1, -1, 1, 1)
        assert ((m >= lo - 1e-7) & (m <= hi + 1e-7)).all()
        residual = s - sigma.view(1, -1, 1, 1)  # N(0, 0.1^2) over every activation
        assert abs(residual.mean().item()) < 0.005 and abs(residual.std().item() - 0.1) < 0.005
        spread = m - mu.view(1, -1, 1, 1)  # U(-0.1, 0.1): variance 0.01 / 3
        assert abs(spread.var().item() - 0.01 / 3) < 2e-4
        assert not torch.equal(m[:, :, 0, 0], m[:, :, 1, 1])  # every position draws its own m and s
        mus.append(mu)
        sigmas.append(sigma)
    mus, sigmas = torch.stack(mus), torch.stack(sigmas)
    assert abs(mus.mean().item()) < 0.02 and abs(mus.var().item() - 1 / 12) < 0.01  # U(-0.5, 0.5)
    assert abs(sigmas.mean().item() - 1.125) < 0.01
    assert mus[0].std() > 0.2  # per unit, not one value per layer
    assert torch.equal(layer.draw((4, 64), 7)["m"], layer.draw((4, 64), 7)["m"])  # pure in (seed, layer, step)
    assert not torch.equal(layer.draw((4, 64), 7)["m"], NoisyBatchNorm(64, seed=0, layer=3).draw((4, 64), 7)["m"])


def test_noisy_bn_per_layer_form_is_kept_for_comparison():
    layer = NoisyBatchNorm(64, seed=0, layer=2, form="per_layer")
    d = layer.draw((512, 64, 4, 4), 3)
    assert d["mu"].shape == () and d["m"].shape == (512, 64, 1, 1)
    assert ((d["m"] >= d["mu"] - 0.1) & (d["m"] <= d["mu"] + 0.1)).all()
    assert abs(d["s"].std().item() - 0.1) < 0.01


@pytest.mark.parametrize("form", ["per_unit", "per_layer"])
def test_noisy_bn_applies_the_noise_after_bn_in_train_mode_only(form):
    torch.manual_seed(0)
    layer = NoisyBatchNorm(3, seed=1, layer=0, form=form)
    bn = nn.BatchNorm2d(3)
    x = torch.randn(5, 3, 4, 4)
    y = layer(x)
    d = layer.draw((5, 3, 4, 4), 0)
    torch.testing.assert_close(y, bn(x) * d["s"] + d["m"])
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
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.3, 2.0]))
    y = layer(x)
    for c in range(3):
        v = x[:, c].reshape(-1)
        scale = v.abs().max() if p == float("inf") else (v.abs() ** p).mean() ** (1 / p)
        gamma, beta = layer.weight[c].item(), layer.bias[c].item()
        torch.testing.assert_close(y[:, c], gamma * (x[:, c] - v.mean()) / (scale + 1e-5) + beta)
    # running estimates move toward the batch statistics and serve eval mode
    assert layer.running_mean[0] != 0
    layer.eval()
    mean, scale = layer.running_mean.view(1, -1, 1, 1), layer.running_scale.view(1, -1, 1, 1)
    torch.testing.assert_close(
        layer(x), layer.weight.view(1, -1, 1, 1) * (x - mean) / (scale + 1e-5) + layer.bias.view(1, -1, 1, 1)
    )


def test_deep_linear_network():
    dln = build_model(ModelConfig(arch="dln", dln=DlnConfig(depth=25, width=10)), in_dim=10, out_dim=10)
    linear = [m for m in dln.modules() if isinstance(m, nn.Linear)]
    assert len(linear) == 25 and all(m.bias is None for m in linear)
    x = torch.randn(7, 10)
    product = torch.eye(10)
    for m in linear:
        product = m.weight @ product
    torch.testing.assert_close(dln(x), x @ product.T, rtol=1e-4, atol=1e-5)
    bn = build_model(ModelConfig(arch="dln", norm="batch", dln=DlnConfig(depth=4)), in_dim=10, out_dim=3)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in bn.modules()) == 3
    assert bn(x).shape == (7, 3)


def test_resnet20_has_the_parameter_count_counted_by_hand():
    """He et al.'s CIFAR ResNet-20 (option-A shortcuts, no parameters in them): 0.27M parameters.
    By hand: the stem conv 3*16*9 and its BN 2*16; stage 1: six 16->16 convs and six BNs of 16;
    stage 2: one 16->32 conv, five 32->32, six BNs of 32; stage 3: one 32->64, five 64->64, six BNs
    of 64; the head 64*10 + 10."""
    by_hand = (
        3 * 16 * 9
        + 2 * 16
        + 6 * 16 * 16 * 9
        + 6 * 2 * 16
        + 16 * 32 * 9
        + 5 * 32 * 32 * 9
        + 6 * 2 * 32
        + 32 * 64 * 9
        + 5 * 64 * 64 * 9
        + 6 * 2 * 64
        + 64 * 10
        + 10
    )
    model = build_model(ModelConfig(arch="resnet", norm="batch", resnet=ResnetConfig(depth=20)))
    assert sum(p.numel() for p in model.parameters()) == by_hand == 269_722
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.bias is None for c in convs)  # 19 convs + the head: 20 layers
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", [8, 20, 32, 56])
def test_resnet_depths_and_the_unnormalised_forms(depth):
    n = (depth - 2) // 6
    plain = build_model(ModelConfig(arch="resnet", norm="none", init="kaiming", resnet=ResnetConfig(depth=depth)))
    assert len(plain.blocks) == 3 * n and not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(c.bias is not None for c in plain.modules() if isinstance(c, nn.Conv2d))
    fixup = build_model(ModelConfig(arch="resnet", norm="none", init="fixup", resnet=ResnetConfig(depth=depth)))
    x = torch.randn(8, 3, 32, 32)
    out = fixup(x)
    # Fixup at initialisation: every residual branch is zero (its last conv is), so the output is finite at any depth
    assert torch.isfinite(out).all() and all(float(b.conv2.weight.abs().max()) == 0 for b in fixup.blocks)
    assert float(fixup.fc.weight.abs().max()) == 0
    std = fixup.blocks[0].conv1.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / (16 * 9)) * (3 * n) ** -0.5, rel=0.15)
    # and it trains: one SGD step changes the output
    loss = nn.functional.cross_entropy(out, torch.randint(0, 10, (8,)))
    loss.backward()
    with torch.no_grad():
        for p in fixup.parameters():
            p -= 0.1 * p.grad
    assert not torch.equal(fixup(x), out)


def test_fixup_is_refused_where_it_does_not_apply():
    from landscape.config import build_config
    from landscape.errors import UserError

    with pytest.raises(UserError, match="fixup is for the unnormalised ResNet"):
        build_config([{"model": {"arch": "resnet", "norm": "batch", "init": "fixup"}}])
    with pytest.raises(UserError, match="fixup"):
        build_config([{"model": {"arch": "vgg", "init": "fixup"}}])


def test_the_mlp_is_cohen_et_als_fc_tanh():
    model = build_model(ModelConfig(arch="mlp", init="torch_default"))
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(3072, 200), (200, 200), (200, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 2
    bn = build_model(ModelConfig(arch="mlp", norm="batch", mlp=MlpConfig(activation="relu", widths=(32,))))
    assert sum(isinstance(m, nn.BatchNorm1d) for m in bn.modules()) == 1 and bn(torch.randn(4, 3, 32, 32)).shape == (
        4,
        10,
    )
