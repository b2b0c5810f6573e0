"""A budget document checked against its format (``edgeslim._budget_schema``), every mistake
as one line that names the key path, the rule and the value:
``limits.latency: must be > 0 ms, got '0ms'``. Rules that tie one key to another (what a latency
source needs, a measure given twice) are checked on the raw document by ``cross_problems``, so
that they are reported even when other keys are wrong."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from edgeslim import _budget_checks as check
from edgeslim._budget_schema import (
    ALIASES,
    LATENCY_SOURCES,
    OBJECTIVE_NAMES,
    RUNTIME_NAMES,
    SECTIONS,
    BudgetSpec,
)
from edgeslim._yaml import shown


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
