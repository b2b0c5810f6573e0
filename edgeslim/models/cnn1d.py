"""A 1-D CNN for multichannel time series (N, C, L), such as UCI-HAR's 9 inertial channels of
128 steps: four Conv1d + BatchNorm1d + ReLU layers (64, 64, 128, 128 channels; kernels 7, 5,
5, 3), a max pool halving the sequence after the second and third, a global average pool and
one linear classifier. Every layer is one the pruning, clustering and quantization stages
handle, and it exports to ONNX as Conv/Relu/MaxPool/ReduceMean/Gemm.

``width`` scales the channels, for CPU-sized experiments.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgeslim.models._registry import register_model


class SensorCNN1d(nn.Module):
    def __init__(self, in_channels: int = 9, num_classes: int = 6, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for i, (out, kernel) in enumerate(((64, 7), (64, 5), (128, 5), (128, 3))):
            out = max(1, round(out * width))
            layers += [nn.Conv1d(previous, out, kernel, padding=kernel // 2, bias=False),
                       nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
            if i in (1, 2):
                layers.append(nn.MaxPool1d(2, ceil_mode=True))
            previous = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=2))


@register_model("cnn1d")
def cnn1d(in_channels: int = 9, num_classes: int = 6, width: float = 1.0) -> SensorCNN1d:
    return SensorCNN1d(in_channels, num_classes, width)
