"""Checks of a built, untrained model against the data, before anything is trained: that it
takes the data's samples (the first layer it runs has the dimensions and channels of one
sample), returns one score per class, can be trained (and, given the training batch, that a
step on it fits in memory: ``edgeslim.models.train_memory``), and exports to an ONNX file that
onnxruntime runs (every candidate is deployed and measured as one). Each failure is a
``ModelError`` of one line; seconds, where the base model's training takes minutes.
"""

from __future__ import annotations

import copy

import onnxruntime as ort
import torch
from torch import nn

from edgeslim.compress.untraced import one_thread
from edgeslim.errors import CandidateError, ModelError
from edgeslim.export import INPUT_NAME, ORT_ERRORS, onnx_bytes, ort_reason
from edgeslim.models.train_memory import check_training_memory
from edgeslim.precision import default_device

# Dimensions of one sample (without the batch) each layer type takes, and how they read.
_TAKES = {nn.Conv1d: (2, "C x L"), nn.Conv2d: (3, "C x H x W"), nn.Conv3d: (4, "C x D x H x W")}


def check_model(model: nn.Module, spec: str, data_name: str, shape: tuple[int, ...],
                num_classes: int, train_batch: int | None = None,
                device: torch.device | None = None, processes: int = 1) -> None:
    """Raises ``ModelError`` naming what keeps ``model`` from being searched on samples of
    ``shape`` (see the module docstring); with ``train_batch``, also when a training step on
    that many samples in each of ``processes`` does not fit the memory of ``device``
    (``check_training_memory``).
    ``model`` is left as it was."""
    copied = copy.deepcopy(model)
    with one_thread():  # batch-1 forwards of one sample
        _check(copied, spec, data_name, shape, num_classes)
    if train_batch is not None:
        check_training_memory(copied, spec, shape, train_batch, device or default_device(),
                              processes=processes)


def _check(model: nn.Module, spec: str, data_name: str, shape: tuple[int, ...],
           num_classes: int) -> None:
    example = torch.zeros(1, *shape)
    sample = " x ".join(str(d) for d in shape)
    first: list[tuple[str, nn.Module, torch.Size]] = []
    names = {m: n for n, m in model.named_modules()}

    def record(module: nn.Module, args: tuple) -> None:
        if not first and args and isinstance(args[0], torch.Tensor):
            first.append((names[module], module, args[0].shape))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    try:
        with torch.no_grad():
            out = model.eval()(example)
        error = None
    except Exception as exc:  # a user's forward can raise anything
        out, error = None, exc
    finally:
        for hook in hooks:
            hook.remove()
    where = f"model {spec!r} does not fit {data_name}, whose samples are {sample}"
    if first:
        name, layer, got = first[0]
        if _mismatch(layer, got, error is not None):
            raise ModelError(f"{where}: it takes {_takes(layer)} (its first layer {name} is a "
                             f"{type(layer).__name__}); pick a model for this data")
    if error is not None:
        raise ModelError(f"{where}: its forward fails on one sample: {_one_line(error)}")
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model {spec!r} returns {got_shape} for one sample, not "
                         f"(1, {num_classes}) scores, one per class of {data_name}")
    _check_training(model, spec, example)
    _check_export(model, spec, example)


def _mismatch(layer: nn.Module, got: torch.Size, failed: bool) -> bool:
    """Whether the first layer run was given other dimensions or channels than it takes. A
    convolution runs on an unbatched input of one dimension fewer without a word, so its
    dimensions are checked even when the forward passed."""
    for kind, (dims, _) in _TAKES.items():
        if isinstance(layer, kind):
            return len(got) - 1 != dims or got[1] != layer.in_channels
    return failed and isinstance(layer, nn.Linear) and got[-1] != layer.in_features


def _takes(layer: nn.Module) -> str:
    for kind, (_, text) in _TAKES.items():
        if isinstance(layer, kind):
            return f"samples of {text} with C = {layer.in_channels}"
    return f"samples of {layer.in_features} features"


def _check_training(model: nn.Module, spec: str, example: torch.Tensor) -> None:
    """One training step's forward and backward, on two samples (batch norm needs two)."""
    try:
        model.train()
        model(example.expand(2, *example.shape[1:]).contiguous()).float().sum().backward()
    except Exception as exc:
        raise ModelError(f"model {spec!r} cannot be trained: {_one_line(exc)}") from None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def _check_export(model: nn.Module, spec: str, example: torch.Tensor) -> None:
    """The export every candidate goes through, and one run of the file in onnxruntime."""
    try:
        data = onnx_bytes(model, example)
    except CandidateError as exc:
        raise ModelError(f"model {spec!r} cannot be searched: every candidate is deployed as "
                         f"an ONNX file, and {exc}") from None
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        session.run(None, {INPUT_NAME: example.numpy()})
    except ORT_ERRORS as exc:
        raise ModelError(f"model {spec!r} cannot be searched: onnxruntime cannot run its "
                         f"ONNX file: {ort_reason(exc)}") from None


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
