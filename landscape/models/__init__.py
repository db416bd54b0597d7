"""Model builders: config in, flat arguments to the model classes, seeded initialisation."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from landscape.models.dln import DeepLinear
from landscape.models.norms import NOISE_FORMS, NORMS, LpNorm, NoisyBatchNorm, make_norm
from landscape.models.vgg import HEADS, VGG, VGG_FEATURES
from landscape.models.vit import VIT_NORMS, ViT

# The choices the config offers (model.arch, model.norm per arch, model.head, model.init, model.vgg_depth).
ARCH_NORMS = {"vgg": NORMS,  # after each conv (conv -> norm -> ReLU)
              "dln": NORMS,  # after each linear layer but the last
              "vit": VIT_NORMS}  # every pre-norm slot and the final norm
ALL_NORMS = tuple(dict.fromkeys(n for norms in ARCH_NORMS.values() for n in norms))
INITS = ("xavier", "kaiming", "torch_default")
VGG_DEPTHS = tuple(VGG_FEATURES)

__all__ = ["ARCH_NORMS", "ALL_NORMS", "INITS", "VGG_DEPTHS", "HEADS", "NOISE_FORMS", "VGG", "ViT", "DeepLinear", "LpNorm", "NoisyBatchNorm", "make_norm", "build_model", "initialize"]


def initialize(model: nn.Module, scheme: str) -> None:
    """Re-initialise conv and linear weights: ``xavier`` (Glorot uniform, biases 0; the paper; the ViT's
    attention and MLP projections and patch embedding too),
    ``kaiming`` (He normal for ReLU, fan-in, biases 0) or ``torch_default`` (left as built).
    Normalisation layers keep gamma = 1, beta = 0."""
    if scheme == "torch_default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                raise ValueError(f"unknown init '{scheme}'")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(cfg, seed: int = 0, noise_seed: int = 0, in_dim: int | None = None, out_dim: int = 10,
                image_size: int = 32) -> nn.Module:
    """The model ``cfg`` (a ``ModelConfig``) describes, built on the CPU from ``seed`` without touching the global RNG (so init is device-independent).
    ``in_dim``: image channels (vgg, vit) or input width (dln); ``image_size``: the images' side (vit)."""
    noise = dataclasses.asdict(cfg.noise)
    if in_dim is None:
        in_dim = cfg.dln_width if cfg.arch == "dln" else 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.arch == "vgg":
            model = VGG(cfg.vgg_depth, cfg.width, cfg.head, cfg.norm, out_dim, noise, noise_seed, in_dim)
        elif cfg.arch == "vit":
            model = ViT(image_size, cfg.vit_patch, in_dim, out_dim, cfg.vit_dim, cfg.vit_depth, cfg.vit_heads, cfg.vit_mlp_ratio,
                        cfg.norm, cfg.dropout)
        elif cfg.arch == "dln":
            model = DeepLinear(cfg.dln_depth, in_dim, cfg.dln_width, out_dim, cfg.norm, noise, noise_seed)
        else:
            raise ValueError(f"unknown arch '{cfg.arch}'")
        initialize(model, cfg.init)
    return model
