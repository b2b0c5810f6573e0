"""Named pipelines from the studies this tool is compared against, as fixed candidates.

A preset fixes the stage order and each stage's settings; its pruning ratio is uniform across
layers and chosen per budget (``edgeslim.search.references.fit_uniform_ratio``: the smallest
ratio whose structure meets the budget's parameter and MAC limits). A preset runs alone
(``optimize --preset NAME``) or is enqueued into a search as a reference trial, so the searched
result is compared with it on the same budget.

Example:
    >>> preset("prune-dynamic-int8").order
    ('prune', 'quantize')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeslim.errors import ConfigError
from edgeslim.spaces._base import Candidate
from edgeslim.spaces.pruning import PruningSpace
from edgeslim.spaces.stages import WeightLayer


@dataclass(frozen=True)
class Preset:
    """A fixed pipeline: stage order, channel importance, per-layer cluster counts, quantization.

    ``conv_clusters`` and ``linear_clusters`` are the shared values per convolution and per
    linear layer (Deep Compression used 32 for convolutions and 16 for fully connected layers:
    5 and 4 bits per weight index).
    """

    name: str
    description: str
    order: tuple[str, ...]
    importance: str = "l2"
    conv_clusters: int = 32
    linear_clusters: int = 16
    cluster_method: str = "kmeans"
    quantize: str = "none"

    def candidate(self, pruning: PruningSpace, layers: Sequence[WeightLayer], ratio: float,
                  linear_layers: frozenset[str] = frozenset()) -> Candidate:
        """The preset's candidate with ``ratio`` removed from every group.

        ``linear_layers`` names the layers that get ``linear_clusters``; a count is capped at
        the layer's number of weights.
        """
        counts: tuple[tuple[str, int], ...] = ()
        if "cluster" in self.order:
            counts = tuple(
                (layer.name, min(layer.weights, self.linear_clusters
                                 if layer.name in linear_layers else self.conv_clusters))
                for layer in layers)
        ratios = tuple((g.name, ratio) for g in pruning.groups) if "prune" in self.order else ()
        return Candidate(order=self.order, prune_ratios=ratios, importance=self.importance,
                         round_to=pruning.round_to, cluster_counts=counts,
                         cluster_method=self.cluster_method, quantize=self.quantize)


PRESETS: dict[str, Preset] = {}


def register_preset(p: Preset) -> Preset:
    if p.name in PRESETS:
        raise ValueError(f"preset {p.name!r} is already registered")
    PRESETS[p.name] = p
    return p


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"--preset: unknown preset {name!r}; valid: "
                          f"{', '.join(PRESETS)}") from None


# "Optimized classification model for edge devices" (ResNet-34, VGG-16 on CIFAR-10): filter
# pruning, fine-tuning, k-means weight clustering, then 8-bit quantization.
register_preset(Preset(
    name="prune-cluster-int8",
    description="filter pruning, fine-tune, k-means clustering (32 values per conv, 16 per "
                "linear layer), fine-tune, int8 static quantization",
    order=("prune", "cluster", "quantize"), quantize="int8_static"))

# "Edge AI: compression of ConvNeXt on CIFAR-10": structured pruning followed by dynamic
# quantization (its best size/accuracy trade-off: 89.7% smaller at 92.5% accuracy).
register_preset(Preset(
    name="prune-dynamic-int8",
    description="structured pruning, fine-tune, dynamic int8 quantization",
    order=("prune", "quantize"), quantize="int8_dynamic"))

# The usual hand-picked baseline: one ratio for every layer, nothing else.
register_preset(Preset(
    name="uniform",
    description="one pruning ratio for every layer, fine-tune",
    order=("prune",)))
