"""Weight clustering (weight sharing): each layer's weights take one of at most k shared values.

After clustering, a layer stores ceil(log2 k) bits per weight plus a codebook of k values (see
``edgeslim.packing``); a fine-tune that follows keeps every weight tied to its centroid
(``edgeslim.compress.ties``), which trains as Deep Compression's (Han et al., 2016) do, but on
the mean of its members' gradients rather than their sum.

Codebook methods (``CLUSTER_METHODS``):

- ``kmeans``: k-means++ seeding, then Lloyd iterations (scikit-learn's KMeans).
- ``density``: centroids start at evenly spaced quantiles of the weights (dense regions get more
  centroids), then the same Lloyd iterations.
- ``linear``: a uniform codebook spanning [min, max] of the weights, with no refinement: the
  nearest-level quantiser that the empirical comparisons use as the simplest baseline.

Zeros left by unstructured pruning are not clustered: they stay exactly zero and take one
codebook entry of their own.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from edgeslim.errors import CandidateError

CLUSTER_METHODS = ("kmeans", "density", "linear")
# k-means is fitted on at most this many weights of a layer (sampled with a fixed seed); every
# weight is then assigned to its nearest centroid and each centroid set to its members' mean.
FIT_SAMPLE = 8192
# Weights ``spread_weights`` handles at once: its int64 ranks of a 100M-weight layer at once
# would take gigabytes.
SPREAD_CHUNK = 1 << 20
_CLUSTERABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weights can be clustered or sparsified (convolutions and linear
    layers), by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _CLUSTERABLE)}


def codebook(values: np.ndarray, k: int, method: str, seed: int = 0) -> np.ndarray:
    """At most ``k`` sorted centroids for the 1-D float array ``values``.

    When ``values`` holds at most ``k`` distinct numbers they are the codebook (lossless).
    """
    if method not in CLUSTER_METHODS:
        raise ValueError(f"unknown clustering method {method!r}; valid: "
                         f"{', '.join(CLUSTER_METHODS)}")
    if k < 2:
        raise ValueError(f"a codebook needs at least 2 clusters, got {k}")
    distinct = np.unique(values)
    if distinct.size <= k:
        return distinct.astype(np.float64)
    if method == "linear":
        return np.linspace(float(values.min()), float(values.max()), k)
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    sample = values if values.size <= FIT_SAMPLE else rng.choice(values, FIT_SAMPLE,
                                                                 replace=False)
    if method == "density":
        init = np.quantile(sample, (np.arange(k) + 0.5) / k).reshape(-1, 1)
        init = np.unique(init).reshape(-1, 1)  # ties in heavy tails
        kmeans = KMeans(n_clusters=init.shape[0], init=init, n_init=1, random_state=seed)
    else:
        kmeans = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on samples with duplicates
        kmeans.fit(sample.reshape(-1, 1).astype(np.float64))
    return np.unique(kmeans.cluster_centers_.ravel())


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each value (``centroids`` sorted ascending)."""
    if centroids.size == 1:
        return np.zeros(values.shape, dtype=np.int64)
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(midpoints, values, side="left").astype(np.int64)


def cluster_tensor(weight: torch.Tensor, k: int, method: str, seed: int = 0) -> torch.Tensor:
    """``weight`` with every nonzero entry replaced by its centroid (at most ``k`` distinct
    nonzero values; zeros stay zero). For the k-means methods each centroid is then the mean of
    the weights assigned to it (one exact Lloyd step over all weights, after fitting on a
    sample)."""
    w = weight.detach().cpu().double().numpy().ravel()
    nonzero = w != 0
    if not nonzero.any():
        return weight.clone()
    values = w[nonzero]
    centroids = codebook(values, k, method, seed)
    index = assign(values, centroids)
    if method != "linear" and np.unique(values).size > k:
        sums = np.bincount(index, weights=values, minlength=centroids.size)
        counts = np.bincount(index, minlength=centroids.size)
        used = counts > 0
        centroids = sums[used] / counts[used]
        index = np.cumsum(used)[index] - 1  # renumber after dropping empty clusters
    out = np.zeros_like(w)
    out[nonzero] = centroids[index]
    return torch.from_numpy(out.reshape(weight.shape)).to(weight.dtype)


def _spread_rows(rows: torch.Tensor, levels: torch.Tensor, gen: torch.Generator
                 ) -> torch.Tensor:
    """``rows`` with their nonzeros cycling through ``levels`` (see ``spread_weights``)."""
    k = levels.numel()
    nonzero = rows != 0
    # Each row's first k nonzeros take every level once, the rest one at random, all in a
    # random order: as hard to compress as clustered weights (a regular pattern would make the
    # small tensors the packed file zips smaller than the real ones).
    # A zero's rank (-1 before a row's first nonzero) picks a level the mask then clears.
    rank = (torch.cumsum(nonzero, dim=1) - 1).clamp_(min=0)
    index = torch.where(rank < k, rank, torch.randint(0, k, rank.shape, generator=gen))
    shuffle = torch.argsort(torch.rand(rows.shape[0], k, generator=gen), dim=1)
    return levels[torch.gather(shuffle, 1, index)] * nonzero


@torch.no_grad()
def spread_weights(model: nn.Module, counts: Mapping[str, int], seed: int = 0,
                   ) -> dict[str, int]:
    """What ``cluster_weights`` leaves in the artifact's size, without k-means: in place, the
    nonzero weights of each row (output channel) of each layer named in ``counts`` cycle
    through ``k`` distinct nonzero values, so each row holds ``min(k, its nonzeros)`` of them,
    as many as a ``k``-value codebook can leave in a row after batch-norm folding and
    per-channel int8 quantization, so the packed file encodes its large tensors in no fewer
    bytes than the clustered model's (the small tensors it zips differ: the 3 kB files of the
    tests were within 3% of each other); zeros stay zero. Returns the distinct
    values per layer, and raises for the layers and counts ``cluster_weights`` refuses."""
    layers = weight_layers(model)
    distinct = {}
    gen = torch.Generator().manual_seed(seed)
    for name, k in counts.items():
        if name not in layers:
            raise CandidateError(f"cannot cluster {name!r}: not a convolution or linear layer")
        if k < 2:
            raise CandidateError(f"cannot cluster {name!r} into {k} clusters (need k >= 2)")
        k = int(k)
        weight = layers[name].weight
        rows = weight.reshape(weight.shape[0], -1)
        # Evenly spaced in [-1, 1] and never zero; int8's 255 levels keep them apart.
        levels = torch.linspace(-1.0, 1.0, k + k % 2)[:k].to(weight.dtype)
        spread = torch.empty_like(rows)
        step = max(1, SPREAD_CHUNK // max(1, rows.shape[1]))  # rows at a time: int64 ranks
        for r in range(0, rows.shape[0], step):
            spread[r:r + step] = _spread_rows(rows[r:r + step], levels, gen)
        weight.copy_(spread.reshape(weight.shape))
        distinct[name] = int(torch.unique(weight).numel())
    return distinct


@torch.no_grad()
def cluster_weights(model: nn.Module, counts: Mapping[str, int], method: str = "kmeans",
                    seed: int = 0) -> dict[str, int]:
    """Clusters, in place, the weights of each layer named in ``counts`` to at most that many
    shared values.

    A count above the layer's number of weights (pruning, run first, can shrink a layer
    below the count chosen for its unpruned size) leaves the layer's values as they are.

    Returns:
        The number of distinct weight values each named layer holds afterwards (zeros left by
        unstructured pruning included).

    Raises:
        CandidateError: for a name that is not a convolution or linear layer, or a cluster count
            below 2.
    """
    layers = weight_layers(model)
    distinct = {}
    for name, k in counts.items():
        if name not in layers:
            raise CandidateError(f"cannot cluster {name!r}: not a convolution or linear layer")
        weight = layers[name].weight
        if k < 2:
            raise CandidateError(f"cannot cluster {name!r} into {k} clusters (need k >= 2)")
        weight.copy_(cluster_tensor(weight, int(k), method, seed))
        distinct[name] = int(torch.unique(weight).numel())
    return distinct
