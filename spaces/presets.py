"""Named pipelines from the studies this tool is compared against, as fixed candidates.

A preset fixes the stage order and each stage's settings; its pruning ratio is uniform across
layers, or allocated by each group's share of the complexity (``edgeslim.spaces.complexity``),
and chosen per budget (``edgeslim.search.references.fit_uniform_ratio``: the smallest ratio
whose structure meets the budget's parameter and MAC limits). A preset runs alone
(``optimize --preset NAME``) or is enqueued into a search as a reference trial, so the searched
result is compared with it on the same budget: the generic presets in every search, a study's
own presets in searches on that study's models (``models``).

Example:
    >>> preset("prune-dynamic-int8").order
    ('prune', 'quantize')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

    The fields after ``quantize`` are for the studies' own pipelines, and their defaults leave
    a preset as above:

    - ``models``: the registered models whose searches enqueue the preset as a reference
      (empty: every model);
    - ``allocation``: ``uniform``, or ``params``/``flops``/``memory`` for a complexity-driven
      allocation of the ratio over the groups (``edgeslim.spaces.complexity``);
    - ``params_fraction``: the largest share of the base model's parameters the pruned model
      keeps, a limit the fitted ratio meets besides the budget's;
    - ``unique_reduction``: when set, each layer's cluster count is its number of weights
      divided by this (at least 2), in place of ``conv_clusters``/``linear_clusters``.

    ``importance`` is the channel criterion; in a search that does not offer it, a reference
    uses the search's first criterion instead.
    """

    name: str
    description: str
    order: tuple[str, ...]
    importance: str = "l2"
    conv_clusters: int = 32
    linear_clusters: int = 16
    cluster_method: str = "kmeans"
    quantize: str = "none"
    models: tuple[str, ...] = ()
    allocation: str = "uniform"
    params_fraction: float | None = None
    unique_reduction: int | None = None

    def candidate(self, pruning: PruningSpace, layers: Sequence[WeightLayer],
                  ratio: float | Mapping[str, float],
                  linear_layers: frozenset[str] = frozenset(),
                  importance: str | None = None) -> Candidate:
        """The preset's candidate with ``ratio`` removed from every group (or, given a mapping,
        each group's own ratio), ranking channels by ``importance`` (default: the preset's).

        ``linear_layers`` names the layers that get ``linear_clusters``; a count is capped at
        the layer's number of weights.
        """
        counts: tuple[tuple[str, int], ...] = ()
        if "cluster" in self.order:
            counts = tuple((layer.name, min(layer.weights, self._clusters(layer, linear_layers)))
                           for layer in layers)
        ratios: tuple[tuple[str, float], ...] = ()
        if "prune" in self.order:
            ratios = tuple((g.name, ratio[g.name] if isinstance(ratio, Mapping) else ratio)
                           for g in pruning.groups)
        return Candidate(order=self.order, prune_ratios=ratios,
                         importance=importance or self.importance, round_to=pruning.round_to,
                         cluster_counts=counts, cluster_method=self.cluster_method,
                         quantize=self.quantize)

    def _clusters(self, layer: WeightLayer, linear_layers: frozenset[str]) -> int:
        if self.unique_reduction is not None:
            return max(2, layer.weights // self.unique_reduction)
        return self.linear_clusters if layer.name in linear_layers else self.conv_clusters

    def applies_to(self, model: str | None) -> bool:
        """Whether a search on ``model`` enqueues this preset as a reference."""
        return not self.models or model in self.models


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

# The studies' own pipelines, enqueued as references in searches on the studies' models.

# "Edge AI: compression of ConvNeXt on CIFAR-10": structured pruning (OTOv3) with dynamic
# quantization was its best size/accuracy trade-off, 89.7% smaller at 92.5% accuracy. int8
# weights are 4x smaller than float32, so that size needs about 41% of the parameters kept
# (0.41 / 4 = 0.103 of the bytes): the preset prunes at least that far, or further when the
# budget asks for it.
register_preset(Preset(
    name="convnext-prune-dynamic-int8",
    description="structured pruning to at most 41% of the parameters, fine-tune, dynamic int8",
    order=("prune", "quantize"), quantize="int8_dynamic", models=("convnext_atto",),
    params_fraction=0.41))

# "Complexity-driven CNN compression" (VGG, ResNet on CIFAR-10): filter pruning where each
# layer's share of the parameters (PA), MACs (FA) or activation memory (MA) sets how much it
# loses, with no ranking of filters, and the pruned network trained directly. Here the first
# filters of each group are kept (importance "none") and the pruned network is trained from
# the base model's weights. They are hand-picked rules any search must beat, so every study
# enqueues them (with the search's first channel criterion where it does not offer "none").
for _measure, _label in (("params", "pa"), ("flops", "fa"), ("memory", "ma")):
    register_preset(Preset(
        name=f"complexity-{_label}",
        description=f"filter pruning allocated by each layer's share of the {_measure}, no "
                    "ranking (first filters kept), then training of the pruned network",
        order=("prune",), importance="none", allocation=_measure))

# "Optimized classification model for edge devices" (ResNet-34, VGG-16 on CIFAR-10): filter
# pruning, fine-tuning, 8-bit quantization and k-means clustering to 80x fewer unique weights.
# Clustering runs before int8 here (quantization works on the exported file and comes last);
# each layer gets weights / 80 shared values, snapped down to the counts the search offers.
register_preset(Preset(
    name="prune-finetune-int8-kmeans",
    description="filter pruning, fine-tune, k-means clustering to 80x fewer unique weights per "
                "layer, fine-tune, int8 static quantization",
    order=("prune", "cluster", "quantize"), quantize="int8_static", unique_reduction=80,
    models=("resnet34", "vgg16_bn")))

# "Empirical study on pruning and quantization" (AlexNet, ResNet-18, VGG-16-BN, VGG-19-BN on
# Fashion-MNIST and CIFAR-10; a 1-D CNN on UCI-HAR): pruning, retraining, then int8. Its
# comparison of clustering methods is the search's --cluster-methods kmeans,density,linear.
register_preset(Preset(
    name="prune-retrain-int8",
    description="structured pruning, retraining (fine-tune), int8 static quantization",
    order=("prune", "quantize"), quantize="int8_static",
    models=("alexnet", "resnet18", "vgg16_bn", "vgg19_bn", "cnn1d")))
