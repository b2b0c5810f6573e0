"""MobileNetV2 (Sandler et al., 2018) with a CIFAR stem.

torchvision's MobileNetV2 with the 32x32 adaptation used by CIFAR implementations: the stem
convolution and the first stride-2 stage run at stride 1, so a 32x32 input reaches the last stage
at 4x4 instead of 1x1. Everything else (inverted residuals, depthwise convs, ReLU6) is
torchvision's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from edgeslim.models._registry import register_model

if TYPE_CHECKING:
    from torchvision.models import MobileNetV2


@register_model("mobilenetv2")
def mobilenetv2(in_channels: int = 3, num_classes: int = 10) -> MobileNetV2:
    # Imported here: torchvision's models import torch._dynamo, 4.7 s of every run's start on
    # a 2-core host, for a model most runs do not build.
    from torchvision.models import MobileNetV2

    settings = [
        # expansion t, channels c, repeats n, stride s (torchvision's table, stage 2 at s=1)
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    model = MobileNetV2(num_classes=num_classes, inverted_residual_setting=settings)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    return model
