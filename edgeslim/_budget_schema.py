"""The budget file's format, as pydantic models: one definition that checks a file, reports every
mistake in it at once, and is published as a JSON Schema for editors
(``budgets/budget.schema.json``; ``python -m edgeslim._budget_schema`` writes it).

Each field's check is a small function (``edgeslim._budget_checks``) that raises pydantic's
custom error with the rule ("must be > 0 ms"); ``problems`` turns the errors into lines that
name the key path, the rule and the value: ``limits.latency: must be > 0 ms, got '0ms'``. Rules
that tie one key to another (what a latency source needs, a measure given twice) are checked on
the raw document by ``cross_problems``, so that they are reported even when other keys are
wrong.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.json_schema import WithJsonSchema

from edgeslim import _budget_checks as check
from edgeslim._yaml import shown
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


def key_text(key: Any) -> str:
    """A key as it appears in a key path: itself when it is a short printable string."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 80:
        return key
    return shown(key)


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) and out == "objectives" else \
            (f".{key_text(part)}" if out else key_text(part))
    return out or "(top level)"


def _allowed(loc: tuple[Any, ...]) -> list[str]:
    model = BudgetSpec if len(loc) == 1 else SECTIONS.get(loc[0])
    # Old names (``flops``) are accepted but not offered.
    return sorted(set(model.model_fields) - set(ALIASES)) if model is not None else []


def _unknown_key(loc: tuple[Any, ...], key: Any) -> str:
    allowed = _allowed(loc)
    hint = check.nearest(key, allowed)
    return f"unknown key ({hint}allowed: {', '.join(allowed)})"


def problems(exc: ValidationError, raw: Any) -> list[tuple[tuple[Any, ...], str]]:
    """pydantic's errors as ``(key path, 'rule, got value')`` pairs, in the schema's order."""
    out = []
    for err in exc.errors(include_url=False):
        loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
        if kind == "invalid_key":  # a key that is not a string (a number, null)
            loc, value = loc[:-1] + (value,), _lookup(raw, loc[:-1] + (value,))
            kind = "extra_forbidden"
        if kind == "extra_forbidden":
            rule = f"{_unknown_key(loc, loc[-1])}, got {shown(value)}"
        elif kind == "budget":
            rule = f"{err['ctx']['rule']}, got {shown(value)}"
        elif kind == "budget_said":
            rule = err["ctx"]["rule"]
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            rule = f"must be a mapping, got {shown(value)}"
        elif kind == "list_type":
            rule = f"must be a list of measure names, got {shown(value)}"
        else:  # not reached by the checks above; kept readable all the same
            rule = f"{err['msg']}, got {shown(value)}"
        out.append((loc, rule))
    return out


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def cross_problems(raw: Any) -> list[tuple[tuple[Any, ...], str]]:
    """The rules that tie keys together, checked on the raw document."""
    out: list[tuple[tuple[Any, ...], str]] = []
    if not isinstance(raw, dict):
        return out
    limits = raw.get("limits")
    if isinstance(limits, dict) and "flops" in limits and "macs" in limits:
        out.append((("limits", "flops"), "is the old name of macs, which is given too; keep "
                    f"macs, got {shown(limits['flops'])}"))
    objectives = raw.get("objectives")
    if isinstance(objectives, list):
        seen: set[str] = set()
        for i, name in enumerate(objectives):
            if isinstance(name, str) and name in OBJECTIVE_NAMES:
                measure = ALIASES.get(name, name)
                if measure in seen:
                    out.append((("objectives", i), f"is listed twice, got {shown(name)}"))
                seen.add(measure)
    latency = raw.get("latency")
    if isinstance(latency, dict):
        out += _latency_problems(latency)
    runtime = raw.get("runtime")
    if isinstance(runtime, dict):
        out += _runtime_problems(runtime, latency if isinstance(latency, dict) else {})
    return out


def _runtime_problems(raw: dict[Any, Any], latency: dict[Any, Any],
                      ) -> list[tuple[tuple[Any, ...], str]]:
    name = raw.get("name", "onnxruntime")
    if not isinstance(name, str) or name not in RUNTIME_NAMES:
        return []  # reported on its own
    out = []
    if "int8_io" in raw and name == "onnxruntime":
        out.append((("runtime", "int8_io"), "applies to runtime litert and litert-micro only, "
                    f"got {shown(raw['int8_io'])}"))
    source = latency.get("source", "host")
    if name == "litert-micro" and source == "profile":
        out.append((("latency", "source"), "a profile is made on a board that runs Python; "
                    "runtime litert-micro is timed on this host (host) or over ssh (ssh), got "
                    f"{shown(source)}"))
    return out


def _latency_problems(raw: dict[Any, Any]) -> list[tuple[tuple[Any, ...], str]]:
    source = raw.get("source", "host")
    if not isinstance(source, str) or source not in LATENCY_SOURCES:
        return []  # reported on its own
    out = []
    needed = {"profile": "profile", "ssh": "host"}.get(source)
    if needed and needed not in raw:
        what = "a profile JSON file" if needed == "profile" else "a user@address"
        out.append((("latency", needed), f"is required when latency.source is {source} "
                    f"({what}), got None"))
    for key in ("profile", "host", "port", "identity", "known_hosts", "python"):
        if key in raw and key != needed and (source != "ssh" or key == "profile"):
            out.append((("latency", key), f"does not apply to latency.source {source}, got "
                        f"{shown(raw[key])}"))
    return out


def validate(raw: Any) -> tuple[BudgetSpec | None, list[tuple[tuple[Any, ...], str]]]:
    """The document as a ``BudgetSpec``, or None and every problem found in it."""
    found: list[tuple[tuple[Any, ...], str]] = []
    spec = None
    try:
        spec = BudgetSpec.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        found = problems(exc, raw)
    raw_dict = {} if raw is None else raw
    found += [p for p in cross_problems(raw_dict) if p[0] not in {q[0] for q in found}]
    found.sort(key=lambda p: _place(raw_dict, p[0]))
    return (spec if not found else None), found



def _place(raw: Any, loc: tuple[Any, ...]) -> tuple[int, ...]:
    """Where a key path is in the file, so that problems are listed top to bottom: each part's
    position among its siblings (a missing key goes after those present)."""
    out = []
    for part in loc:
        if isinstance(raw, dict):
            keys = list(raw)
            out.append(keys.index(part) if part in keys else len(keys))
            raw = raw.get(part)
        elif isinstance(raw, list) and isinstance(part, int):
            out.append(part)
            raw = raw[part] if part < len(raw) else None
        else:
            out.append(0)
    return tuple(out)


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
