"""VGG for 32x32 (or larger) inputs, with the normalisation placed conv -> norm -> ReLU."""

from __future__ import annotations

from torch import nn

from landscape.models.norms import make_norm

VGG_FEATURES = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
HEADS = ("linear", "mlp")


class VGG(nn.Module):
    """VGG-{11,13,16,19} on 32x32 images, or any size of at least 32 with ``in_channels`` channels.

    ``width`` scales every channel count (0.25 gives 16..128). ``head`` is ``linear`` (one
    layer on the 1x1 feature map) or ``mlp`` (512-512-10, hidden sizes scaled by width).
    ``norm`` follows every conv: none | batch | noisy_batch | l1 | l2 | linf. Convs have a
    bias only without normalisation (a norm's mean subtraction would cancel it). After the five
    poolings a 32x32 image is a 1x1 map; larger images end in an average pooling to 1x1 before the
    head (the identity at 32x32, so CIFAR results do not change).
    """

    def __init__(
        self,
        depth: int = 11,
        width: float = 1.0,
        head: str = "linear",
        norm: str = "none",
        num_classes: int = 10,
        noise: dict | None = None,
        noise_seed: int = 0,
        in_channels: int = 3,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, conv_index = in_channels, 0
        for item in VGG_FEATURES[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out_ch = max(1, round(item * width))
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=norm == "none"),
                make_norm(norm, out_ch, conv_index, noise=noise, noise_seed=noise_seed),
                nn.ReLU(inplace=True),
            ]
            in_ch, conv_index = out_ch, conv_index + 1
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if head == "linear":
            self.classifier = nn.Linear(in_ch, num_classes)
        elif head == "mlp":
            hidden = max(1, round(512 * width))
            self.classifier = nn.Sequential(
                nn.Linear(in_ch, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, num_classes),
            )
        else:
            raise ValueError(f"unknown head '{head}'")

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
