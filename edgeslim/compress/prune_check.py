"""What of a model the search may prune, checked once before any training.

torch-pruning's dependency graph can be wrong about a model without raising anything: a
group's channels may be tied to layers it does not list (a squeeze-and-excitation gate, a
grouped conv behind a channel shuffle, a concatenation), and pruning it then fails, or leaves
a model that no longer runs. So each group is pruned on a copy of the untrained model and the
copy is run: all groups at once, at the fewest channels the search can keep and at a middle
count, with channels chosen at random (scattered, as a ranking on trained weights may choose
them); when that fails, halves are tried until the groups that fail alone are found. Those are
left out of the search, with the reason, as are the groups that reach a module torch-pruning
cannot analyse (``edgeslim.compress.untraced``).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgeslim.compress.graph import (
    PrunableGroup,
    _groups,
    dependency_graph,
    out_dim,
    untraced,
)
from edgeslim.compress.prune import kept_channels, prune_group
from edgeslim.compress.untraced import WHOLE_MODEL, one_thread
from edgeslim.defaults import MAX_RATIO
from edgeslim.heap import release_freed_memory


@dataclass(frozen=True)
class PruningCheck:
    """The groups the search may prune, and what was left out and why."""

    groups: tuple[PrunableGroup, ...]
    # Modules torch-pruning cannot analyse: every layer inside keeps its channels.
    untraced: tuple[str, ...] = ()
    # Groups found but not searched: (root layer, why), in module order.
    left_out: tuple[tuple[str, str], ...] = ()

    def summary(self) -> str | None:
        """One line for the start of a search, or None when nothing was left out."""
        parts = []
        if self.untraced:
            shown = ("the whole model" if WHOLE_MODEL in self.untraced
                     else _some(self.untraced))
            parts.append(f"torch-pruning cannot analyse {shown}, whose layers keep every "
                         "channel (clustering and quantization still reach them)")
        broken = [name for name, why in self.left_out if not why.startswith("its channels")]
        if broken:
            parts.append(f"pruning {_some(broken)} breaks the model, so "
                         f"{'it is' if len(broken) == 1 else 'they are'} not searched")
        if len(self.left_out) > len(broken):
            parts.append(f"{len(self.left_out) - len(broken)} group(s) reaching them are not "
                         "searched")
        return "; ".join(parts) or None


def _some(names: Sequence[str], count: int = 3) -> str:
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def check_pruning(model: nn.Module, example: torch.Tensor, num_classes: int, round_to: int = 8,
                  max_ratio: float = MAX_RATIO, step: float = 0.05, seed: int = 0) -> PruningCheck:
    """The prunable groups of ``model`` that survive pruning (see the module docstring)."""
    with one_thread():
        try:
            return _check(model, example, num_classes, round_to, max_ratio, step, seed)
        finally:
            release_freed_memory()  # the pruned copies


def _check(model: nn.Module, example: torch.Tensor, num_classes: int, round_to: int,
           max_ratio: float, step: float, seed: int) -> PruningCheck:
    hidden = untraced(model, example)
    groups, blocked = _groups(model, example, num_classes, round_to)
    left = {name: f"its channels reach {module}, which torch-pruning cannot analyse"
            for name, module in blocked.items()}
    with torch.no_grad():
        expected = tuple(model.eval()(example).shape)
    # The fewest channels, the lowest ones dropped (the worst case for an index mapping that
    # assumes the first channels stay), then scattered choices at the fewest and a middle count.
    for fewest, scattered in ((True, False), (True, True), (False, True)):
        counts = {g.name: _probe_count(g.channels, round_to, max_ratio, step, fewest)
                  for g in groups}
        test = _tester(model, example, counts, expected, seed if scattered else None)
        for group, why in _culprits(list(groups), test):
            left[group.name] = why
        groups = tuple(g for g in groups if g.name not in left)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return PruningCheck(groups, hidden, tuple(sorted(left.items(), key=lambda kv: order[kv[0]])))


def _probe_count(channels: int, round_to: int, max_ratio: float, step: float,
                 fewest: bool) -> int:
    """The fewest channels the ratio grid keeps, or the middle of the counts it offers."""
    steps = int(round(max_ratio / step))
    counts = sorted({kept_channels(channels, round(i * step, 10), round_to)
                     for i in range(1, steps + 1)} - {channels})
    if not counts:
        return channels
    return counts[0] if fewest else counts[len(counts) // 2]


def _tester(model: nn.Module, example: torch.Tensor, counts: dict[str, int],
            expected: tuple[int, ...], seed: int | None,
            ) -> Callable[[Sequence[PrunableGroup]], str | None]:
    def test(groups: Sequence[PrunableGroup]) -> str | None:
        """Why pruning ``groups`` on a copy breaks it, or None. Channels dropped at random
        with ``seed``, or the lowest ones with None."""
        pruned = copy.deepcopy(model).eval()
        rng = random.Random(seed)
        keep = 0
        try:
            graph = dependency_graph(pruned, example)
            for g in groups:
                module = pruned.get_submodule(g.name)
                keep, current = counts[g.name], out_dim(module)
                drop = (list(range(current - keep)) if seed is None
                        else rng.sample(range(current), current - keep))
                prune_group(graph, module, drop, g.name, keep)
            with torch.no_grad():
                out = pruned(example)
        except Exception as exc:  # torch-pruning's or the pruned forward's: the group's fault
            text = str(exc).strip().splitlines()
            detail = f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")
            if detail.startswith("CandidateError: "):
                return detail.removeprefix("CandidateError: ")
            return f"pruned to {keep} channels, the model no longer runs ({detail})"
        if tuple(out.shape) != expected:
            return f"pruned, the model's output has shape {tuple(out.shape)}, not {expected}"
        return None

    return test


def _culprits(groups: list[PrunableGroup],
              test: Callable[[Sequence[PrunableGroup]], str | None],
              ) -> list[tuple[PrunableGroup, str]]:
    """The groups whose pruning breaks the model, each with the reason: halves are tried
    until single groups fail; groups that fail only together are left out from the last."""
    if not groups:
        return []
    why = test(groups)
    if why is None:
        return []
    if len(groups) == 1:
        return [(groups[0], why)]
    half = len(groups) // 2
    found = _culprits(groups[:half], test) + _culprits(groups[half:], test)
    if not found:
        found = [(groups[-1], why)] + _culprits(groups[:-1], test)
    return found
