"""The Vision Transformer: each normalisation against its definition, shapes and parameter count
of the documented configuration, Xavier init, and the probes pure on it in train mode."""

import pytest
import torch
from torch import nn

from landscape.config import build_config
from landscape.experiments import preset_keys
from landscape.models import build_model
from landscape.models.vit import DyT, RMSNorm, TokenBatchNorm, ViT, parameter_count, vit_norm
from tests.probes.reference import CE, CURVATURE_CALLS, PROBE_CALLS, assert_same, full_state

F64 = torch.float64


def test_dyt_is_gamma_tanh_alpha_x_plus_beta():
    layer = DyT(5, alpha=0.5).double()
    with torch.no_grad():
        layer.alpha.fill_(0.7)
        layer.weight.copy_(torch.linspace(-1, 2, 5))
        layer.bias.copy_(torch.linspace(0.5, -0.5, 5))
    x = torch.randn(3, 4, 5, dtype=F64)
    expected = torch.linspace(-1, 2, 5, dtype=F64) * torch.tanh(0.7 * x) + torch.linspace(0.5, -0.5, 5, dtype=F64)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-15)
    assert layer.alpha.shape == () and layer.alpha.requires_grad


def test_rms_norm_divides_by_the_root_mean_square_of_the_features():
    layer = RMSNorm(6, eps=1e-6).double()
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(2, 3, 6, dtype=F64) * 3 + 1
    for i in range(2):
        for t in range(3):
            v = x[i, t]
            expected = v / torch.sqrt((v * v).sum() / 6 + 1e-6) * torch.arange(1.0, 7.0, dtype=F64)
            torch.testing.assert_close(layer(x)[i, t], expected, rtol=1e-12, atol=1e-12)


def test_token_batch_norm_takes_statistics_over_the_batch_and_the_tokens():
    layer = TokenBatchNorm(4).double().train()
    x = torch.randn(5, 7, 4, dtype=F64) * 2 + 3
    flat = x.reshape(-1, 4)
    expected = (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(layer(x), expected.reshape(5, 7, 4), rtol=1e-10, atol=1e-10)
    assert layer.running_mean.abs().sum() > 0  # running estimates for eval mode


def test_layer_norm_is_torchs_and_none_is_the_identity():
    assert isinstance(vit_norm("layer", 8), nn.LayerNorm) and isinstance(vit_norm("none", 8), nn.Identity)
    with pytest.raises(ValueError, match="unknown ViT norm"):
        vit_norm("group", 8)


# dim 64, depth 4, heads 4, patch 4, MLP ratio 2, 10 classes (the model defaults). By hand:
# patch embedding 3*4*4*64 + 64 = 3,136; class token 64; positions 65*64 = 4,160; per block
# qkv 64*192 + 192 = 12,480, projection 4,160, MLP 64*128 + 128 + 128*64 + 64 = 16,576, so
# 33,216 without norms; head 650. Norms: LayerNorm / BatchNorm 128 each, RMSNorm 64, DyT 129,
# nine of them (two per block and the final one).
BASE = 3136 + 64 + 4160 + 4 * 33216 + 650
PER_NORM = {"none": 0, "layer": 128, "batch": 128, "rms": 64, "dyt": 129}


@pytest.mark.parametrize("norm", list(PER_NORM))
def test_the_documented_vit_has_the_counted_parameters_and_shapes(norm):
    cfg = build_config([{"model": {"arch": "vit", "norm": norm}}])
    model = build_model(cfg.model, 0, in_dim=3, out_dim=10)
    assert parameter_count(model) == BASE + 9 * PER_NORM[norm]
    out = model(torch.randn(5, 3, 32, 32))
    assert out.shape == (5, 10)
    linear = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for m in linear:  # Xavier (Glorot) uniform weights, biases 0, as for VGG
        bound = (6 / (m.weight[0].numel() + m.weight.shape[0] * m.weight[0, 0].numel())) ** 0.5
        assert m.weight.abs().max() <= bound + 1e-7 and m.weight.abs().max() > 0.5 * bound
        assert m.bias is None or not m.bias.any()


def tiny_vit(norm: str, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(0)
    return (
        ViT(image_size=8, patch=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2, norm=norm, dropout=dropout)
        .to(F64)
        .train()
    )


def vit_batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 2, 8, 8, dtype=F64, generator=g), torch.randint(0, 3, (6,), generator=g)


@pytest.mark.parametrize("norm", ["none", "layer", "rms", "batch", "dyt"])
@pytest.mark.parametrize("probe", [*PROBE_CALLS, *CURVATURE_CALLS])
def test_probes_are_pure_on_the_vit_in_train_mode_with_dropout(norm, probe):
    model = tiny_vit(norm)
    batch = vit_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        CE(model(batch[0]), batch[1]).backward()
        opt.step()
    before = full_state(model, opt)
    (PROBE_CALLS.get(probe) or CURVATURE_CALLS[probe])(model, batch, opt)
    assert_same(before, full_state(model, opt))


def test_sharpness_sees_one_dropout_mask_per_probe():
    """With dropout on, the probes evaluate every point with the training forward's mask: the
    same call twice gives the same value, and it differs from eval mode."""
    from landscape.probes import sharpness

    model, batch = tiny_vit("layer", dropout=0.3), vit_batch()
    a = sharpness(model, CE, batch, iters=30, tol=1e-10)
    b = sharpness(model, CE, batch, iters=30, tol=1e-10)
    assert a.value == b.value
    assert sharpness(model, CE, batch, iters=30, tol=1e-10, eval_mode=True).value != a.value


def test_vit_config_is_validated():
    from landscape.errors import UserError

    with pytest.raises(UserError, match="divisible"):
        build_config([{"model": {"arch": "vit", "vit": {"dim": 30, "heads": 4}}}])
    with pytest.raises(UserError, match="not one for model.arch=vit"):
        build_config([{"model": {"arch": "vit", "norm": "noisy_batch"}}])
    with pytest.raises(UserError, match="not one for model.arch=vgg"):
        build_config([{"model": {"arch": "vgg", "norm": "dyt"}}])


def test_the_quick_presets_vit_is_the_calibrated_one():
    """The quick preset's ViT (README, calibration): depth 2, 8x8 patches. By hand: patch embedding
    3*8*8*64 + 64 = 12,352; class token 64; positions 17*64 = 1,088; two blocks of 33,216; head 650;
    five LayerNorms of 128."""
    from landscape import planning
    from landscape.experiments.transformer_norms import vit_run

    run = vit_run(planning.load_preset("quick", preset_keys()), "ln", "sgd", 0.1, 0)
    model = build_model(run.cfg.model, 0, in_dim=3, out_dim=10)
    assert parameter_count(model) == 12352 + 64 + 1088 + 2 * 33216 + 650 + 5 * 128
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
