"""A fully-connected network on flattened images: the edge-of-stability experiments' model."""

from __future__ import annotations

from torch import nn

from landscape.models.norms import make_norm

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "sigmoid": nn.Sigmoid}
MLP_NORMS = ("none", "batch", "noisy_batch")
NORM_POSITIONS = ("after", "before")  # the norm after each hidden layer's activation, or between linear and activation


class MLP(nn.Module):
    """``flatten -> [linear -> activation (-> norm)] x len(widths) -> linear``, or with ``norm_position="before"``
    ``flatten -> [linear (-> norm) -> activation] x len(widths) -> linear``.

    Cohen et al. (2021) train ``fc-tanh``: two hidden layers of 200 tanh units, with PyTorch's
    default initialisation, on the first 5,000 CIFAR-10 images. ``norm="batch"`` puts a
    BatchNorm after each activation, as their ``fc-*-bn`` networks do. Ioffe and Szegedy (2015, Figure 1) put it
    before each sigmoid (``norm_position="before"``); ``norm="noisy_batch"`` adds the paper's noise after it.
    """

    def __init__(
        self,
        in_features: int,
        widths=(200, 200),
        num_classes: int = 10,
        activation: str = "tanh",
        norm: str = "none",
        norm_position: str = "after",
        noise: dict | None = None,
        noise_seed: int = 0,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'")
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, got {norm_position!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i, out in enumerate(widths):
            norms = [make_norm(norm, out, i, conv=False, noise=noise, noise_seed=noise_seed)] if norm != "none" else []
            act = [ACTIVATIONS[activation]()]
            layers += [nn.Linear(width, out), *(norms + act if norm_position == "before" else act + norms)]
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
