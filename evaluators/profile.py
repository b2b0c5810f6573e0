"""The ``profile`` latency source: a device's latency table, and predictions from it.

A profile (``optimize profile``, run on the device) holds, per quantization mode, the measured
latency of every weighted-layer configuration the search space can produce for one model, and a
linear calibration ``latency = intercept_ms + slope * sum(layer latencies)`` fitted on whole
models, which accounts for what the layers alone miss (activations, adds, pooling, the
runtime's per-run overhead). It also records its own error: predictions against measurements of
whole models that were not used in the fit.

A layer configuration is keyed by what determines its cost, read from the ONNX graph:
``conv2d cin=16 in=32x32 cout=32 k=3x3 s=1x1 p=1x1 d=1x1 g=1``, ``fc in=64 out=10``, or
``fc rows=256 in=40 out=160`` for a linear layer applied at 256 positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edgeslim.errors import CandidateError, ConfigError
from edgeslim.evaluators.latency import LatencyResult

PROFILE_FORMAT = "edgeslim-latency-profile"
PROFILE_VERSION = 1
_CONV_OPS = {"Conv", "ConvInteger", "QLinearConv"}
_FC_OPS = {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"}


def graph_mode(model: onnx.ModelProto) -> str:
    """The quantization mode an exported graph was written with (see compress.quantize)."""
    ops = {node.op_type for node in model.graph.node}
    if ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}:
        return "int8_dynamic"
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv"}:
        return "int8_static"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "none"


def layer_specs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """What determines the cost of each weighted layer (convolution, fully connected), in graph
    order: ``kind`` ("conv" or "fc"), channels in and out, spatial input size, kernel, stride,
    begin pads, dilation and groups for convolutions."""
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1
                           for d in vi.type.tensor_type.shape.dim]
    for t in graph.initializer:
        shapes[t.name] = list(t.dims)
    out: list[dict[str, Any]] = []
    for node in graph.node:
        if node.op_type not in _CONV_OPS | _FC_OPS:
            continue
        weight = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
        x, w, y = shapes.get(node.input[0]), shapes.get(weight), shapes.get(node.output[0])
        if not x or not w or not y:
            raise CandidateError(f"layer {node.name or node.op_type}: shapes unknown")
        if node.op_type in _FC_OPS:
            # A linear layer may act on every position (ConvNeXt's pointwise layers on NHWC
            # tensors): its cost scales with the rows it is applied to.
            rows = 1
            for d in x[:-1]:
                rows *= d
            out.append({"kind": "fc", "rows": rows, "cin": x[-1], "cout": y[-1]})
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        nd = len(x) - 2
        out.append({"kind": "conv", "cin": x[1], "in": list(x[2:]), "cout": y[1],
                    "k": list(attrs.get("kernel_shape", w[2:])),
                    "s": list(attrs.get("strides", [1] * nd)),
                    "p": list(attrs.get("pads", [0] * 2 * nd))[:nd],
                    "d": list(attrs.get("dilations", [1] * nd)),
                    "g": int(attrs.get("group", 1))})
    return out


def signature(spec: dict[str, Any]) -> str:
    """The table key of a layer spec (see the module docstring)."""
    if spec["kind"] == "fc":
        rows = spec.get("rows", 1)
        return (f"fc rows={rows} " if rows > 1 else "fc ") + f"in={spec['cin']} out={spec['cout']}"
    return (f"conv{len(spec['in'])}d cin={spec['cin']} in={_x(spec['in'])} "
            f"cout={spec['cout']} k={_x(spec['k'])} s={_x(spec['s'])} p={_x(spec['p'])} "
            f"d={_x(spec['d'])} g={spec['g']}")


def layer_signatures(model: onnx.ModelProto) -> list[str]:
    return [signature(spec) for spec in layer_specs(model)]


def _x(values: list[int]) -> str:
    return "x".join(str(int(v)) for v in values)


@dataclass(frozen=True)
class LatencyProfile:
    """A loaded profile file (see the module docstring for what it holds)."""

    path: Path
    runtime: str
    runtime_version: str
    threads: int
    host: dict[str, Any]
    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    round_to: int
    max_ratio: float
    layers: dict[str, dict[str, float]]  # mode -> signature -> latency ms
    fit: dict[str, dict[str, float]]  # mode -> {"intercept_ms", "slope"}
    error: dict[str, dict[str, Any]]  # mode -> held-out error summary

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.layers)

    def predict_ms(self, model: onnx.ModelProto, mode: str | None = None) -> float:
        """Predicted latency of ``model`` (any graph the search exports) on the device; for a
        LiteRT file, ``model`` is the float graph it was converted from and ``mode`` its
        quantization."""
        mode = mode or graph_mode(model)
        table = self.layers.get(mode)
        if table is None:
            raise CandidateError(f"profile {self.path.name} has no {mode} table "
                                 f"(it has {', '.join(self.modes)})")
        sigs = layer_signatures(model)
        missing = [s for s in sigs if s not in table]
        if missing:
            raise CandidateError(f"profile {self.path.name} has no timing for layer "
                                 f"{missing[0]!r} ({mode}); profile the model with the search's "
                                 "--round-to and --max-ratio")
        fit = self.fit[mode]
        return fit["intercept_ms"] + fit["slope"] * sum(table[s] for s in sigs)

    def check(self, runtime: str, threads: int, model: str, input_shape: tuple[int, ...],
              num_classes: int, round_to: int, max_ratio: float, modes: tuple[str, ...]) -> None:
        """A ConfigError naming the first way the profile does not fit the search."""
        def bad(what: str, mine: object, search: object) -> ConfigError:
            return ConfigError(f"latency.profile: {self.path} was made for {what} {mine}, the "
                               f"search uses {search}; run `optimize profile` for this setup")

        if self.runtime != runtime:
            raise bad("runtime", self.runtime, runtime)
        if self.model != model:
            raise bad("model", self.model, model)
        if tuple(self.input_shape) != tuple(input_shape) or self.num_classes != num_classes:
            raise bad("input shape and classes", f"{list(self.input_shape)}/{self.num_classes}",
                      f"{list(input_shape)}/{num_classes}")
        if self.round_to != round_to:
            raise bad("--round-to", self.round_to, round_to)
        if self.max_ratio < max_ratio:
            raise bad("--max-ratio", self.max_ratio, max_ratio)
        if self.threads != threads:
            raise bad("threads", self.threads, threads)
        missing = [m for m in modes if m not in self.layers]
        if missing:
            raise bad("quantization modes", ",".join(self.modes), ",".join(modes))


def load_profile(path: str | Path) -> LatencyProfile:
    """Reads and validates a profile file; a ConfigError names what is wrong with it."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"latency.profile: cannot read {path} "
                          f"({exc.strerror or exc})") from None
    except ValueError:
        raise ConfigError(f"latency.profile: {path} is not valid JSON (a damaged or "
                          "truncated profile? make it again with `optimize profile`)") from None
    if not isinstance(raw, dict) or raw.get("format") != PROFILE_FORMAT:
        raise ConfigError(f"latency.profile: {path} is not an edgeslim latency profile")
    if raw.get("version") != PROFILE_VERSION:
        raise ConfigError(f"latency.profile: {path} has format version {raw.get('version')!r}; "
                          f"this edgeslim reads version {PROFILE_VERSION}")
    try:
        profile = LatencyProfile(
            path=path, runtime=str(raw["runtime"]), runtime_version=str(raw["runtime_version"]),
            threads=int(raw["threads"]), host=dict(raw["host"]), model=str(raw["model"]),
            input_shape=tuple(int(v) for v in raw["input_shape"]),
            num_classes=int(raw["num_classes"]), round_to=int(raw["round_to"]),
            max_ratio=float(raw["max_ratio"]),
            layers={str(m): {str(k): float(v) for k, v in t.items()}
                    for m, t in raw["layers"].items()},
            fit={str(m): {"intercept_ms": float(f["intercept_ms"]), "slope": float(f["slope"])}
                 for m, f in raw["fit"].items()},
            error=dict(raw["error"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"latency.profile: {path} is damaged (bad or missing field "
                          f"{exc})") from None
    if set(profile.fit) != set(profile.layers) or not profile.layers:
        raise ConfigError(f"latency.profile: {path} is damaged (tables and fits disagree)")
    return profile


@dataclass
class ProfileMeter:
    """Predicts latency from a profile instead of timing."""

    profile: LatencyProfile
    threads_requested: int
    source: str = "profile"

    def measure(self, onnx_path: Path, below_ms: float | None = None,
                graph: Path | None = None, mode: str | None = None) -> LatencyResult:
        """The predicted latency of an ONNX file; of a LiteRT file (``.tflite``), from the
        ``graph`` it was converted from and its quantization ``mode``."""
        if Path(onnx_path).suffix == ".tflite":
            if graph is None or mode is None:
                raise ValueError("a LiteRT file is predicted from its ONNX graph and mode")
            ms = self.profile.predict_ms(onnx.load(str(graph)), mode)
        else:
            ms = self.profile.predict_ms(onnx.load(str(onnx_path)))
        return LatencyResult(ms, ms, ms, runs=0, threads=self.profile.threads,
                             threads_requested=self.threads_requested, source="profile")
