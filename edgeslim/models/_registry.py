"""Model registry: name -> factory(in_channels, num_classes) -> nn.Module."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edgeslim.errors import ModelError

ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Registers ``factory(in_channels=..., num_classes=...)`` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered (registries refuse duplicates).
    """

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return decorate


def registered(name: str) -> ModelFactory:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))} "
            "(or torchvision:NAME, path/to/file.py:factory, package.module:factory)"
        ) from None
