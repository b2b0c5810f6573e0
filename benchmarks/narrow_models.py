"""Quarter-width variants of the studies' CIFAR models, so that the reproduction table
(benchmarks/reproduce_studies.py) trains them on a 2-core CPU. Used as model specifications
``benchmarks/narrow_models.py:NAME``; the full-width models are the registered ``vgg16_bn``
and ``resnet34``."""

from __future__ import annotations

from torch import nn

from edgeslim.models.resnet_imagenet import resnet34
from edgeslim.models.vgg_cifar import vgg16_bn


def vgg16_bn_quarter(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """VGG-16-BN with 16/32/64/128/128 channels (1/16 of the MACs)."""
    return vgg16_bn(in_channels, num_classes, width=0.25)


def resnet34_quarter(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-34 (CIFAR stem) with 16/32/64/128 channels (1/16 of the MACs)."""
    return resnet34(in_channels, num_classes, width=0.25)
