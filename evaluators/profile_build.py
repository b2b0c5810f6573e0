"""Building a latency profile on the device: ``optimize profile`` (see evaluators/profile.py).

What is timed:

1. every weighted-layer configuration the search can produce for the model: each layer whose
   input or output channels belong to a prunable group, at every channel count the ratio grid
   gives that group (``kept_channels`` of each ratio from 0 to ``max_ratio``), as a one-layer
   ONNX model in each quantization mode (with ``runtime`` litert, the LiteRT file converted
   from it, LiteRT's own quantization, timed in LiteRT);
2. whole models pruned with random per-group ratios (plus the unpruned one), in each mode. Most
   fit the calibration line ``latency = intercept + slope * sum(layer latencies)``; the others
   (``holdout``) are predicted and measured, and that error is written into the profile.

A layer's channel counts follow its groups: pruning a group to ``k`` of its ``C`` channels gives
a layer that reads it ``cin * k / C`` input channels (a flatten multiplies), and a depthwise
layer keeps ``groups == channels``.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from scipy.stats import spearmanr
from torch import nn

from edgeslim.compress.prune import apply_pruning, kept_channels, prunable_groups
from edgeslim.compress.quantize import QUANT_MODES, quantize_onnx
from edgeslim.defaults import MAX_RATIO
from edgeslim.errors import ConfigError
from edgeslim.evaluators.latency import host_description, time_interleaved, time_once
from edgeslim.evaluators.profile import (
    PROFILE_FORMAT,
    PROFILE_VERSION,
    layer_specs,
    signature,
)
from edgeslim.export import write_onnx
from edgeslim.models import build_model

Progress = Callable[[str, int, int], None]  # (phase, done, total)
ROUNDS = 5  # timing passes over the layer and model files


@dataclass(frozen=True)
class ProfileOptions:
    """What ``optimize profile`` times, and how long it may spend on each timing."""

    model: str
    input_shape: tuple[int, ...] = (3, 32, 32)
    num_classes: int = 10
    round_to: int = 8  # as the search's --round-to
    max_ratio: float = MAX_RATIO  # as the search's --max-ratio (a profile covers smaller ones too)
    step: float = 0.05  # the search's ratio grid
    modes: tuple[str, ...] = QUANT_MODES
    threads: int = 1  # intra-op threads, as the budget's runtime.threads
    models: int = 24  # whole models timed per mode: calibration plus held out
    holdout: int = 8  # of which held out from the fit, to measure the profile's error
    layer_seconds: float = 0.5  # timing budget per layer configuration and mode
    model_seconds: float = 2.0  # timing budget per whole model and mode
    seed: int = 0
    # onnxruntime (ONNX files) or litert (each file converted to a LiteRT file and timed in
    # LiteRT, as a LiteRT budget deploys it; needs the litert extra on the device).
    runtime: str = "onnxruntime"


def _grid(opts: ProfileOptions) -> list[float]:
    return [round(i * opts.step, 10) for i in range(int(opts.max_ratio / opts.step + 1e-9) + 1)]


def _export_specs(model: nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_onnx(model.eval(), example, Path(tmp) / "m.onnx")
        return layer_specs(onnx.load(str(path)))


def layer_configurations(opts: ProfileOptions) -> list[dict[str, Any]]:
    """Every weighted-layer spec the search space can produce (see the module docstring)."""
    model = build_model(opts.model, opts.input_shape[0], opts.num_classes).eval()
    example = torch.zeros(1, *opts.input_shape)
    base = _export_specs(model, example)
    groups = prunable_groups(model, example, opts.num_classes, opts.round_to)
    counts = {g.name: sorted({kept_channels(g.channels, r, opts.round_to) for r in _grid(opts)})
              for g in groups}
    # Which group drives each layer's input and output channels: prune one group at a time.
    reads: dict[int, tuple[str, int]] = {}
    writes: dict[int, tuple[str, int]] = {}
    for g in groups:
        pruned = copy.deepcopy(model)
        apply_pruning(pruned, example, {g.name: opts.max_ratio}, "l1", opts.round_to)
        smallest = counts[g.name][0]
        for i, (before, after) in enumerate(zip(base, _export_specs(pruned, example))):
            for side, seen in (("cin", reads), ("cout", writes)):
                if before[side] != after[side]:
                    if i in seen or before[side] * smallest // g.channels != after[side]:
                        raise ConfigError(f"profile: layer {i} of {opts.model} changes with "
                                          "more than one group or not in proportion; its "
                                          "latency cannot be tabulated")
                    seen[i] = (g.name, g.channels)
    specs: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(base):
        depthwise = spec["kind"] == "conv" and spec["g"] == spec["cin"] == spec["cout"] > 1
        options_in = _scaled(spec["cin"], reads.get(i), counts)
        options_out = _scaled(spec["cout"], writes.get(i), counts)
        if depthwise or (i in reads and reads.get(i) == writes.get(i)):
            pairs = list(zip(options_in, options_out))
        else:
            pairs = [(a, b) for a in options_in for b in options_out]
        for cin, cout in pairs:
            new = {**spec, "cin": cin, "cout": cout}
            if depthwise:
                new["g"] = cin
            specs[signature(new)] = new
    return list(specs.values())


def _scaled(channels: int, driver: tuple[str, int] | None, counts: dict[str, list[int]],
            ) -> list[int]:
    if driver is None:
        return [channels]
    name, total = driver
    return [channels * k // total for k in counts[name]]


def _layer_module(spec: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
    if spec["kind"] == "fc":
        rows = spec.get("rows", 1)
        shape = (1, rows, spec["cin"]) if rows > 1 else (1, spec["cin"])
        return nn.Linear(spec["cin"], spec["cout"]), torch.zeros(*shape)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(spec["in"])]
    module = conv(spec["cin"], spec["cout"], tuple(spec["k"]), stride=tuple(spec["s"]),
                  padding=tuple(spec["p"]), dilation=tuple(spec["d"]), groups=spec["g"])
    return module, torch.zeros(1, spec["cin"], *spec["in"])


def _artifact(model: nn.Module, example: torch.Tensor, mode: str, folder: Path,
              runtime: str = "onnxruntime") -> tuple[Path, Path]:
    """The file timed (an ONNX file in ``mode``, or the LiteRT file converted from the float
    one) and the ONNX graph its layers are read from."""
    folder.mkdir(parents=True, exist_ok=True)
    float_path = write_onnx(model.eval(), example, folder / "float.onnx")
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((8, *example.shape[1:])).astype(np.float32)
                   for _ in range(2)]
    calibrated = iter(calibration) if mode == "int8_static" else None
    if runtime == "litert":
        from edgeslim.litert import onnx_to_tflite

        return onnx_to_tflite(float_path, folder / f"{mode}.tflite", mode, calibrated), \
            float_path
    path = quantize_onnx(float_path, folder / f"{mode}.onnx", mode, calibrated)
    return path, path


def build_profile(opts: ProfileOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Times the layers and whole models (see the module docstring); returns the profile as a
    JSON-able dict with its held-out error per mode. Bad options raise a ConfigError before
    anything is timed."""
    unknown = [m for m in opts.modes if m not in QUANT_MODES]
    if unknown or not opts.modes:
        raise ConfigError(f"--quantize: must be among {', '.join(QUANT_MODES)}, got "
                          f"{','.join(opts.modes)!r}")
    if opts.holdout < 3 or opts.models - opts.holdout < 2:
        raise ConfigError("--models/--holdout: need at least 3 held-out models and 2 more to "
                          f"fit, got {opts.models} models with {opts.holdout} held out")
    report = progress or (lambda *_: None)
    specs = layer_configurations(opts)
    layers: dict[str, dict[str, float]] = {m: {} for m in opts.modes}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        layer_files, keys = [], []
        for spec in specs:
            module, example = _layer_module(spec)
            for mode in opts.modes:
                path, _ = _artifact(module, example, mode, folder / f"layer{len(layer_files)}",
                                    opts.runtime)
                layer_files.append((path, tuple(example.shape[1:])))
                keys.append((mode, signature(spec)))
        model_files, whole = _model_files(opts, folder)
        layer_ms, model_ms = _time_in_passes(opts, layer_files, model_files, report)
    for (mode, sig), ms in zip(keys, layer_ms, strict=True):
        layers[mode][sig] = ms
    measured = iter(model_ms)
    for same_model in zip(*whole.values(), strict=True):  # the order the files were made in
        for row in same_model:
            row["measured_ms"] = next(measured)
            row["layers_ms"] = float(sum(layers[row["mode"]][s] for s in row.pop("layers")))
            del row["mode"]
    fit, error = {}, {}
    for mode in opts.modes:
        fit[mode], error[mode] = _fit(whole[mode])
    return {
        "format": PROFILE_FORMAT, "version": PROFILE_VERSION,
        "runtime": opts.runtime, "runtime_version": _runtime_version(opts.runtime),
        "threads": opts.threads, "host": host_description(), "model": opts.model,
        "input_shape": list(opts.input_shape), "num_classes": opts.num_classes,
        "round_to": opts.round_to, "max_ratio": opts.max_ratio, "step": opts.step,
        "layers": layers, "fit": fit, "error": error,
    }


def _fit(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    """A line from the sum of a model's layer times to its measured time, fitted on the
    models not held out, and its error on those held out (each row gets its prediction)."""
    calib = [r for r in rows if not r["held_out"]]
    slope, intercept = np.polyfit([r["layers_ms"] for r in calib],
                                  [r["measured_ms"] for r in calib], 1)
    held = [r for r in rows if r["held_out"]]
    for r in rows:
        r["predicted_ms"] = float(intercept + slope * r["layers_ms"])
    rel = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in held]
    return {"intercept_ms": float(intercept), "slope": float(slope)}, {
        "held_out_models": len(held),
        "median_abs_error": float(np.median(rel)),
        "max_abs_error": float(np.max(rel)),
        "spearman": float(spearmanr([r["predicted_ms"] for r in held],
                                    [r["measured_ms"] for r in held]).statistic),
        "models": rows,
    }


def _runtime_version(runtime: str) -> str:
    if runtime == "litert":
        from importlib.metadata import version

        return version("ai-edge-litert")
    return str(host_description()["runtime_version"])


def _model_files(opts: ProfileOptions, folder: Path,
                 ) -> tuple[list[tuple[Path, tuple[int, ...]]], dict[str, list[dict[str, Any]]]]:
    """The whole models, pruned at random ratios, as files in every mode; and their rows per
    mode (ratios, held out or not, and the layers each holds, to be summed once timed)."""
    model = build_model(opts.model, opts.input_shape[0], opts.num_classes).eval()
    example = torch.zeros(1, *opts.input_shape)
    groups = prunable_groups(model, example, opts.num_classes, opts.round_to)
    grid = _grid(opts)
    rng = np.random.default_rng(opts.seed)
    configs: list[dict[str, float]] = [{}]
    while len(configs) < opts.models:
        # Half the models share one ratio (the uniform rule), half draw one per group.
        if len(configs) % 2:
            r = float(rng.choice(grid))
            configs.append({g.name: r for g in groups})
        else:
            configs.append({g.name: float(rng.choice(grid)) for g in groups})
    held_out = set(rng.choice(np.arange(1, opts.models), opts.holdout, replace=False).tolist())
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in opts.modes}
    files = []
    for i, ratios in enumerate(configs):
        pruned = copy.deepcopy(model)
        if ratios:
            apply_pruning(pruned, example, ratios, "l1", opts.round_to)
        for mode in opts.modes:
            path, graph = _artifact(pruned, example, mode, folder / f"model{len(files)}",
                                    opts.runtime)
            files.append((path, opts.input_shape))
            rows[mode].append({"ratios": ratios, "mode": mode, "held_out": i in held_out,
                               "layers": [signature(s) for s in
                                          layer_specs(onnx.load(str(graph)))]})
    return files, rows


def _time_in_passes(opts: ProfileOptions, layer_files: list[tuple[Path, tuple[int, ...]]],
                    model_files: list[tuple[Path, tuple[int, ...]]], report: Progress,
                    ) -> tuple[list[float], list[float]]:
    """The latency of every layer file and every whole-model file, in ms. Other work on a
    shared machine comes and goes in spells of seconds, some long enough to cover a whole pass
    over the layers. So the timing goes in ``ROUNDS`` passes, each timing every layer file one
    after another (``layer_seconds / ROUNDS`` each, at least half of it) and then the whole
    models together, in turns (``time_interleaved``, ``model_seconds / ROUNDS`` per model);
    each file keeps its fastest pass. Layers and models are then timed in the same spells, and
    each has several chances to be timed outside one."""
    layer_ms = [float("inf")] * len(layer_files)
    model_ms = [float("inf")] * len(model_files)
    share = opts.layer_seconds / ROUNDS
    for r in range(ROUNDS):
        for i, (path, shape) in enumerate(layer_files):
            timing = time_once(path, shape, opts.threads, warmup=5, min_runs=20,
                               min_seconds=share / 2, max_seconds=share, stable_within=0.02)
            layer_ms[i] = min(layer_ms[i], timing.latency_ms)
            report("layers", r * len(layer_files) + i + 1, ROUNDS * len(layer_files))
        timings = time_interleaved(model_files, opts.threads,
                                   opts.model_seconds / ROUNDS * len(model_files), min_runs=10)
        model_ms = [min(ms, t.latency_ms) for ms, t in zip(model_ms, timings, strict=True)]
        report("models", r + 1, ROUNDS)
    return layer_ms, model_ms
