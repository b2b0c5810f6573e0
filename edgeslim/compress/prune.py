"""Structured (channel) pruning with torch-pruning's DependencyGraph: the channels a group
loses, chosen by an importance criterion (``edgeslim.compress.importance``), and removed from
every layer of the group. ``edgeslim.compress.graph`` builds the graph and finds the groups.

Channel counts are snapped to multiples of ``round_to`` (8 by default): CPU and GPU kernels are
vectorised over channel blocks, and off-multiple counts (12/24/48) run slower than the unpruned
model despite fewer MACs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.compress.graph import (
    CUSTOM_PRUNERS,
    GRAPHS,
    ROOT_TYPES,
    PrunableGroup,
    blocked_groups,
    dependency_graph,
    is_out_pruning,
    out_dim,
    prunable_copy,
    prunable_groups,
    register_pruner,
    untraced,
)
from edgeslim.compress.importance import (
    Batches,
    Gradients,
    criterion,
    scorer_for,
)
from edgeslim.compress.untraced import Untraced
from edgeslim.errors import CandidateError

# Names of the graph module that callers take from here too.
__all__ = ["CUSTOM_PRUNERS", "KeptIndices", "PrunableGroup", "apply_pruning", "blocked_groups",
           "dependency_graph", "kept_channels", "prunable_copy", "prunable_groups",
           "prune_group", "register_pruner", "untraced"]

def _prune_fn(module: nn.Module):
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) \
        else tp.prune_conv_out_channels


def kept_channels(channels: int, ratio: float, round_to: int = 8) -> int:
    """Channels left after pruning ``ratio`` of ``channels``, snapped to a multiple of
    ``round_to``, never below ``round_to`` and never above ``channels``.

    Example:
        >>> kept_channels(64, 0.5), kept_channels(16, 0.6), kept_channels(64, 0.3)
        (32, 8, 48)
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    if ratio == 0.0:
        return channels  # unpruned, even when not a multiple of round_to
    target = channels * (1.0 - ratio)
    snapped = round_to * max(1, round(target / round_to))
    return int(min(channels, snapped))


def apply_pruning(model: nn.Module, example_input: torch.Tensor, ratios: Mapping[str, float],
                  importance: str = "l2", round_to: int = 8, batches: Batches | None = None,
                  kept_indices: dict[str, KeptIndices] | None = None,
                  gradients: Gradients | None = None) -> dict[str, int]:
    """Removes channels from ``model`` in place: for each group root named in ``ratios``, the
    least important channels (by ``importance``) until ``kept_channels`` remain.

    Every group is scored on the unpruned model, then pruned. ``batches`` (training images and
    labels) feed the criteria that read loss gradients (``taylor``, ``hessian``);
    ``gradients`` (``loss_gradients`` of a model with the same weights) spare ``taylor`` the
    backward passes. When ``kept_indices`` is given, it receives, for every layer that lost
    channels, the indices of the unpruned layer's output and input channels it keeps
    (``KeptIndices``).

    Returns:
        The kept output channels of every group root named in ``ratios``.

    Raises:
        CandidateError: when a name is not a prunable layer, or torch-pruning rejects or fails
            on the pruning (any error it raises: a property of this model and candidate).
    """
    kept: dict[str, int] = {}
    todo: list[tuple[str, nn.Module]] = []
    for name, ratio in ratios.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CandidateError(f"no layer named {name!r} in the model") from None
        if not isinstance(module, ROOT_TYPES):
            raise CandidateError(f"layer {name!r} is a {type(module).__name__}, not prunable")
        kept[name] = kept_channels(out_dim(module), ratio, round_to)
        if kept[name] < out_dim(module):
            todo.append((name, module))
    # The graph of a ``prunable_copy`` is used once: pruning changes what it describes.
    graph = GRAPHS.pop(model, None)
    if not todo:
        return kept
    graph = graph or dependency_graph(model, example_input)
    modules = {m: n for n, m in model.named_modules()}
    scorer = scorer_for(importance, model, batches, gradients)
    plan: list[tuple[str, nn.Module, list[int]]] = []
    for name, module in todo:
        current = out_dim(module)
        with _pruning_errors(name, kept[name]):
            group = _group(graph, module, list(range(current)), name)
            scores = scorer(group)
            if scores is None:  # e.g. bn_scale on a group without batch norm
                scores = criterion("l2").make()(group)
            plan.append((name, module, torch.argsort(scores)[: current - kept[name]].tolist()))
    model.zero_grad(set_to_none=True)
    for name, module, drop in plan:
        prune_group(graph, module, drop, name, kept[name], modules, kept_indices)
    return kept


def prune_group(graph: tp.DependencyGraph, module: nn.Module, drop: list[int], name: str,
                keep: int, modules: dict[nn.Module, str] | None = None,
                kept_indices: dict[str, KeptIndices] | None = None) -> None:
    """Removes the output channels ``drop`` of ``module`` (the root of group ``name``) and
    every channel tied to them in ``graph``; notes in ``kept_indices``, when given, which
    channels each layer keeps (``modules`` names the layers)."""
    with _pruning_errors(name, keep):
        group = _group(graph, module, sorted(drop), name)
        if not graph.check_pruning_group(group):
            raise CandidateError(f"pruning {name!r} to {keep} channels would empty a layer")
        if kept_indices is not None:
            _record(group, modules or {}, kept_indices)
        group.prune()


def _group(graph: tp.DependencyGraph, module: nn.Module, idxs: list[int], name: str) -> tp.Group:
    if module not in graph.module2node:
        raise CandidateError(f"layer {name!r} is inside a module torch-pruning cannot analyse")
    group = graph.get_pruning_group(module, _prune_fn(module), idxs=idxs)
    hidden = [graph._module2name[it.dep.target.module] for it in group
              if isinstance(it.dep.target.module, Untraced)]
    if hidden:
        raise CandidateError(f"pruning {name!r} reaches {hidden[0]}, which torch-pruning "
                             "cannot analyse")
    return group


@contextlib.contextmanager
def _pruning_errors(name: str, keep: int) -> Iterator[None]:
    """Whatever torch-pruning raises while pruning one group, as the candidate's failure."""
    try:
        yield
    except CandidateError:
        raise
    except Exception as exc:
        raise CandidateError(f"torch-pruning failed to prune {name!r} to {keep} channels: "
                             f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else "(no message)"


@dataclass
class KeptIndices:
    """Which channels of the unpruned layer a pruned layer keeps, in order (``None``: all)."""

    out: list[int] | None = None
    inp: list[int] | None = None


def _record(group: tp.Group, modules: dict[nn.Module, str],
            kept: dict[str, KeptIndices]) -> None:
    """Notes, before ``group`` prunes, which channels each of its conv and linear layers
    keeps; indices compose over groups that prune the same layer in turn."""
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, ROOT_TYPES) or module not in modules:
            continue
        entry = kept.setdefault(modules[module], KeptIndices())
        drop = set(item.idxs)
        if is_out_pruning(item):
            current = entry.out if entry.out is not None else list(range(out_dim(module)))
            entry.out = [c for i, c in enumerate(current) if i not in drop]
        elif getattr(item.dep.handler, "__name__", "") == "prune_in_channels":
            size = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            current = entry.inp if entry.inp is not None else list(range(size))
            entry.inp = [c for i, c in enumerate(current) if i not in drop]
