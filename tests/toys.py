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
