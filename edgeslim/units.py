"""Quantities with units, as written in budget files: ``1.2M``, ``8MB``, ``5ms``, ``50%``.

Counts (parameters, MACs) take decimal suffixes K, M, G (10^3, 10^6, 10^9). Sizes take bytes
with decimal (KB, MB, GB = 10^3, 10^6, 10^9) or binary (KiB, MiB, GiB = 2^10, 2^20, 2^30)
suffixes, or a bare B. Times take us, ms or s and are returned in milliseconds.
"""

from __future__ import annotations

import re
from typing import Literal

Kind = Literal["count", "bytes", "ms"]

_NUMBER = r"(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE](?P<exp>[+-]?[0-9]+))?"
_PATTERN = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[A-Za-z%]*)\s*$")

UNITS: dict[Kind, dict[str, float]] = {
    "count": {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9},
    "bytes": {
        "B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9,
        "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30,
    },
    "ms": {"us": 1e-3, "ms": 1.0, "s": 1e3},
}


def parse_quantity(text: str | int | float, kind: Kind) -> tuple[float, bool]:
    """Parses one limit value.

    Returns:
        ``(value, relative)``. With ``relative`` true, ``value`` is a fraction of the base
        model's measure (``"50%"`` -> ``(0.5, True)``); otherwise it is an absolute amount in the
        kind's base unit (a count, bytes, or milliseconds).

    Raises:
        ValueError: with a message naming the accepted units.

    Example:
        >>> parse_quantity("1.2M", "count")
        (1200000.0, False)
        >>> parse_quantity("8MiB", "bytes")
        (8388608.0, False)
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a number with a unit, got {text!r}")
    if isinstance(text, (int, float)):
        if kind != "count":
            raise ValueError(f"needs a unit ({_accepted(kind)}), got {text!r}")
        return float(text), False
    match = _PATTERN.match(str(text))
    if match is None:
        raise ValueError(f"expected a number with a unit ({_accepted(kind)}), got {text!r}")
    value = float(match["num"]) * (10.0 ** int(match["exp"] or 0))
    unit = match["unit"]
    if unit == "%":
        return value / 100.0, True
    table = UNITS[kind]
    if unit not in table:
        if kind != "count" and unit == "":
            raise ValueError(f"needs a unit ({_accepted(kind)}), got {text!r}")
        raise ValueError(f"unknown unit {unit!r} (accepted: {_accepted(kind)}), got {text!r}")
    return value * table[unit], False


def _accepted(kind: Kind) -> str:
    units = [u for u in UNITS[kind] if u] + ["%"]
    return ", ".join(units)
