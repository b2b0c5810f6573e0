"""Structured (channel) pruning with torch-pruning's DependencyGraph.

A *group* is a set of layers whose channels must be removed together: a conv's output channels,
its batch norm, the next layers' input channels and, through residual adds, every layer writing
to the same residual stream. Each group is named after its root layer's qualified module name
(``layer2.0.conv1``), which is stable for a given architecture and readable in the dashboard.

Modules whose forward torch-pruning cannot analyse (a channel shuffle, say) are hidden from the
graph (``edgeslim.compress.untraced``): the layers inside them, and the groups that reach them,
keep every channel.

Channel counts are snapped to multiples of ``round_to`` (8 by default): CPU and GPU kernels are
vectorised over channel blocks, and off-multiple counts (12/24/48) run slower than the unpruned
model despite fewer MACs.
"""

from __future__ import annotations

import contextlib
import copy
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.compress.importance import (
    Batches,
    Gradients,
    criterion,
    scorer_for,
)
from edgeslim.compress.untraced import (
    UNTRACED_PRUNER,
    WHOLE_MODEL,
    Untraced,
    deadline,
    hidden,
    one_thread,
    untraced_modules,
)
from edgeslim.errors import CandidateError

_ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)
# Grouping a graph takes up to about 25 times as long as building it (DenseNet's concatenations);
# one that takes far longer loops forever (see ``edgeslim.compress.untraced.deadline``).
GROUPING_FACTOR = 100
GROUPING_MIN_S = 5.0
# torch-pruning pruners for modules it does not know, by module type (see ``register_pruner``).
CUSTOM_PRUNERS: dict[type[nn.Module], tp.pruner.function.BasePruningFunc] = {}


def register_pruner(module_type: type[nn.Module],
                    pruner: tp.pruner.function.BasePruningFunc) -> None:
    """Teaches the dependency graph how to remove channels of ``module_type`` (a module holding
    per-channel parameters, such as ConvNeXt's layer scale); refuses a type registered twice."""
    if module_type in CUSTOM_PRUNERS:
        raise ValueError(f"a pruner for {module_type.__name__} is already registered")
    CUSTOM_PRUNERS[module_type] = pruner


@dataclass(frozen=True)
class PrunableGroup:
    """One dependency group that the search can shrink."""

    name: str  # qualified name of the group's root layer
    channels: int  # output channels of the root layer in the unpruned model
    layers: tuple[str, ...]  # every conv/linear layer the group touches (out or in channels)


def _out_dim(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _prune_fn(module: nn.Module):
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) \
        else tp.prune_conv_out_channels


def _output_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers producing the class scores, which must keep all their outputs."""
    return [m for m in model.modules()
            if isinstance(m, _ROOT_TYPES) and _out_dim(m) == num_classes]


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, with the modules it cannot analyse hidden
    (``untraced``).

    Raises:
        CandidateError: when nothing of the model can be analysed (``WHOLE_MODEL``).
    """
    names = untraced(model, example_input)
    if WHOLE_MODEL in names:
        raise CandidateError("torch-pruning cannot analyse this model: nothing can be pruned")
    return _build(model, example_input, names)


def untraced(model: nn.Module, example_input: torch.Tensor) -> tuple[str, ...]:
    """The modules of ``model`` torch-pruning cannot analyse (found once per architecture)."""
    return untraced_modules(model, example_input,
                            lambda names: _builds(model, example_input, names))


def _build(model: nn.Module, example_input: torch.Tensor,
           names: tuple[str, ...] | list[str]) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    pruners = {**CUSTOM_PRUNERS, Untraced: UNTRACED_PRUNER}
    try:
        with hidden(model, names), torch.enable_grad(), one_thread():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners=pruners, verbose=False)
    finally:
        model.train(was_training)


# The dependency graph of each model that was traced or copied with one: ``prunable_copy``
# copies a model together with its graph, and ``apply_pruning`` takes the copy's graph instead
# of tracing the model again (a second or more per candidate for ResNet-20 at 32x32, most of
# the cost of pruning it). Weak keys: a model's graph goes when the model does.
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, tp.DependencyGraph] = weakref.WeakKeyDictionary()
# Models whose dependency graph is too deep a chain of nodes for copy.deepcopy (Python's
# recursion limit; EfficientNet's graph is): their copies trace a graph of their own.
_DEEP_GRAPHS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _graph_of(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    graph = _GRAPHS.get(model)
    if graph is None:
        graph = dependency_graph(model, example_input)
        for node in graph.module2node.values():
            node.grad_fn = None  # autograd's nodes of the trace: not needed, not copyable
        # Nothing in the graph may hold the model itself, or its weak key would never go.
        graph.model = None
        graph._module2name.pop(model, None)
        _GRAPHS[model] = graph
    return graph


def prunable_copy(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` that ``apply_pruning`` prunes without tracing it: the
    dependency graph of ``model`` is traced once (on the first call) and copied along with
    it. The copy must keep the structure ``model`` had (its weights and device may change)
    until it is pruned. A graph too deep to copy is not: each copy's is traced when pruned."""
    if model in _DEEP_GRAPHS:
        return copy.deepcopy(model)
    graph = _graph_of(model, example_input)
    # torch-pruning's pruners are stateless singletons the graph compares by identity, and
    # ``ops`` is a module: shared, not copied.
    shared = [tp.ops, *graph.REGISTERED_PRUNERS.values(), *graph.CUSTOMIZED_PRUNERS.values()]
    try:
        twin, twin_graph = copy.deepcopy((model, graph), {id(o): o for o in shared})
    except RecursionError:
        _DEEP_GRAPHS.add(model)
        return copy.deepcopy(model)  # ``apply_pruning`` traces the copy's graph
    _GRAPHS[twin] = twin_graph
    return twin


def _builds(model: nn.Module, example_input: torch.Tensor, names) -> bool:
    """Whether the graph builds with ``names`` hidden and yields its groups, in at most
    ``GROUPING_FACTOR`` times as long as the build took (``GROUPING_MIN_S`` at least)."""
    try:
        start = time.perf_counter()
        graph = _build(model, example_input, names)
        limit = max(GROUPING_MIN_S, GROUPING_FACTOR * (time.perf_counter() - start))
        with deadline(limit), one_thread():
            for _ in graph.get_all_groups(root_module_types=list(_ROOT_TYPES)):
                pass
        return True
    except Exception:  # whatever torch-pruning raises on a forward it cannot follow
        return False


def prunable_groups(model: nn.Module, example_input: torch.Tensor, num_classes: int,
                    round_to: int = 8) -> tuple[PrunableGroup, ...]:
    """The groups of ``model`` that can lose channels, in module order.

    A group qualifies when its root has more than ``round_to`` output channels (so at least one
    aligned smaller count exists), is not a depthwise conv (those follow their producer), and
    reaches no module torch-pruning cannot analyse (see ``blocked_groups``).
    """
    return _groups(model, example_input, num_classes, round_to)[0]


def blocked_groups(model: nn.Module, example_input: torch.Tensor, num_classes: int,
                   round_to: int = 8) -> dict[str, str]:
    """The groups left out because their channels reach a module torch-pruning cannot analyse:
    root layer -> that module."""
    return _groups(model, example_input, num_classes, round_to)[1]


def _groups(model: nn.Module, example_input: torch.Tensor, num_classes: int, round_to: int,
            ) -> tuple[tuple[PrunableGroup, ...], dict[str, str]]:
    if WHOLE_MODEL in untraced(model, example_input):
        return (), {}
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    graph = dependency_graph(model, example_input)
    groups: dict[str, PrunableGroup] = {}
    blocked: dict[str, str] = {}
    for group in graph.get_all_groups(ignored_layers=_output_layers(model, num_classes),
                                      root_module_types=list(_ROOT_TYPES)):
        modules = [it.dep.target.module for it in group]
        touched = [m for m in modules if isinstance(m, _ROOT_TYPES) and m in names]
        # Layers whose *output* channels this group removes; depthwise convs only follow.
        producers = [it.dep.target.module for it in group
                     if _is_out_pruning(it) and isinstance(it.dep.target.module, _ROOT_TYPES)
                     and it.dep.target.module in names
                     and getattr(it.dep.target.module, "groups", 1) == 1]
        if not producers:
            continue
        root = min(producers, key=lambda m: order[names[m]])
        if _out_dim(root) <= round_to or names[root] in groups or names[root] in blocked:
            continue
        stand_ins = [graph._module2name[m] for m in modules if isinstance(m, Untraced)]
        if stand_ins:
            blocked[names[root]] = stand_ins[0]
            continue
        layers = sorted({names[m] for m in touched}, key=order.__getitem__)
        groups[names[root]] = PrunableGroup(names[root], _out_dim(root), tuple(layers))
    ordered = tuple(sorted(groups.values(), key=lambda g: order[g.name]))
    return ordered, dict(sorted(blocked.items(), key=lambda kv: order[kv[0]]))


def _is_out_pruning(item: object) -> bool:
    return getattr(item.dep.handler, "__name__", "") == "prune_out_channels"


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
        if not isinstance(module, _ROOT_TYPES):
            raise CandidateError(f"layer {name!r} is a {type(module).__name__}, not prunable")
        kept[name] = kept_channels(_out_dim(module), ratio, round_to)
        if kept[name] < _out_dim(module):
            todo.append((name, module))
    # The graph of a ``prunable_copy`` is used once: pruning changes what it describes.
    graph = _GRAPHS.pop(model, None)
    if not todo:
        return kept
    graph = graph or dependency_graph(model, example_input)
    modules = {m: n for n, m in model.named_modules()}
    scorer = scorer_for(importance, model, batches, gradients)
    plan: list[tuple[str, nn.Module, list[int]]] = []
    for name, module in todo:
        current = _out_dim(module)
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
        if not isinstance(module, _ROOT_TYPES) or module not in modules:
            continue
        entry = kept.setdefault(modules[module], KeptIndices())
        drop = set(item.idxs)
        if _is_out_pruning(item):
            current = entry.out if entry.out is not None else list(range(_out_dim(module)))
            entry.out = [c for i, c in enumerate(current) if i not in drop]
        elif getattr(item.dep.handler, "__name__", "") == "prune_in_channels":
            size = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            current = entry.inp if entry.inp is not None else list(range(size))
            entry.inp = [c for i, c in enumerate(current) if i not in drop]
