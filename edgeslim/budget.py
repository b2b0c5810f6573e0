"""The budget: what an edge device can afford, parsed once from a YAML file into frozen objects.

A budget file has five sections::

    device:      what the target is (free text plus cores and memory, for the card)
    runtime:     the runtime the artifact is deployed in, and the threads latency is timed with
    latency:     where latency is measured: host (default), profile (a device's latency table)
                 or ssh (timed on the device itself); optional
    limits:      params, flops, peak_memory, activation_memory, size, latency, accuracy_drop
                 (each optional)
    objectives:  the measures traded off against accuracy on the Pareto front

Each limit is absolute with a unit (``1.2M``, ``40M``, ``8MB``, ``5ms``) or relative to the
uncompressed base model (``50%`` = half the base's value). ``accuracy_drop`` is in percentage
points of validation accuracy below the base (``2%`` or ``2pp``: base 90.0% allows 88.0%).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from edgeslim._yaml import read_yaml, shown
from edgeslim.errors import BudgetError
from edgeslim.units import Kind, parse_quantity

RuntimeName = Literal["onnxruntime"]
LatencySourceName = Literal["host", "profile", "ssh"]

# YAML key of a limit -> (measure name used everywhere else, kind of quantity).
# The measure names are the trial user-attribute keys, card keys and table columns.
LIMIT_KEYS: dict[str, tuple[str, Kind]] = {
    "params": ("params", "count"),
    "flops": ("macs", "count"),
    "peak_memory": ("peak_memory_bytes", "bytes"),
    "activation_memory": ("activation_bytes", "bytes"),
    "size": ("size_bytes", "bytes"),
    "latency": ("latency_ms", "ms"),
}
ACCURACY_DROP_KEY = "accuracy_drop"
# Measures a budget can put on the Pareto front next to accuracy (YAML key -> measure name).
OBJECTIVE_KEYS: dict[str, str] = {key: measure for key, (measure, _) in LIMIT_KEYS.items()}

_SECTIONS = {"device", "runtime", "latency", "limits", "objectives"}
_DEVICE_KEYS = {"name", "cpu", "cores", "memory", "notes"}
_RUNTIME_KEYS = {"name", "threads"}
_LATENCY_KEYS = {"source", "profile", "host", "port", "identity", "known_hosts", "python",
                 "max_spread"}


@dataclass(frozen=True)
class Device:
    """The target device as the budget describes it (informational, copied to the card)."""

    name: str
    cpu: str = ""
    cores: int | None = None  # physical cores of the device
    memory_bytes: int | None = None  # RAM of the device
    notes: str = ""


@dataclass(frozen=True)
class Runtime:
    """The runtime the deployed artifact runs in, and the settings latency is timed with."""

    name: RuntimeName = "onnxruntime"
    threads: int = 1  # intra-op threads at inference, batch 1


@dataclass(frozen=True)
class LatencySource:
    """Where a candidate's latency comes from.

    ``host``: its artifact timed in the runtime on the machine running the search.
    ``profile``: predicted from a latency table made on the device (``optimize profile``).
    ``ssh``: its artifact copied to the device and timed there by the same code.
    """

    source: LatencySourceName = "host"
    profile: str | None = None  # profile JSON file (source: profile), relative to the budget
    host: str | None = None  # user@address of the device (source: ssh)
    port: int = 22
    identity: str | None = None  # private key file; default: ssh's own configuration
    known_hosts: str | None = None  # known_hosts file; default: ssh's own
    python: str = "python3"  # interpreter on the device that has edgeslim installed
    # A timing whose (p90 - p10) / median exceeds this is redone once, then flagged unstable.
    max_spread: float = 0.25


@dataclass(frozen=True)
class Limit:
    """One cap on a measure. ``value`` is absolute in the measure's unit, or a fraction of the
    base model's value when ``relative``; ``resolve`` turns it into an absolute cap."""

    measure: str
    value: float
    relative: bool = False

    def resolve(self, base_value: float) -> float:
        return self.value * base_value if self.relative else self.value

    def describe(self) -> str:
        return f"{self.value:.0%} of base" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class Budget:
    """A device budget. Build it with :func:`load_budget`; every field is validated."""

    name: str
    device: Device
    runtime: Runtime = field(default_factory=Runtime)
    latency: LatencySource = field(default_factory=LatencySource)
    limits: tuple[Limit, ...] = ()
    # Maximum accuracy loss against the base, in percentage points; None = unconstrained.
    accuracy_drop_points: float | None = None
    objectives: tuple[str, ...] = ()  # measure names minimised next to maximising accuracy
    source: str = ""  # the file it came from, for messages and the card

    def limit(self, measure: str) -> Limit | None:
        return next((lim for lim in self.limits if lim.measure == measure), None)

    def asks_for(self, measure: str) -> bool:
        """Whether the search needs ``measure`` of every candidate: the budget limits it or
        trades it off. Others are measured once, for the card, at export."""
        return self.limit(measure) is not None or measure in self.objectives

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary, stored on the study and in model cards."""
        return {
            "name": self.name,
            "source": self.source,
            "device": vars(self.device),
            "runtime": vars(self.runtime),
            "latency": vars(self.latency),
            "limits": {lim.measure: {"value": lim.value, "relative": lim.relative}
                       for lim in self.limits},
            "accuracy_drop_points": self.accuracy_drop_points,
            "objectives": list(self.objectives),
        }


def load_budget(path: str | os.PathLike[str]) -> Budget:
    """Reads and validates a budget file (YAML, safe loader: no tags that build Python objects,
    no duplicate keys).

    Raises:
        BudgetError: one line naming the file, the key path, the rule and the value.
    """
    path = Path(path)
    raw = read_yaml(path)
    return parse_budget(raw, source=str(path), name=path.stem)


def _key_text(key: Any) -> str:
    """A key as it appears in a key path: itself when it is a short printable string."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 80:
        return key
    return shown(key)


def parse_budget(raw: Any, source: str = "<budget>", name: str = "budget") -> Budget:
    """Validates an already-loaded mapping; see :func:`load_budget`."""

    def fail(key: str, rule: str, value: Any) -> BudgetError:
        return BudgetError(f"{source}: {key}: {rule}, got {shown(value)}")

    def bad(key: str, message: str) -> BudgetError:
        return BudgetError(f"{source}: {key}: {message}")

    def mapping(value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise fail(key or "(top level)", "must be a mapping", value)
        for k in value:
            if k not in allowed:
                path = f"{key}.{_key_text(k)}" if key else _key_text(k)
                raise fail(path, f"unknown key (allowed: {', '.join(sorted(allowed))})",
                           value[k])
        return value

    def section(key: str, allowed: set[str]) -> dict[str, Any]:
        """An optional section: absent or empty (``limits:`` with nothing under it) is {}."""
        value = raw.get(key)
        return {} if value is None else mapping(value, key, allowed)

    raw = mapping(raw, "", _SECTIONS) if raw is not None else {}
    if "device" not in raw:
        raise BudgetError(f"{source}: device: missing section (the target device's name at least)")
    dev = mapping(raw["device"], "device", _DEVICE_KEYS)
    if not isinstance(dev.get("name"), str) or not dev["name"].strip():
        raise fail("device.name", "must be a non-empty string", dev.get("name"))
    device = Device(
        name=dev["name"],
        cpu=_string(dev.get("cpu", ""), "device.cpu", fail),
        cores=_positive_int(dev.get("cores"), "device.cores", fail),
        memory_bytes=_bytes_or_none(dev.get("memory"), "device.memory", fail, bad),
        notes=_string(dev.get("notes", ""), "device.notes", fail),
    )

    rt = section("runtime", _RUNTIME_KEYS)
    runtime_name = rt.get("name", "onnxruntime")
    if not isinstance(runtime_name, str) or runtime_name not in get_args(RuntimeName):
        raise fail("runtime.name", f"must be one of {', '.join(get_args(RuntimeName))}",
                   runtime_name)
    threads = _positive_int(rt.get("threads", 1), "runtime.threads", fail)
    runtime = Runtime(name=runtime_name, threads=threads or 1)

    latency = _latency_source(section("latency", _LATENCY_KEYS), Path(source).parent, fail)

    lim = section("limits", set(LIMIT_KEYS) | {ACCURACY_DROP_KEY})
    limits = []
    for key, (measure, kind) in LIMIT_KEYS.items():
        if key not in lim:
            continue
        value, relative = _quantity(lim[key], kind, f"limits.{key}", fail, bad)
        unit = {"count": "", "bytes": " bytes", "ms": " ms"}[kind]
        if value <= 0:
            raise fail(f"limits.{key}", f"must be > 0{unit}", lim[key])
        if relative and value > 1:
            raise fail(f"limits.{key}", "a relative limit must be at most 100% of the base",
                       lim[key])
        limits.append(Limit(measure=measure, value=value, relative=relative))
    drop = None
    if ACCURACY_DROP_KEY in lim:
        drop = _accuracy_points(lim[ACCURACY_DROP_KEY], f"limits.{ACCURACY_DROP_KEY}", fail)

    objectives_raw = raw.get("objectives", [])
    if not isinstance(objectives_raw, list):
        raise fail("objectives", "must be a list of measure names", objectives_raw)
    objectives: list[str] = []
    for i, key in enumerate(objectives_raw):
        if not isinstance(key, str) or key not in OBJECTIVE_KEYS:
            raise fail(f"objectives[{i}]", "must be one of "
                       f"{', '.join(OBJECTIVE_KEYS)} (accuracy is always an objective)", key)
        if OBJECTIVE_KEYS[key] in objectives:
            raise fail(f"objectives[{i}]", "is listed twice", key)
        objectives.append(OBJECTIVE_KEYS[key])
    return Budget(name=name, device=device, runtime=runtime, latency=latency,
                  limits=tuple(limits),
                  accuracy_drop_points=drop, objectives=tuple(objectives), source=source)


def _latency_source(raw: dict[str, Any], folder: Path, fail: Any) -> LatencySource:
    source = raw.get("source", "host")
    if not isinstance(source, str) or source not in get_args(LatencySourceName):
        raise fail("latency.source", f"must be one of {', '.join(get_args(LatencySourceName))}",
                   source)
    needed = {"profile": "profile", "ssh": "host"}.get(source)
    if needed and not (isinstance(raw.get(needed), str) and raw[needed].strip()):
        raise fail(f"latency.{needed}", f"is required when latency.source is {source} "
                   f"(a {'profile JSON file' if needed == 'profile' else 'user@address'})",
                   raw.get(needed))
    stray = sorted(k for k in ("profile", "host", "port", "identity", "known_hosts", "python")
                   if k in raw and k != needed and (source != "ssh" or k == "profile"))
    if stray:
        raise fail(f"latency.{stray[0]}", f"does not apply to latency.source {source}",
                   raw[stray[0]])

    def path(key: str) -> str | None:
        if key not in raw:
            return None
        text = os.path.expanduser(_string(raw[key], f"latency.{key}", fail, non_empty=True))
        if key != "profile":  # handed to ssh: it must not read as one of its options
            text = _argument(text, f"latency.{key}", fail)
        return str(folder / text) if key == "profile" and not os.path.isabs(text) else text

    spread = raw.get("max_spread", 0.25)
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or spread <= 0:
        raise fail("latency.max_spread", "must be a number > 0", spread)
    if not _finite(spread):
        raise fail("latency.max_spread", "must be a finite number", spread)
    port = _positive_int(raw.get("port", 22), "latency.port", fail) or 22
    if port > 65535:
        raise fail("latency.port", "must be a TCP port (1 to 65535)", port)
    return LatencySource(
        source=source, profile=path("profile"),
        host=_ssh_host(raw["host"], fail) if "host" in raw else None,
        port=port, identity=path("identity"), known_hosts=path("known_hosts"),
        python=_argument(_string(raw.get("python", "python3"), "latency.python", fail,
                                 non_empty=True), "latency.python", fail),
        max_spread=float(spread))


# A budget file is data that people share: what reaches ssh's command line must not read as
# an option (``-oProxyCommand=...`` runs a command) or hold control characters.
_USER = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _ssh_host(value: Any, fail: Any) -> str:
    text = value.strip() if isinstance(value, str) else value
    rule = ("must be user@name, a host name or an IP address (letters, digits, '.', '-' and "
            "'_'; not starting with '-')")
    if not isinstance(text, str):
        raise fail("latency.host", rule, value)
    user, at, host = text.rpartition("@")
    if at and not re.fullmatch(_USER, user):
        raise fail("latency.host", rule, value)
    try:
        ipaddress.ip_address(host)
        return text
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            raise fail("latency.host", rule, value) from None
    return text


def _argument(text: str, key: str, fail: Any) -> str:
    """``text`` as one argument of a command line: no leading '-', no control characters."""
    if text.startswith("-") or not text.isprintable():
        raise fail(key, "must be a path or command name (not starting with '-', no control "
                   "characters)", text)
    return text


def _string(value: Any, key: str, fail: Any, non_empty: bool = False) -> str:
    if not isinstance(value, str) or (non_empty and not value.strip()):
        raise fail(key, "must be a non-empty string" if non_empty else "must be a string", value)
    return value


def _positive_int(value: Any, key: str, fail: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(key, "must be an integer >= 1", value)
    return value


def _bytes_or_none(value: Any, key: str, fail: Any, bad: Any) -> int | None:
    if value is None:
        return None
    amount, relative = _quantity(value, "bytes", key, fail, bad)
    if relative or amount < 1:  # int() of a fraction of a byte would be 0
        raise fail(key, "must be an absolute size > 0 bytes (e.g. 4GB)", value)
    return int(amount)


def _quantity(value: Any, kind: Kind, key: str, fail: Any, bad: Any) -> tuple[float, bool]:
    """``parse_quantity`` with every way it can fail reported on the key: a bad unit, a number
    too large for a float (``1e999``), or one that is not finite (``.nan``, ``.inf``)."""
    try:
        amount, relative = parse_quantity(value, kind)
    except ValueError as exc:
        raise bad(key, str(exc)) from None
    except OverflowError:
        raise fail(key, "must be a finite number", value) from None
    if not _finite(amount):
        raise fail(key, "must be a finite number", value)
    return amount, relative


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _accuracy_points(value: Any, key: str, fail: Any) -> float:
    rule = "must be percentage points of accuracy, like 2% or 2pp"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise fail(key, rule, value)
    text = value.strip() if isinstance(value, str) else None
    if text is not None:
        for suffix in ("pp", "%"):
            if text.endswith(suffix):
                text = text[: -len(suffix)]
                break
        else:
            raise fail(key, rule, value)
    try:
        points = float(value if text is None else text)
    except ValueError:
        raise fail(key, rule, value) from None
    except OverflowError:  # an integer too large for a float: out of range below
        points = math.inf
    if not 0 <= points < 100:
        raise fail(key, "must be >= 0 and < 100 percentage points", value)
    return points
