"""The budget file's format, as pydantic models: one definition that checks a file, reports every
mistake in it at once, and is published as a JSON Schema for editors
(``budgets/budget.schema.json``; ``python -m edgeslim._budget_schema`` writes it).

Each field's check is a small function (``edgeslim._budget_checks``) that raises pydantic's
custom error with the rule ("must be > 0 ms"); ``edgeslim._budget_validate`` turns the errors
into lines that name the key path, the rule and the value, and checks the rules that tie one key
to another.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import WithJsonSchema

from edgeslim import _budget_checks as check
from edgeslim.units import UNITS, Kind

# YAML key of a limit -> (measure name used everywhere else, kind of quantity). The measure
# names are the trial user-attribute keys, card keys and table columns.
LIMIT_KEYS: dict[str, tuple[str, Kind]] = {
    "params": ("params", "count"),
    "macs": ("macs", "count"),
    "peak_memory": ("peak_memory_bytes", "bytes"),
    "activation_memory": ("activation_bytes", "bytes"),
    "size": ("size_bytes", "bytes"),
    "latency": ("latency_ms", "ms"),
}
# Accepted for the key on the right, and read as it: ``flops`` counted MACs before ``macs``
# was the name (FLOPs are usually twice the MACs, so the alias is noted when used).
ALIASES = {"flops": "macs"}
ACCURACY_DROP_KEY = "accuracy_drop"
# Closed choices (``edgeslim.budget`` types its fields with them).
RuntimeName = Literal["onnxruntime", "litert", "litert-micro"]
LatencySourceName = Literal["host", "profile", "ssh"]
RUNTIME_NAMES: tuple[str, ...] = get_args(RuntimeName)
LATENCY_SOURCES: tuple[str, ...] = get_args(LatencySourceName)
FLOPS_NOTE = ("read as MACs (one multiply-accumulate = 1), not FLOPs, which are usually twice "
              "the MACs; rename it macs")


def _typed(check, schema: dict[str, Any], description: str):
    return Annotated[Any, BeforeValidator(check), WithJsonSchema(schema),
                     Field(description=description)]


_QUANTITY = r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*({units})\s*$"


def _quantity_schema(kind: Kind) -> dict[str, Any]:
    units = "|".join([*(u for u in UNITS[kind] if u), "%"])
    text = {"type": "string", "pattern": _QUANTITY.format(units=units)}
    return {"anyOf": [text, {"type": "number", "exclusiveMinimum": 0}]} if kind == "count" \
        else text


def _limit_field(kind: Kind, description: str):
    return _typed(check.limit(kind), _quantity_schema(kind), description)


_STRING = {"type": "string"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSpec(_Section):
    """The target device (free text plus cores and memory, copied into the model card)."""

    name: _typed(check.non_empty, {"type": "string", "minLength": 1},
                 "the device's name") = Field(default=None, validate_default=True)
    cpu: _typed(check.string, _STRING, "its CPU, e.g. 4x Arm Cortex-A72 @ 1.5 GHz") = ""
    cores: _typed(check.positive_int, {"type": "integer", "minimum": 1}, "physical cores") = None
    memory: _typed(check.size, _quantity_schema("bytes"), "RAM, e.g. 4GB") = None
    notes: _typed(check.string, _STRING, "anything else worth knowing") = ""


class RuntimeSpec(_Section):
    """The runtime the artifact is deployed in, and the threads latency is timed with."""

    name: _typed(check.one_of(RUNTIME_NAMES), {"type": "string", "enum": list(RUNTIME_NAMES)},
                 "the deployment runtime: onnxruntime (an ONNX file), litert (a .tflite "
                 "file run by LiteRT) or litert-micro (the same file run by LiteRT for "
                 "Microcontrollers)") = "onnxruntime"
    threads: _typed(check.positive_int, {"type": "integer", "minimum": 1},
                    "intra-op threads at inference, batch 1") = 1
    int8_io: _typed(check.boolean, {"type": "boolean"},
                    "litert, litert-micro: an int8 file takes and returns int8 tensors "
                    "instead of float32") = False


class LatencySpec(_Section):
    """Where a candidate's latency comes from."""

    source: _typed(check.one_of(LATENCY_SOURCES),
                   {"type": "string", "enum": list(LATENCY_SOURCES)},
                   "host (timed here), profile (predicted from a device's table) or ssh "
                   "(timed on the device)") = "host"
    profile: _typed(check.non_empty, _STRING, "profile JSON file, relative to the budget") = None
    host: _typed(check.ssh_host, _STRING, "user@address of the device (source: ssh)") = None
    port: _typed(check.port, {"type": "integer", "minimum": 1, "maximum": 65535}, "ssh port") = 22
    identity: _typed(check.argument, _STRING, "ssh private key file") = None
    known_hosts: _typed(check.argument, _STRING, "ssh known_hosts file") = None
    python: _typed(check.argument, _STRING, "the device's interpreter with edgeslim") = "python3"
    max_spread: _typed(check.spread, {"type": "number", "exclusiveMinimum": 0},
                       "a timing whose (p90 - p10) / median exceeds this is redone") = 0.25


class LimitsSpec(_Section):
    """Caps on the measures; each absolute with a unit, or a percentage of the base model's."""

    params: _limit_field("count", "parameters: 1.2M, 500K or % of the base") = None
    macs: _limit_field("count", "multiply-accumulates at batch 1: 40M or % of the base") = None
    flops: _limit_field("count", "old name of macs, read as MACs (not FLOPs)") = None
    peak_memory: _limit_field("bytes", "weights + largest set of live activations") = None
    activation_memory: _limit_field("bytes", "live activations alone (a MCU's RAM)") = None
    size: _limit_field("bytes", "byte length of the deployable artifact") = None
    latency: _limit_field("ms", "batch 1, in the budget's runtime") = None
    accuracy_drop: _typed(check.accuracy_points,
                          {"anyOf": [{"type": "string", "pattern": r"^\s*[0-9.]+\s*(%|pp)\s*$"},
                                     {"type": "number", "minimum": 0, "exclusiveMaximum": 100}]},
                          "percentage points of validation accuracy below the base") = None


OBJECTIVE_NAMES = (*LIMIT_KEYS, *ALIASES)


class BudgetSpec(_Section):
    """What an edge device can afford, as an edgeslim budget file."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="edgeslim budget")

    device: Annotated[DeviceSpec, BeforeValidator(check.device),
                      Field(description="the target device, or just its name")] = \
        Field(default=None, validate_default=True)
    runtime: Annotated[RuntimeSpec, BeforeValidator(check.section)] = RuntimeSpec()
    latency: Annotated[LatencySpec, BeforeValidator(check.section)] = LatencySpec()
    limits: Annotated[LimitsSpec, BeforeValidator(check.section)] = LimitsSpec()
    objectives: Annotated[list[_typed(
        check.one_of(tuple(LIMIT_KEYS), "accuracy is always an objective", tuple(ALIASES)),
        {"type": "string", "enum": list(OBJECTIVE_NAMES)}, "a measure")],
        BeforeValidator(lambda v: [] if v is None else v)] = Field(
            default=[], description="measures traded off against accuracy on the Pareto front")


SECTIONS = {"device": DeviceSpec, "runtime": RuntimeSpec, "latency": LatencySpec,
            "limits": LimitsSpec}


def json_schema() -> dict[str, Any]:
    """The budget format as a JSON Schema (draft 2020-12), for editors."""
    schema = BudgetSpec.model_json_schema()
    # ``device: NAME`` is short for ``device: {name: NAME}``; the section must be there.
    device = schema["properties"]["device"]
    device["anyOf"] = [{"type": "string", "minLength": 1}, {"$ref": device.pop("$ref")}]
    device.pop("default", None)
    schema["required"] = ["device"]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
