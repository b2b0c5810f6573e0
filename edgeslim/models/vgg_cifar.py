"""VGG-11-BN, VGG-16-BN and VGG-19-BN for 32x32 inputs (Simonyan & Zisserman, 2015; CIFAR variant).

Convolutions with batch norm as in the ImageNet models, a global average pool in place of the
7x7 feature map, and one linear classifier (the usual CIFAR adaptation). Max pools use
``ceil_mode`` so that inputs smaller than 32x32 (8x8 digits) keep a 1x1 map instead of vanishing.
``width`` scales every convolution's channels, for CPU-sized experiments.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgeslim.models._registry import register_model

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    def __init__(self, config: list[int | str], in_channels: int = 3,
                 num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = max(1, round(int(item) * width))
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False),
                           nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg11_bn")
def vgg11_bn(in_channels: int = 3, num_classes: int = 10) -> CifarVGG:
    return CifarVGG(CONFIGS["vgg11"], in_channels, num_classes)


@register_model("vgg16_bn")
def vgg16_bn(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarVGG:
    return CifarVGG(CONFIGS["vgg16"], in_channels, num_classes, width)


@register_model("vgg19_bn")
def vgg19_bn(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarVGG:
    return CifarVGG(CONFIGS["vgg19"], in_channels, num_classes, width)
