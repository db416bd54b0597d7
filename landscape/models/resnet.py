"""The CIFAR ResNets of He et al. (2016, Section 4.2): depth 6n + 2, widths 16-32-64, option-A shortcuts.

ResNet-8/20/32/56 have n = 1/3/5/9 basic blocks per stage. ``norm="batch"`` is the original
(conv -> BN -> ReLU, convs without bias); ``norm="none"`` drops every BN (convs get a bias);
``fixup=True`` (unnormalised only) adds Fixup's scalar biases and multipliers (Zhang, Dauphin and
Ma, 2019), whose initialisation (:func:`fixup_init`) lets a deep unnormalised ResNet train.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from landscape.models.norms import make_norm

RESNET_DEPTHS = (8, 20, 32, 56, 110)
RESNET_NORMS = ("none", "batch")
WIDTHS = (16, 32, 64)


def blocks_per_stage(depth: int) -> int:
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {RESNET_DEPTHS} (6n + 2); got {depth}")
    return (depth - 2) // 6


class Shortcut(nn.Module):
    """Option A: the identity, or (across a stage boundary) every other pixel with the new channels zero-padded."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, out_ch - in_ch

    def forward(self, x):
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, fixup: bool):
        super().__init__()
        bias = norm == "none" and not fixup
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = make_norm(norm, out_ch, 0)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias)
        self.bn2 = make_norm(norm, out_ch, 0)
        self.shortcut = Shortcut(in_ch, out_ch, stride)
        self.fixup = fixup
        if fixup:  # Fixup's scalar biases before each conv and activation, and the branch's multiplier
            self.bias1a, self.bias1b, self.bias2a, self.bias2b = (nn.Parameter(torch.zeros(1)) for _ in range(4))
            self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        if not self.fixup:
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
        return F.relu(out + self.shortcut(x + self.bias1a))


class ResNet(nn.Module):
    """CIFAR ResNet-``depth`` for ``in_channels``-channel images (any size; global average pooling before the head)."""

    def __init__(
        self, depth: int = 20, norm: str = "batch", num_classes: int = 10, in_channels: int = 3, fixup: bool = False
    ):
        super().__init__()
        if norm not in RESNET_NORMS:
            raise ValueError(f"ResNet norm must be one of {RESNET_NORMS}; got {norm!r}")
        if fixup and norm != "none":
            raise ValueError("Fixup is for the unnormalised ResNet (norm='none')")
        n = blocks_per_stage(depth)
        self.depth, self.fixup = depth, fixup
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=norm == "none" and not fixup)
        self.bn1 = make_norm(norm, WIDTHS[0], 0)
        blocks, in_ch = [], WIDTHS[0]
        for stage, width in enumerate(WIDTHS):
            for i in range(n):
                blocks.append(BasicBlock(in_ch, width, 2 if stage > 0 and i == 0 else 1, norm, fixup))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        if fixup:
            self.bias_head = nn.Parameter(torch.zeros(1))
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out + self.bias_head if self.fixup else out)


def fixup_init(model: ResNet) -> None:
    """Fixup (Zhang et al., 2019, for m = 2 layers per branch and L branches): each branch's first conv
    He-normal scaled by L^(-1/2), its last conv zero, the head zero; the scalar biases 0 and multipliers 1.
    At initialisation every residual branch is the zero function, so the output is finite at any depth."""
    branches = len(model.blocks)
    for block in model.blocks:
        conv = block.conv1
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out) * branches**-0.5)
        nn.init.zeros_(block.conv2.weight)
    nn.init.zeros_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
