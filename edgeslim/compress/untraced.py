"""Modules whose forward torch-pruning cannot analyse, hidden from its dependency graph.

torch-pruning follows channels through the autograd graph of one forward pass. Some forwards
defeat it: a channel shuffle (``x.view(b, g, c // g, h, w).transpose(1, 2)``) makes its index
mapping divide by zero, and other reshapes fail the same way. Such a module is hidden while the
graph is built: it is swapped for a stand-in (``Untraced``) that runs it without recording its
inside, and links its output to its inputs through one opaque autograd node. torch-pruning sees
the stand-in as one layer of a registered type (its ``customized_pruners``) whose channels
cannot be pruned, so the groups that reach it are left out and every layer inside it keeps its
channels; the layers elsewhere are pruned as usual, and clustering and quantization, which
need no graph, still reach every layer.

The modules to hide are found once per architecture (``untraced_modules``): the smallest
modules, from the top of the model down, whose hiding lets the graph build, as far as
``NARROWING_BUILDS`` tries get.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgeslim.errors import CandidateError

# Stands for the whole model when even its own forward (outside every submodule) defeats
# torch-pruning: nothing can be pruned.
WHOLE_MODEL = ""
# Narrowing the hidden modules down tries one graph build after another, each bounded by
# ``deadline``; on a transformer, whose flatten and reshape index mappings torch-pruning follows
# in Python, each try is slow and the tries go deep (torchvision's Swin models at 32x32 had not
# started searching after 25 minutes). After this many tries the narrowing stops, and the
# coarser hiding it had reached, which builds, is kept: more layers keep all their channels,
# and the search starts. A count of tries, not seconds, so that what is hidden does not depend
# on how busy the machine is (torchvision's ShuffleNetV2 needs 30 tries to narrow down to its
# five shuffling units: tests/test_prune_check.py).
NARROWING_BUILDS = 40
_FOUND: dict[tuple, tuple[str, ...]] = {}


class _Cut(torch.autograd.Function):
    """The stand-in's output, linked to its inputs by one node and nothing inside."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:
        return (None,) * (len(ctx.needs_input_grad))


class Untraced(nn.Module):
    """Runs ``inner`` unrecorded; records its input and output channels for the pruner."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)  # not a child: its layers stay out of sight
        self.in_channels: int | None = None
        self.out_channels: int | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            out = self.inner(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not isinstance(out, torch.Tensor) or not tensors:
            return out
        self.in_channels = tensors[0].shape[1] if tensors[0].dim() > 1 else None
        self.out_channels = out.shape[1] if out.dim() > 1 else None
        return _Cut.apply(out, *tensors)


class _UntracedPruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning's view of a stand-in: channels it can count and never prune."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise CandidateError(f"cannot prune {layer.inner.__class__.__name__}: torch-pruning "
                             "cannot analyse it")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return layer.in_channels


UNTRACED_PRUNER = _UntracedPruner()


@contextlib.contextmanager
def hidden(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Untraced]]:
    """Swaps the modules ``names`` of ``model`` for stand-ins while the body runs."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    stand_ins: dict[str, Untraced] = {}
    try:
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            inner = getattr(parent, child)
            stand_ins[name] = Untraced(inner)
            setattr(parent, child, stand_ins[name])
            swapped.append((parent, child, inner))
        yield stand_ins
    finally:
        for parent, child, inner in reversed(swapped):
            setattr(parent, child, inner)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch on one thread while the body runs. Tracing and probing run batch-1 forwards of
    tiny tensors, which more threads only slow down, by far on a busy host (10x to 100x on
    two shared cores: each operator waits for a thread the machine is not running)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Overtime(Exception):
    """A ``deadline`` passed."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raises ``Overtime`` in the body once ``seconds`` pass (a timer signal: in the main
    thread only; elsewhere the body runs unbounded). torch-pruning's grouping loops forever on
    some graphs (several channel shuffles in a row), so a graph that takes far longer to group
    than to build is taken as one it cannot analyse."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def overtime(signum: int, frame: Any) -> None:
        raise Overtime(f"no result within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, overtime)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def architecture_key(model: nn.Module, example: torch.Tensor) -> tuple:
    """What the modules to hide depend on: the module tree, the weights' shapes and the input
    shape (a pruned copy, with other shapes, gets its own entry)."""
    return (type(model).__qualname__, tuple(example.shape), tuple(
        (name, type(m).__qualname__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
        for name, m in model.named_modules()))


def untraced_modules(model: nn.Module, example: torch.Tensor,
                     builds: Callable[[Sequence[str]], bool]) -> tuple[str, ...]:
    """The modules of ``model`` to hide so that ``builds(hidden names)`` holds: none when the
    graph builds as it is, ``(WHOLE_MODEL,)`` when even hiding every top-level module does not
    help. Remembered per architecture (``architecture_key``).

    From the top down: each hidden module is shown again when the graph builds without it,
    or replaced by its own submodules when hiding those is enough; otherwise it stays hidden.
    """
    key = architecture_key(model, example)
    if key in _FOUND:
        return _FOUND[key]
    found: tuple[str, ...] = ()
    if not builds(()):
        top = _candidates(model, "")
        found = _narrow(model, top, builds, NARROWING_BUILDS) \
            if top and builds(top) else (WHOLE_MODEL,)
    _FOUND[key] = found
    return found


def _candidates(model: nn.Module, prefix: str) -> list[str]:
    """The submodules directly under ``prefix`` worth hiding: those holding weights, or a
    user's own modules (which may reshape channels without holding any)."""
    parent = model.get_submodule(prefix)
    out = []
    for child, module in parent.named_children():
        own = not type(module).__module__.startswith("torch.nn")
        if own or any(True for _ in module.parameters()):
            out.append(f"{prefix}.{child}" if prefix else child)
    return out


def _narrow(model: nn.Module, names: list[str], builds: Callable[[Sequence[str]], bool],
            tries: int) -> tuple[str, ...]:
    """Narrows ``names`` (a hiding that builds) down to the smallest modules; after ``tries``
    graph builds, the hiding found so far, which builds."""
    hide = list(names)
    i = 0
    while i < len(hide) and tries > 0:
        rest = hide[:i] + hide[i + 1:]
        tries -= 1
        if builds(rest):
            hide = rest
            continue
        inner = _candidates(model, hide[i])
        if inner and tries > 0:
            tries -= 1
            if builds(rest + inner):
                hide = rest + inner
                continue
        i += 1
    return tuple(hide)
