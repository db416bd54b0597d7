"""The optimizers a run can train with (``optim.name`` in the config), built from flat arguments."""

from __future__ import annotations

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw")  # sgd: the paper's (plain, constant lr); adam, adamw: beyond it


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` names, over every trainable parameter, with a constant lr."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'")
