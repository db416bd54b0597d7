"""Deep linear network (the paper's Appendix A.1; docs/protocol.md): x -> W_k ... W_1 x, optionally normalised
between layers."""

from __future__ import annotations

from torch import nn

from landscape.models.norms import make_norm


class DeepLinear(nn.Module):
    """``depth`` bias-free linear layers ``in_dim -> width -> ... -> width -> out_dim``.

    With ``norm`` other than ``none`` a normalisation (BatchNorm1d for ``batch``) sits after
    every layer but the last, so the network stays linear in each layer's weights.
    """

    def __init__(
        self,
        depth: int = 25,
        in_dim: int = 10,
        width: int = 10,
        out_dim: int = 10,
        norm: str = "none",
        noise: dict | None = None,
        noise_seed: int = 0,
    ):
        super().__init__()
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=False))
            if i < depth - 1 and norm != "none":
                layers.append(make_norm(norm, dims[i + 1], i, conv=False, noise=noise, noise_seed=noise_seed))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)
