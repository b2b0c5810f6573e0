"""Turns a model specification from the command line into a built ``nn.Module``.

Accepted specifications:

- a registered name (``resnet20``, ``vgg16_bn``, ...);
- ``torchvision:NAME``, any classification model of ``torchvision.models`` (random init: weights
  cannot be downloaded offline; pass ``--checkpoint`` for trained ones);
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
    except Exception as exc:  # a user factory can raise anything; report it on one line
        raise ModelError(f"model {spec!r}: factory failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec!r}: factory returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    if "in_channels" not in accepted:
        _adapt_input_channels(model, in_channels, spec)
    return model


def load_checkpoint(model: nn.Module, path: str | Path, spec: str) -> None:
    """Loads a state dict (or a dict with a ``state_dict``/``model`` entry) with
    ``weights_only=True``, so a checkpoint cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"checkpoint {path}: no such file") from None
    except Exception as exc:
        raise ModelError(f"checkpoint {path}: cannot be loaded as weights "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path}: expected a state dict, got {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:240]
        raise ModelError(f"checkpoint {path} does not match model {spec!r}: {detail}") from None


def _torchvision_factory(name: str) -> ModelFactory:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ModelError(f"unknown torchvision classification model {name!r}; "
                         f"available: {', '.join(names)}")

    def factory(num_classes: int = 1000) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    return factory


def _load_file(path: str) -> object:
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"model file {path}: no such file")
    name = f"edgeslim_user_model_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ModelError(f"model file {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelError(f"model file {path}: import failed: {type(exc).__name__}: {exc}") \
            from None
    return module


def _import(name: str) -> object:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModelError(f"model module {name!r} cannot be imported: {exc}") from None


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
