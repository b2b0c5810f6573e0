"""The budget: what an edge device can afford, parsed once from a YAML file into frozen objects.

A budget file has five sections (the format, as a JSON Schema: ``budgets/budget.schema.json``)::

    device:      what the target is (free text plus cores and memory, for the card), or just
                 its name
    runtime:     the runtime the artifact is deployed in, and the threads latency is timed with
    latency:     where latency is measured: host (default), profile (a device's latency table)
                 or ssh (timed on the device itself); optional
    limits:      params, macs, peak_memory, activation_memory, size, latency, accuracy_drop
                 (each optional; ``flops`` is read as ``macs``, with a note)
    objectives:  the measures traded off against accuracy on the Pareto front

Each limit is absolute with a unit (``1.2M``, ``40M``, ``8MB``, ``5ms``) or relative to the
uncompressed base model (``50%`` = half the base's value). ``accuracy_drop`` is in percentage
points of validation accuracy below the base (``2%`` or ``2pp``: base 90.0% allows 88.0%).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeslim._budget_schema import (
    ACCURACY_DROP_KEY,
    ALIASES,
    FLOPS_NOTE,
    LIMIT_KEYS,
    BudgetSpec,
    LatencySourceName,
    RuntimeName,
)
from edgeslim._budget_validate import key_path, validate
from edgeslim._yaml import read_yaml
from edgeslim.errors import BudgetError

# Measures a budget can put on the Pareto front next to accuracy (YAML key -> measure name).
OBJECTIVE_KEYS: dict[str, str] = {key: measure for key, (measure, _) in LIMIT_KEYS.items()}

__all__ = ["ACCURACY_DROP_KEY", "LIMIT_KEYS", "OBJECTIVE_KEYS", "Budget", "Device", "Limit",
           "LatencySourceName", "RuntimeName",
           "LatencySource", "Runtime", "load_budget", "parse_budget"]


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
    # litert, litert-micro: a full-integer int8 file takes and returns int8 tensors.
    int8_io: bool = False


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
    # What the reader should know about how the file was read (an alias used); not stored.
    notes: tuple[str, ...] = field(default=(), compare=False)

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
        BudgetError: one line per problem in the file, each naming the file, the key path, the
            rule and the value.
    """
    path = Path(path)
    raw, duplicates = read_yaml(path)
    return parse_budget(raw, source=str(path), name=path.stem, found=duplicates)


def parse_budget(raw: Any, source: str = "<budget>", name: str = "budget",
                 found: list[str] | None = None) -> Budget:
    """Validates an already-loaded document; see :func:`load_budget`. ``found`` holds problems
    the YAML reader already found (repeated keys), reported with the others."""
    spec, problems = validate(raw)
    lines = [f"{source}: {p}" for p in found or ()]
    lines += [f"{source}: {key_path(loc)}: {rule}" for loc, rule in problems]
    if lines or spec is None:
        raise BudgetError("\n".join(lines), lines)
    return _budget(spec, raw, source, name)


def _budget(spec: BudgetSpec, raw: dict[str, Any], source: str, name: str) -> Budget:
    dev, rt, lat = spec.device, spec.runtime, spec.latency
    folder = Path(source).parent

    def path(value: str | None, relative_to_budget: bool = False) -> str | None:
        if value is None:
            return None
        text = os.path.expanduser(value)
        return str(folder / text) if relative_to_budget and not os.path.isabs(text) else text

    limits, notes = [], []
    given = raw.get("limits") or {}
    for key, (measure, _) in LIMIT_KEYS.items():
        value = getattr(spec.limits, key)
        alias = next((a for a, k in ALIASES.items() if k == key and a in given), None)
        if alias is not None:
            value = getattr(spec.limits, alias)
            notes.append(f"{source}: limits.{alias}: {FLOPS_NOTE}")
        if value is not None:
            limits.append(Limit(measure=measure, value=value[0], relative=value[1]))
    objectives = []
    for objective in spec.objectives:
        key = ALIASES.get(objective, objective)
        if key != objective:
            notes.append(f"{source}: objectives: {objective}: {FLOPS_NOTE}")
        objectives.append(LIMIT_KEYS[key][0])
    return Budget(
        name=name,
        device=Device(name=dev.name, cpu=dev.cpu, cores=dev.cores, memory_bytes=dev.memory,
                      notes=dev.notes),
        runtime=Runtime(name=rt.name, threads=rt.threads, int8_io=rt.int8_io),
        latency=LatencySource(source=lat.source, profile=path(lat.profile, True),
                              host=lat.host, port=lat.port, identity=path(lat.identity),
                              known_hosts=path(lat.known_hosts), python=lat.python,
                              max_spread=lat.max_spread),
        limits=tuple(limits), accuracy_drop_points=spec.limits.accuracy_drop,
        objectives=tuple(objectives), source=source, notes=tuple(notes))
