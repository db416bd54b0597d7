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


def square_onehot(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean_i ||f(x_i) - onehot(y_i)||^2 / 2``: classification with the square loss, as Cohen et al.
    (2021, 2022) train for the edge of stability (their ``mse``: half the squared distance to the
    one-hot label, summed over classes, averaged over examples)."""
    target = F.one_hot(y, out.shape[1]).to(out.dtype)
    return 0.5 * (out - target).pow(2).sum(1).mean()


LOSSES = {
    "cross_entropy": F.cross_entropy,  # classification (image data sets)
    "square_onehot": square_onehot,  # classification with the square loss to one-hot labels (Cohen et al.)
    "sum_squares": sum_squares,  # regression: summed over samples
    "mean_squares": mean_squares,  # regression: averaged over samples
    "mse": F.mse_loss,
}  # regression: averaged over samples and outputs
CLASSIFICATION = ("cross_entropy", "square_onehot")  # losses of class labels (image data sets)
