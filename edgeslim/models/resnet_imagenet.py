"""ResNet-18 and ResNet-34 (He et al., 2016) with a CIFAR stem: the ImageNet models' four stages
of 64/128/256/512 channels (2/2/2/2 and 3/4/6/3 basic blocks), with the 7x7 stride-2 stem and
its max pool replaced by one 3x3 stride-1 convolution, so a 32x32 input reaches the last stage
at 4x4 (the usual CIFAR adaptation). Shortcuts that change shape are 1x1 convolutions with
batch norm, as in torchvision.

``width`` scales every stage's channels (0.25 gives 16/32/64/128), for CPU-sized experiments.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from edgeslim.models._registry import register_model
from edgeslim.models.resnet_cifar import BasicBlock


class CifarStemResNet(nn.Module):
    def __init__(self, blocks: Sequence[int], in_channels: int = 3, num_classes: int = 10,
                 width: float = 1.0) -> None:
        super().__init__()
        planes = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], planes[0]
        for i, (n, out) in enumerate(zip(blocks, planes)):
            layer = []
            for j in range(n):
                layer.append(BasicBlock(in_planes, out, 2 if i and not j else 1))
                in_planes = out
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


@register_model("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 10, width: float = 1.0
             ) -> CifarStemResNet:
    return CifarStemResNet((2, 2, 2, 2), in_channels, num_classes, width)


@register_model("resnet34")
def resnet34(in_channels: int = 3, num_classes: int = 10, width: float = 1.0
             ) -> CifarStemResNet:
    return CifarStemResNet((3, 4, 6, 3), in_channels, num_classes, width)
