"""A small Vision Transformer for 32x32 images, with the normalisation as the variable.

Patch embedding (a conv with stride = patch size), a learned position embedding, a class
token, ``depth`` pre-norm blocks ``x + Attn(Norm(x))``, ``x + MLP(Norm(x))``, a final norm
and a linear head on the class token. ``norm`` picks what every Norm is:

- ``layer``: LayerNorm over the features of each token (the standard ViT);
- ``rms``: RMSNorm, ``gamma * x / sqrt(mean(x^2) + eps)`` over the features (no centring);
- ``batch``: BatchNorm over each feature, its statistics taken over the batch *and* the tokens
  (``BatchNorm1d`` on ``(N * T, D)``), running estimates for eval mode;
- ``dyt``: Dynamic Tanh (Zhu et al., 2025), ``gamma * tanh(alpha x) + beta``, a learned scalar
  ``alpha`` (init 0.5) and per-feature ``gamma``, ``beta``: no statistics at all;
- ``none``: the identity (an unnormalised transformer).

Attention is written out (softmax(QK^T / sqrt(d)) V) by default (``attention="explicit"``), so every
probe, second derivatives included, works on it; ``attention="sdpa"`` calls PyTorch's fused
``scaled_dot_product_attention`` instead (the same function; its CPU and flash kernels have no double
backward, so curvature probes take the finite-difference Hessian-vector product there). Weights are
Xavier-uniform (biases 0) by default, like VGG's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

VIT_NORMS = ("none", "layer", "rms", "batch", "dyt")


class RMSNorm(nn.Module):
    """``gamma * x / sqrt(mean(x^2 over features) + eps)`` (Zhang and Sennrich, 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class DyT(nn.Module):
    """Dynamic Tanh: ``gamma * tanh(alpha * x) + beta`` with a learned scalar ``alpha``."""

    def __init__(self, dim: int, alpha: float = 0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((), float(alpha)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over each feature with the batch and the tokens as the sample axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def vit_norm(kind: str, dim: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "batch":
        return TokenBatchNorm(dim)
    if kind == "dyt":
        return DyT(dim)
    raise ValueError(f"unknown ViT norm '{kind}'; choose from {VIT_NORMS}")


ATTENTIONS = ("explicit", "sdpa")


class Attention(nn.Module):
    """Multi-head self-attention; ``causal``: each position attends to itself and the positions before it."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, kind: str = "explicit", causal: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        if kind not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}; got {kind!r}")
        self.heads, self.kind, self.p, self.causal = heads, kind, dropout, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.kind == "sdpa":
            out = nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=self.causal
            )
            return self.proj(out.transpose(1, 2).reshape(n, t, d))
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        if self.causal:
            later = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            attn = attn.masked_fill(later, float("-inf"))
        attn = self.drop(attn.softmax(-1))
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        norm: str,
        dropout: float,
        attention: str = "explicit",
        causal: bool = False,
    ):
        super().__init__()
        self.norm1, self.attn = vit_norm(norm, dim), Attention(dim, heads, dropout, attention, causal)
        self.norm2 = vit_norm(norm, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """``image_size`` x ``image_size`` images in ``patch`` x ``patch`` patches, ``depth`` blocks of
    width ``dim`` with ``heads`` heads; the class token's final state feeds the head."""

    def __init__(
        self,
        image_size: int = 32,
        patch: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        norm: str = "layer",
        dropout: float = 0.0,
        attention: str = "explicit",
    ):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, norm, dropout, attention) for _ in range(depth)])
        self.norm = vit_norm(norm, dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        x = self.blocks(self.drop(x))
        return self.head(self.norm(x)[:, 0])


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
