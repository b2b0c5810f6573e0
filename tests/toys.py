"""Small models whose parameter and MAC counts can be worked out by hand."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
PI4 = REPO / "budgets" / "pi4.yaml"
UNTIMED = REPO / "tests" / "untimed.yaml"  # pi4.yaml without latency


class PlainNet(nn.Module):
    """conv(1->16) -> BN -> ReLU -> conv(16->32) -> BN -> ReLU -> GAP -> linear(32->10)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResidualNet(nn.Module):
    """A stem and one residual block: conv1 and the block's conv2 write to the same stream, so
    they form one dependency group; the block's inner conv is a group of its own."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.block_conv1 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.block_bn1 = nn.BatchNorm2d(32)
        self.block_conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.block_bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.block_bn1(self.block_conv1(x)))
        x = torch.relu(x + self.block_bn2(self.block_conv2(y)))
        return self.fc(x.mean(dim=(2, 3)))


class DepthwiseNet(nn.Module):
    """Pointwise expand -> depthwise 3x3 -> pointwise project, as in MobileNet blocks."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.expand = nn.Conv2d(16, 64, 1, bias=False)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
        self.project = nn.Conv2d(64, 24, 1, bias=False)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(torch.relu(self.expand(x))))
        return self.fc(self.project(x).mean(dim=(2, 3)))


def plain_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return PlainNet(in_channels, num_classes)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass, the other half go through a
    pointwise -> depthwise -> pointwise branch, then the halves are shuffled together."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, changed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((kept, self.branch(changed)), 1), 2)


class ShuffleNet(nn.Module):
    """A stem, three shuffle units (three in a row make torch-pruning's index mapping divide
    by zero, as in torchvision's ShuffleNetV2) and a head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 24, 3, padding=1, bias=False)
        self.units = nn.Sequential(ShuffleUnit(24), ShuffleUnit(24), ShuffleUnit(24))
        self.head = nn.Conv2d(24, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(torch.relu(self.stem(x)))
        return self.fc(torch.relu(self.head(x)).mean(dim=(2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * gate


class GroupedShuffleBlock(nn.Module):
    """Grouped 1x1 convs around a depthwise conv, a channel shuffle between, and a residual
    add: torch-pruning prunes the grouped convs' input channels by index as if they were
    not grouped, which fails when the lowest channels are removed."""

    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        self.groups = groups
        self.conv1 = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = channel_shuffle(torch.relu(self.bn1(self.conv1(x))), self.groups)
        return torch.relu(x + self.bn3(self.conv2(self.bn2(self.dw(y)))))


class ConcatBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, channels, 1)
        self.b = nn.Conv2d(channels, channels, 3, padding=1)
        self.se = SqueezeExcite(2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(torch.cat([self.a(x), self.b(x)], 1))


class MobileNet(nn.Module):
    """A user's mobile-style model: squeeze-and-excitation gates, grouped convs with a channel
    shuffle, and a concatenating block."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.se = SqueezeExcite(32)
        self.block = GroupedShuffleBlock(32)
        self.cat = ConcatBlock(32)
        self.head = nn.Conv2d(64, 64, 1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cat(self.block(self.se(torch.relu(self.stem(x)))))
        return self.fc(torch.relu(self.head(x)).mean(dim=(2, 3)))
