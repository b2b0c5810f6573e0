"""Narrow variants of the studies' CIFAR models, so that the benchmark tables
(benchmarks/reproduce_studies.py, benchmarks/search_vs_rules.py) train them on a 2-core CPU.
Used as model specifications ``benchmarks/narrow_models.py:NAME``; the full-width models are
the registered ``vgg11_bn``, ``vgg16_bn`` and ``resnet34``."""

from __future__ import annotations

from torch import nn

from edgeslim.models.resnet_imagenet import resnet34
from edgeslim.models.vgg_cifar import CONFIGS, CifarVGG, vgg16_bn


def vgg11_bn_half(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """VGG-11-BN with 32/64/128/256/256 channels (1/4 of the MACs)."""
    return CifarVGG(CONFIGS["vgg11"], in_channels, num_classes, width=0.5)


def vgg16_bn_quarter(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """VGG-16-BN with 16/32/64/128/128 channels (1/16 of the MACs)."""
    return vgg16_bn(in_channels, num_classes, width=0.25)


def resnet34_quarter(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-34 (CIFAR stem) with 16/32/64/128 channels (1/16 of the MACs)."""
    return resnet34(in_channels, num_classes, width=0.25)
