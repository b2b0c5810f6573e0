"""The deployment runtimes a budget can name (``runtime: {name: ...}``), and what each needs
installed. Light on purpose: the CLI checks the budget's runtime with it before PyTorch loads.

- ``onnxruntime``: the artifact is an ONNX file run by onnxruntime's CPU provider.
- ``litert``: a ``.tflite`` file run by LiteRT (``ai-edge-litert``), the TensorFlow Lite
  runtime of phones and Linux boards.
- ``litert-micro``: the same ``.tflite`` file run by LiteRT for Microcontrollers
  (``tflite-micro``); the memory it needs is the tensor arena that runtime plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec

from edgeslim.errors import ConfigError


@dataclass(frozen=True)
class RuntimeInfo:
    """A deployment runtime: its artifact's suffix, the modules it imports (module -> the
    package that provides it) and how to install them."""

    name: str
    suffix: str  # of the deployable artifact
    modules: tuple[tuple[str, str], ...] = ()
    install: str = ""
    # The quantization modes whose files it runs, and why others are left out; None: all.
    quant_modes: tuple[str, ...] | None = None
    quant_reason: str = ""

    @property
    def litert(self) -> bool:
        """Whether the artifact is a LiteRT file (converted from the ONNX file)."""
        return self.suffix == ".tflite"


RUNTIMES: dict[str, RuntimeInfo] = {}
# The quantization modes a search chooses from unless ``--quantize`` names others; a runtime
# with ``quant_modes`` keeps those of them it runs.
DEFAULT_QUANTIZE = "int8_static,int8_dynamic,fp16"


def register_runtime(info: RuntimeInfo) -> None:
    if info.name in RUNTIMES:
        raise ValueError(f"runtime {info.name!r} is already registered")
    RUNTIMES[info.name] = info


_CONVERTER = (("tensorflow", "tensorflow"), ("tf_keras", "tf-keras"), ("onnx2tf", "onnx2tf"),
              ("onnx_graphsurgeon", "onnx-graphsurgeon"), ("sng4onnx", "sng4onnx"))
register_runtime(RuntimeInfo("onnxruntime", ".onnx"))
register_runtime(RuntimeInfo("litert", ".tflite",
                             (*_CONVERTER, ("ai_edge_litert", "ai-edge-litert")),
                             "uv sync --extra litert"))
register_runtime(RuntimeInfo("litert-micro", ".tflite",
                             (*_CONVERTER, ("tflite_micro", "tflite-micro")),
                             "uv sync --extra litert", quant_modes=("int8_static",),
                             quant_reason="LiteRT for Microcontrollers has no kernels for "
                             "dynamic-range (hybrid) or float16 files"))


def runtime_info(name: str) -> RuntimeInfo:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ConfigError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}") from None


def check_installed(name: str, to_run: bool = False) -> RuntimeInfo:
    """The runtime ``name``, once its packages are found (nothing is imported); with
    ``to_run``, those that run its files only (a device that times them needs no converter).

    Raises:
        ConfigError: naming the runtime's missing packages and how to install them.
    """
    info = runtime_info(name)
    modules = [m for m in info.modules if not (to_run and m in _CONVERTER)]
    missing = [package for module, package in modules if find_spec(module) is None]
    if missing:
        raise ConfigError(f"runtime {name} needs {', '.join(missing)}, not installed; install "
                          f"with: {info.install}")
    return info
