"""Turns a model specification from the command line into a built ``nn.Module``.

Accepted specifications:

- a registered name (``resnet20``, ``vgg16_bn``, ...);
- ``torchvision:NAME``, a classification model of ``torchvision.models`` (random init: weights
  cannot be downloaded offline; pass ``--checkpoint`` for trained ones); how far the search
  gets with each is in ``benchmarks/results/torchvision_coverage.md``;
- ``path/to/file.py:factory``: the file is imported and run as code (by design; only use files
  you trust) and ``factory`` is called;
- ``package.module:factory``: an importable module's factory.

Factories are called with ``in_channels`` and ``num_classes`` when their signature accepts them,
so input channels and class count follow the dataset.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pickle
import re
import sys
from pathlib import Path

import torch
from torch import nn

from edgeslim.errors import ModelError
from edgeslim.models._registry import MODELS, ModelFactory, registered


def resolve_factory(spec: str) -> ModelFactory:
    if spec in MODELS:
        return MODELS[spec]
    if spec.startswith("torchvision:"):
        return _torchvision_factory(spec.removeprefix("torchvision:"))
    if ":" in spec:
        target, _, attr = spec.rpartition(":")
        module = _load_file(target) if target.endswith(".py") else _import(target)
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ModelError(f"model {spec!r}: {target} has no callable {attr!r}")
        return factory
    return registered(spec)  # raises with the list of valid names


def build_model(spec: str, in_channels: int, num_classes: int) -> nn.Module:
    """Builds the model named by ``spec`` for the dataset's input channels and classes."""
    factory = resolve_factory(spec)
    accepted = _accepted_kwargs(factory)
    kwargs = {k: v for k, v in (("in_channels", in_channels), ("num_classes", num_classes))
              if k in accepted}
    try:
        model = factory(**kwargs)
    except (Exception, SystemExit) as exc:  # a user factory can raise anything: one line
        raise ModelError(f"model {spec!r}: factory failed: {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec!r}: factory returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    if "in_channels" not in accepted:
        _adapt_input_channels(model, in_channels, spec)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a checkpoint file into a state dict (parameter name -> tensor) with
    ``weights_only=True``: a pickle that would build other objects or run code is refused, and
    nothing in it runs. A dict holding the state dict under ``state_dict``, ``model`` or
    ``model_state`` (a training checkpoint) is accepted too.

    Raises:
        ModelError: one line saying what the file is instead.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"checkpoint {path}: is a directory; give the file written by "
                         "torch.save(model.state_dict(), PATH)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"checkpoint {path}: no such file") from None
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise ModelError(f"checkpoint {path}: cannot be loaded as weights: not a file "
                             "written by torch.save") from None
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ModelError(f"checkpoint {path}: cannot be loaded as weights: it holds Python "
                         f"objects{what}, not only tensors, and loading them could run code; "
                         "save model.state_dict() with torch.save and pass that file") from None
    except Exception as exc:  # a text, truncated or foreign file: torch raises many kinds
        # torch.save writes a zip archive (or, before PyTorch 1.6, a pickle): for anything
        # else the loader's own error says nothing useful.
        with open(path, "rb") as f:
            looks_saved = f.read(4)[:1] in (b"\x80", b"P")  # a pickle, or a zip: b"PK\3\4"
        detail = f" ({_one_line(exc).split('. ')[0]})" if looks_saved else ""
        raise ModelError(f"checkpoint {path}: cannot be loaded as weights: not a file written "
                         f"by torch.save{detail}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path}: expected a state dict (parameter name -> tensor), "
                         f"got {type(state).__name__}")
    odd = next(((k, v) for k, v in state.items()
                if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise ModelError(f"checkpoint {path}: expected a state dict (parameter name -> tensor), "
                         f"but {str(odd[0])[:80]!r} holds {type(odd[1]).__name__}")
    return state


def load_checkpoint(model: nn.Module, path: str | Path, spec: str) -> None:
    """Loads the weights of ``path`` (see :func:`read_state_dict`) into ``model``; every key
    and shape must match."""
    state = read_state_dict(path)
    problem = state_dict_mismatch(model, state)
    if problem is None:
        try:
            model.load_state_dict(state)
            return
        except RuntimeError as exc:
            problem = _one_line(exc)
    raise ModelError(f"checkpoint {path} does not match model {spec!r}: {problem}")


def state_dict_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into ``model`` (names and shapes), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{len(keys)} {what} ({_first(keys)})"
                 for keys, what in ((missing, "keys of the model missing from the checkpoint"),
                                    (unexpected, "keys the model does not have"))
                 if keys]
        return f"{', '.join(parts)}; was it saved from another model?"
    wrong = [k for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        return (f"{k} has shape {tuple(state[k].shape)} in the checkpoint but "
                f"{tuple(own[k].shape)} in the model{more}; was it saved for another number "
                "of classes or input channels?")
    return None


def _first(names: list[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, cut short: user code's errors on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


AUXILIARY_HEADS = ("googlenet", "inception_v3")


def _torchvision_factory(name: str) -> ModelFactory:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ModelError(f"unknown torchvision classification model {name!r}; "
                         f"available: {', '.join(names)}")

    # GoogLeNet and Inception v3 add auxiliary classifiers whose outputs they return beside
    # the logits while training; a deployed model never runs them.
    options = {"aux_logits": False} if name in AUXILIARY_HEADS else {}

    def factory(num_classes: int = 1000) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                            **options)

    return factory


def _load_file(path: str) -> object:
    """Runs the file as a module. It is compiled in memory, so no ``__pycache__`` is written
    beside it."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"model file {path}: no such file")
    name = f"edgeslim_user_model_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None:
        raise ModelError(f"model file {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: the file's classes can be pickled
    try:
        code = compile(file.read_bytes(), str(file), "exec")
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise ModelError(f"model file {path}: import failed: {_one_line(exc)}") from None
    return module


def _import(name: str) -> object:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModelError(f"model module {name!r} cannot be imported: {_one_line(exc)} (is it "
                         "installed, or on PYTHONPATH?)") from None
    except (Exception, SystemExit) as exc:
        raise ModelError(f"model module {name!r}: import failed: {_one_line(exc)}") from None


def _accepted_kwargs(factory: ModelFactory) -> set[str]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return {"in_channels", "num_classes"}
    return {p.name for p in params}


def _adapt_input_channels(model: nn.Module, in_channels: int, spec: str) -> None:
    """Rebuilds the first convolution when the factory cannot be told the input channels."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels == in_channels:
        return
    name, conv = first
    if conv.groups != 1:
        raise ModelError(f"model {spec!r}: first conv {name} is grouped; cannot adapt it to "
                         f"{in_channels} input channels")
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, 1, conv.bias is not None, conv.padding_mode))
