"""Normalisation layers beyond BatchNorm: noisy BatchNorm (ICS_distrib) and l_p normalisation."""

from __future__ import annotations

import torch
from torch import nn

from landscape.data import seeded_generator

NORMS = ("none", "batch", "noisy_batch", "l1", "l2", "linf")  # make_norm: after a conv or linear layer
NOISE_FORMS = ("per_unit", "per_layer")  # NoisyBatchNorm's form


class NoisyBatchNorm(nn.BatchNorm2d):
    """BatchNorm followed by noise that changes every step (the paper's Figure 2; the
    paper's Appendix A.2.1, Algorithm 1).

    ``form="per_unit"`` (the paper's): at every step, for each unit j (channel) draw
    ``mu_j ~ U(mean_range)`` and ``sigma_j ~ U(scale_range)``; then for every activation i of
    that unit (sample, and for conv layers every position: "the height and width dimensions
    are part of the batch") draw ``m[i,j] ~ U(mu_j - mean_spread, mu_j + mean_spread)`` and
    ``s[i,j] ~ N(sigma_j, scale_std**2)``, and set ``a[i,j] <- s[i,j] * a[i,j] + m[i,j]``.

    ``form="per_layer"`` (landscape 0.1, kept for comparison): one (mu, sigma) per layer and
    step, one (m, s) per sample and channel shared by all positions.

    The noise is applied in train mode only, and is a pure function of (seed, layer, step):
    ``noise_step`` is a buffer that counts train-mode forwards, so a resumed run draws the
    same noise, and a probe (which runs on cloned buffers) neither advances the count nor sees
    different noise between its own evaluations. Draws are made on the activations' device.
    """

    def __init__(
        self,
        channels: int,
        seed: int = 0,
        layer: int = 0,
        mean_range=(-0.5, 0.5),
        scale_range=(1.0, 1.25),
        mean_spread: float = 0.1,
        scale_std: float = 0.1,
        form: str = "per_unit",
        **bn_kwargs,
    ):
        super().__init__(channels, **bn_kwargs)
        if form not in NOISE_FORMS:
            raise ValueError(f"form must be one of {NOISE_FORMS}, got {form!r}")
        self.seed, self.layer, self.form = seed, layer, form
        self.mean_range, self.scale_range = tuple(mean_range), tuple(scale_range)
        self.mean_spread, self.scale_std = mean_spread, scale_std
        self.register_buffer("noise_step", torch.zeros((), dtype=torch.int64))

    def _check_input_dim(self, x: torch.Tensor) -> None:  # serves conv (4-D) and linear (2-D) layers
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2-D or 4-D input, got {x.dim()}-D")

    def draw(
        self, shape: tuple[int, ...] | int, step: int, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """The noise of ``step`` for activations of ``shape`` (N, C) or (N, C, H, W) (an int means
        (N, C)): mu and sigma (per unit: shape (C,); per layer: scalars), and m, s broadcastable
        to ``shape`` (per unit: ``shape`` itself; per layer: (N, C) plus singleton positions)."""
        shape = (shape, self.num_features) if isinstance(shape, int) else tuple(shape)
        g = seeded_generator(self.seed, self.layer, step, device=device)
        (lo_m, hi_m), (lo_s, hi_s) = self.mean_range, self.scale_range
        units = (self.num_features,) if self.form == "per_unit" else ()
        mu = lo_m + (hi_m - lo_m) * torch.rand(units, generator=g, device=device)
        sigma = lo_s + (hi_s - lo_s) * torch.rand(units, generator=g, device=device)
        if self.form == "per_unit":
            per = shape  # every activation: sample, channel and position
            at = (1, -1) + (1,) * (len(shape) - 2)
            mu_b, sigma_b = mu.view(at), sigma.view(at)
        else:
            per = shape[:2] + (1,) * (len(shape) - 2)  # per sample and channel, shared by positions
            mu_b, sigma_b = mu, sigma
        # In place: these are as large as the activations, and a temporary per operation doubled the cost.
        m = torch.rand(per, generator=g, device=device).mul_(2 * self.mean_spread).add_(mu_b - self.mean_spread)
        s = torch.randn(per, generator=g, device=device).mul_(self.scale_std).add_(sigma_b)
        return {"mu": mu, "sigma": sigma, "m": m, "s": s}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if not self.training:
            return y
        # One host read of the counter per layer and step: the price of noise that is a pure
        # function of (seed, layer, step) and so survives resume and probes unchanged.
        noise = self.draw(tuple(y.shape), int(self.noise_step), y.device)
        self.noise_step.add_(1)
        return y * noise["s"].to(y.dtype) + noise["m"].to(y.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", form={self.form}"


class LpNorm(nn.Module):
    """l_p normalisation (the paper's appendix; docs/protocol.md): subtract the per-channel mean, as BN does, then
    divide by the channel's average l_p norm computed before mean-shifting.

    With the channel's M values over batch and space, the average l_p norm is the power mean
    ``(mean |x|^p)^(1/p)`` for p = 1, 2 (the l_p norm divided by M^(1/p), so it does not grow
    with the batch or the feature map), and ``max |x|`` for p = inf. Affine gamma/beta and
    running estimates for eval mode work as in BatchNorm.
    """

    def __init__(self, channels: int, p: float, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if p not in (1, 2, float("inf")):
            raise ValueError(f"p must be 1, 2 or inf, got {p}")
        self.p, self.eps, self.momentum = p, eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_scale", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(x.dim()) if d != 1]
        if self.training:
            mean = x.mean(dims)
            if self.p == float("inf"):
                scale = x.abs().amax(dims)
            elif self.p == 1:
                scale = x.abs().mean(dims)
            else:
                scale = x.square().mean(dims).sqrt()
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_scale.lerp_(scale.detach(), self.momentum)
        else:
            mean, scale = self.running_mean, self.running_scale
        shape = [1, -1] + [1] * (x.dim() - 2)
        # gamma (x - mean) / (scale + eps) + beta as one multiply-add over the activations
        a = self.weight / (scale + self.eps)
        return torch.addcmul((self.bias - mean * a).view(shape), x, a.view(shape))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, p={self.p}"


def make_norm(
    kind: str, channels: int, layer: int, conv: bool = True, noise: dict | None = None, noise_seed: int = 0
) -> nn.Module:
    """The normalisation module for ``kind`` (none | batch | noisy_batch | l1 | l2 | linf).

    ``conv`` picks BatchNorm2d (N, C, H, W) or BatchNorm1d (N, C); the others take either.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels) if conv else nn.BatchNorm1d(channels)
    if kind == "noisy_batch":
        return NoisyBatchNorm(channels, seed=noise_seed, layer=layer, **(noise or {}))
    if kind in ("l1", "l2", "linf"):
        return LpNorm(channels, {"l1": 1, "l2": 2, "linf": float("inf")}[kind])
    raise ValueError(f"unknown norm '{kind}'")
