"""torch-pruning's dependency graph of a model, and the pruning groups the search can shrink.

A *group* is a set of layers whose channels must be removed together: a conv's output channels,
its batch norm, the next layers' input channels and, through residual adds, every layer writing
to the same residual stream. Each group is named after its root layer's qualified module name
(``layer2.0.conv1``), which is stable for a given architecture and readable in the dashboard.

Modules whose forward torch-pruning cannot analyse (a channel shuffle, say) are hidden from the
graph (``edgeslim.compress.untraced``): the layers inside them, and the groups that reach them,
keep every channel. A model's graph is built once and copied with the model
(``prunable_copy``), so that pruning a copy does not trace it again.
"""

from __future__ import annotations

import copy
import time
import weakref
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

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

ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)
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


def out_dim(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _output_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers producing the class scores, which must keep all their outputs."""
    return [m for m in model.modules()
            if isinstance(m, ROOT_TYPES) and out_dim(m) == num_classes]


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
GRAPHS: weakref.WeakKeyDictionary[nn.Module, tp.DependencyGraph] = weakref.WeakKeyDictionary()
# Models whose dependency graph copy.deepcopy cannot copy (too deep a chain of nodes for
# Python's recursion limit, as EfficientNet's; an autograd node kept inside, as Swin's): their
# copies trace a graph of their own.
_UNCOPYABLE: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _graph_of(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    graph = GRAPHS.get(model)
    if graph is None:
        graph = dependency_graph(model, example_input)
        for node in graph.module2node.values():
            node.grad_fn = None  # autograd's nodes of the trace: not needed, not copyable
        # Nothing in the graph may hold the model itself, or its weak key would never go.
        graph.model = None
        graph._module2name.pop(model, None)
        GRAPHS[model] = graph
    return graph


def prunable_copy(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` that ``apply_pruning`` prunes without tracing it: the
    dependency graph of ``model`` is traced once (on the first call) and copied along with
    it. The copy must keep the structure ``model`` had (its weights and device may change)
    until it is pruned. A graph that cannot be copied is not: each copy's is traced when
    pruned. A model torch-pruning cannot analyse at all is copied without a graph."""
    if model in _UNCOPYABLE or (model not in GRAPHS and
                                WHOLE_MODEL in untraced(model, example_input)):
        return copy.deepcopy(model)
    graph = _graph_of(model, example_input)
    # torch-pruning's pruners are stateless singletons the graph compares by identity, and
    # ``ops`` is a module: shared, not copied.
    shared = [tp.ops, *graph.REGISTERED_PRUNERS.values(), *graph.CUSTOMIZED_PRUNERS.values()]
    try:
        twin, twin_graph = copy.deepcopy((model, graph), {id(o): o for o in shared})
    except (RecursionError, TypeError):
        # Too deep a chain for deepcopy (EfficientNet's), or holding what cannot be copied
        # (an autograd node of the trace kept by an index mapping: Swin's SliceBackward0).
        _UNCOPYABLE.add(model)
        return copy.deepcopy(model)  # ``apply_pruning`` traces the copy's graph
    GRAPHS[twin] = twin_graph
    return twin


def _builds(model: nn.Module, example_input: torch.Tensor, names) -> bool:
    """Whether the graph builds with ``names`` hidden and yields its groups, in at most
    ``GROUPING_FACTOR`` times as long as the build took (``GROUPING_MIN_S`` at least)."""
    try:
        start = time.perf_counter()
        graph = _build(model, example_input, names)
        limit = max(GROUPING_MIN_S, GROUPING_FACTOR * (time.perf_counter() - start))
        with deadline(limit), one_thread():
            for _ in graph.get_all_groups(root_module_types=list(ROOT_TYPES)):
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
                                      root_module_types=list(ROOT_TYPES)):
        modules = [it.dep.target.module for it in group]
        touched = [m for m in modules if isinstance(m, ROOT_TYPES) and m in names]
        # Layers whose *output* channels this group removes; depthwise convs only follow.
        producers = [it.dep.target.module for it in group
                     if is_out_pruning(it) and isinstance(it.dep.target.module, ROOT_TYPES)
                     and it.dep.target.module in names
                     and getattr(it.dep.target.module, "groups", 1) == 1]
        if not producers:
            continue
        root = min(producers, key=lambda m: order[names[m]])
        if out_dim(root) <= round_to or names[root] in groups or names[root] in blocked:
            continue
        stand_ins = [graph._module2name[m] for m in modules if isinstance(m, Untraced)]
        if stand_ins:
            blocked[names[root]] = stand_ins[0]
            continue
        layers = sorted({names[m] for m in touched}, key=order.__getitem__)
        groups[names[root]] = PrunableGroup(names[root], out_dim(root), tuple(layers))
    ordered = tuple(sorted(groups.values(), key=lambda g: order[g.name]))
    return ordered, dict(sorted(blocked.items(), key=lambda kv: order[kv[0]]))


def is_out_pruning(item: object) -> bool:
    return getattr(item.dep.handler, "__name__", "") == "prune_out_channels"
