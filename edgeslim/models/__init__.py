"""Model registry and resolution of model specifications."""

from edgeslim.models import mobilenetv2_cifar, resnet_cifar, vgg_cifar  # noqa: F401 (register)
from edgeslim.models._registry import MODELS, register_model
from edgeslim.models._resolve import build_model, load_checkpoint, resolve_factory

__all__ = ["MODELS", "build_model", "load_checkpoint", "register_model", "resolve_factory"]
