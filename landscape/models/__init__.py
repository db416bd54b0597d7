"""Model builders: config in, flat arguments to the model classes, seeded initialisation."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from landscape.models.dln import DeepLinear
from landscape.models.mlp import ACTIVATIONS, MLP, MLP_NORMS, NORM_POSITIONS
from landscape.models.norms import NOISE_FORMS, NORMS, LpNorm, NoisyBatchNorm, make_norm
from landscape.models.resnet import RESNET_DEPTHS, RESNET_NORMS, ResNet, fixup_init
from landscape.models.vgg import HEADS, VGG, VGG_FEATURES
from landscape.models.vit import VIT_NORMS, ViT

# The choices the config offers (model.arch, model.norm per arch, model.init, model.vgg.head, model.vgg.depth).
ARCH_NORMS = {
    "vgg": NORMS,  # after each conv (conv -> norm -> ReLU)
    "dln": NORMS,  # after each linear layer but the last
    "vit": VIT_NORMS,  # every pre-norm slot and the final norm
    "mlp": MLP_NORMS,  # after each hidden layer's activation
    "resnet": RESNET_NORMS,
}  # after each conv (the original ResNet), or none
IMAGE_ARCHS = ("vgg", "vit", "mlp", "resnet")  # the archs that take images (dln takes vectors)
ALL_NORMS = tuple(dict.fromkeys(n for norms in ARCH_NORMS.values() for n in norms))
INITS = ("xavier", "kaiming", "lecun_normal", "torch_default", "fixup")  # fixup: the unnormalised ResNet only
VGG_DEPTHS = tuple(VGG_FEATURES)

__all__ = [
    "ARCH_NORMS",
    "ALL_NORMS",
    "INITS",
    "VGG_DEPTHS",
    "RESNET_DEPTHS",
    "IMAGE_ARCHS",
    "ACTIVATIONS",
    "NORM_POSITIONS",
    "HEADS",
    "NOISE_FORMS",
    "VGG",
    "ViT",
    "DeepLinear",
    "MLP",
    "ResNet",
    "LpNorm",
    "NoisyBatchNorm",
    "make_norm",
    "build_model",
    "initialize",
]


def initialize(model: nn.Module, scheme: str) -> None:
    """Re-initialise conv and linear weights: ``xavier`` (Glorot uniform, biases 0; the paper; the ViT's
    attention and MLP projections and patch embedding too),
    ``kaiming`` (He normal for ReLU, fan-in, biases 0), ``lecun_normal`` (Gaussian, variance 1 / fan-in, biases 0:
    the "small random Gaussian values" of Ioffe and Szegedy's MNIST network, scaled as LeCun et al. 1998),
    ``torch_default`` (left as built) or ``fixup``
    (an unnormalised ResNet: He normal, then Fixup's scaling of each residual branch, :func:`fixup_init`).
    Normalisation layers keep gamma = 1, beta = 0."""
    if scheme == "torch_default":
        return
    if scheme == "fixup":
        if not isinstance(model, ResNet) or not model.fixup:
            raise ValueError("init 'fixup' is for the unnormalised ResNet")
        initialize(model, "kaiming")
        fixup_init(model)
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif scheme == "lecun_normal":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")  # std 1 / sqrt(fan_in)
            else:
                raise ValueError(f"unknown init '{scheme}'")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(
    cfg, seed: int = 0, noise_seed: int = 0, in_dim: int | None = None, out_dim: int = 10, image_size: int = 32
) -> nn.Module:
    """The model ``cfg`` (a ``ModelConfig``) describes, built on the CPU from ``seed`` without touching the global RNG
    (so init is device-independent): the chosen architecture's section, as flat arguments to its class.
    ``in_dim``: image channels (vgg, vit, mlp, resnet) or input width (dln); ``image_size``: the images' side
    (vit, mlp)."""
    noise = dataclasses.asdict(cfg.noise)
    if in_dim is None:
        in_dim = cfg.dln.width if cfg.arch == "dln" else 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.arch == "vgg":
            v = cfg.vgg
            model = VGG(v.depth, v.width, v.head, cfg.norm, out_dim, noise, noise_seed, in_dim)
        elif cfg.arch == "vit":
            v = cfg.vit
            model = ViT(
                image_size,
                v.patch,
                in_dim,
                out_dim,
                v.dim,
                v.depth,
                v.heads,
                v.mlp_ratio,
                cfg.norm,
                v.dropout,
                v.attention,
            )
        elif cfg.arch == "mlp":
            m = cfg.mlp
            model = MLP(
                in_dim * image_size * image_size,
                tuple(m.widths),
                out_dim,
                m.activation,
                cfg.norm,
                m.norm_position,
                noise,
                noise_seed,
            )
        elif cfg.arch == "resnet":
            model = ResNet(cfg.resnet.depth, cfg.norm, out_dim, in_dim, fixup=cfg.init == "fixup")
        elif cfg.arch == "dln":
            model = DeepLinear(cfg.dln.depth, in_dim, cfg.dln.width, out_dim, cfg.norm, noise, noise_seed)
        else:
            raise ValueError(f"unknown arch '{cfg.arch}'")
        initialize(model, cfg.init)
    return model
