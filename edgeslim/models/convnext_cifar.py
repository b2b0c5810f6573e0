"""ConvNeXt (Liu et al., 2022) for 32x32 inputs: ConvNeXt-Atto's widths and depths (timm's
smallest variant: 40/80/160/320 channels, 2/2/6/2 blocks) with a 2x2 patchify stem, so a 32x32
input runs its four stages at 16, 8, 4 and 2 pixels (the ImageNet 4x4 stem would leave 1 pixel).

A block is the paper's: depthwise 7x7 conv, LayerNorm over channels, a pointwise MLP as two
Linear layers on channels-last tensors (4x expansion, GELU), a learned per-channel layer scale,
and a residual add. Stochastic depth is left out: the fine-tunes here are a few epochs long.

For pruning, the layer scale is its own module (``LayerScale``) with a torch-pruning pruner
(``LayerScalePruner``, registered with ``edgeslim.compress.prune.register_pruner``), so that
removing channels of the residual stream removes the matching scale entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from edgeslim.compress.prune import register_pruner
from edgeslim.models._registry import register_model


class LayerScale(nn.Module):
    """Multiplies the last dimension (channels) by a learned vector ``gamma``."""

    def __init__(self, channels: int, init: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class LayerScalePruner(tp.pruner.function.BasePruningFunc):
    """Removes entries of ``gamma`` with the channels they scale (in and out are the same)."""

    TARGET_MODULES = LayerScale

    def prune_out_channels(self, layer: LayerScale, idxs: Sequence[int]) -> LayerScale:
        keep = sorted(set(range(layer.gamma.numel())) - set(idxs))
        layer.gamma = nn.Parameter(layer.gamma.data[keep].clone())
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: LayerScale) -> int:
        return layer.gamma.numel()

    get_in_channels = get_out_channels


register_pruner(LayerScale, LayerScalePruner())


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel dimension of an (N, C, H, W) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.scale = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # N, H, W, C: LayerNorm and Linear act on C
        y = self.scale(self.pwconv2(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class CifarConvNeXt(nn.Module):
    def __init__(self, depths: Sequence[int] = (2, 2, 6, 2),
                 dims: Sequence[int] = (40, 80, 160, 320), in_channels: int = 3,
                 num_classes: int = 10, patch: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, dims[0], patch, patch),
                                   ChannelsFirstLayerNorm(dims[0], eps=1e-6)]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i:  # downsampling between stages: LayerNorm, then a 2x2 stride-2 conv
                layers += [ChannelsFirstLayerNorm(dims[i - 1], eps=1e-6),
                           nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [Block(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).mean(dim=(2, 3))  # global average pool
        return self.head(self.norm(x))


@register_model("convnext_atto")
def convnext_atto(in_channels: int = 3, num_classes: int = 10) -> CifarConvNeXt:
    return CifarConvNeXt(in_channels=in_channels, num_classes=num_classes)
