"""Model registry and resolution of model specifications."""

from edgeslim.models import (  # noqa: F401 (register)
    alexnet_cifar,
    cnn1d,
    convnext_cifar,
    mobilenetv2_cifar,
    resnet_cifar,
    resnet_imagenet,
    vgg_cifar,
)
from edgeslim.models._registry import MODELS, register_model
from edgeslim.models._resolve import build_model, load_checkpoint, resolve_factory

__all__ = ["MODELS", "build_model", "load_checkpoint", "register_model", "resolve_factory"]
