"""AlexNet (Krizhevsky et al., 2012) for 32x32 and 28x28 inputs: its five convolutions
(64/192/384/256/256 channels) and three fully connected layers, with 3x3 kernels at stride 1
instead of the 11x11 stride-4 stem, three 2x2 max pools, and batch norm after each convolution
(the shared training recipe's learning rate diverges without it). An adaptive average pool to
2x2 feeds the classifier (1024 -> 512 -> 512 -> classes), so any input of 8x8 or more works.

``width`` scales every layer's channels and hidden units, for CPU-sized experiments.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgeslim.models._registry import register_model


class CifarAlexNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c = [max(1, round(v * width)) for v in (64, 192, 384, 256, 256, 512)]
        layers: list[nn.Module] = []
        previous = in_channels
        for i, out in enumerate(c[:5]):
            layers += [nn.Conv2d(previous, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            if i in (0, 1, 4):
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            previous = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(4 * previous, c[5]), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(c[5], c[5]), nn.ReLU(inplace=True),
            nn.Linear(c[5], num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("alexnet")
def alexnet(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarAlexNet:
    return CifarAlexNet(in_channels, num_classes, width)
