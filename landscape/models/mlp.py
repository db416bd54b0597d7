"""A fully-connected network on flattened images: the edge-of-stability experiments' model."""

from __future__ import annotations

from torch import nn

from landscape.models.norms import make_norm

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
MLP_NORMS = ("none", "batch")


class MLP(nn.Module):
    """``flatten -> [linear -> activation (-> norm)] x len(widths) -> linear``.

    Cohen et al. (2021) train ``fc-tanh``: two hidden layers of 200 tanh units, with PyTorch's
    default initialisation, on the first 5,000 CIFAR-10 images. ``norm="batch"`` puts a
    BatchNorm after each activation, as their ``fc-*-bn`` networks do.
    """

    def __init__(
        self, in_features: int, widths=(200, 200), num_classes: int = 10, activation: str = "tanh", norm: str = "none"
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i, out in enumerate(widths):
            layers += [nn.Linear(width, out), ACTIVATIONS[activation]()]
            if norm != "none":
                layers.append(make_norm(norm, out, i, conv=False))
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
