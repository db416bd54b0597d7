"""The losses a run can train with (``loss`` in the config): the name is the choice, the function its meaning."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sum_squares(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sum_i ||f(x_i) - y_i||^2``: the deep linear network's loss in the paper's appendix."""
    return (out - y).pow(2).sum()


def mean_squares(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean_i ||f(x_i) - y_i||^2``: the same loss averaged over samples instead of summed."""
    return (out - y).pow(2).sum(1).mean()


LOSSES = {"cross_entropy": F.cross_entropy,  # classification (image data sets)
          "sum_squares": sum_squares,  # regression: summed over samples
          "mean_squares": mean_squares,  # regression: averaged over samples
          "mse": F.mse_loss}  # regression: averaged over samples and outputs
CLASSIFICATION = ("cross_entropy",)
