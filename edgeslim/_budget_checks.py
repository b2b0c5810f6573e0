"""The checks of single values in a budget file, each raising pydantic's custom error with
the rule it breaks (``must be > 0 ms``); ``edgeslim._budget_schema`` adds the key path and the
value to make the line a user reads."""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from typing import Any

from pydantic_core import PydanticCustomError

from edgeslim.units import UNITS, Kind, parse_quantity


def fail(rule: str) -> PydanticCustomError:
    """A broken rule; the value is appended to the message (``, got '0ms'``)."""
    return PydanticCustomError("budget", "{rule}", {"rule": rule})


def said(message: str) -> PydanticCustomError:
    """A broken rule whose message already quotes the value."""
    return PydanticCustomError("budget_said", "{rule}", {"rule": message})


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _quantity(value: Any, kind: Kind) -> tuple[float, bool]:
    try:
        amount, relative = parse_quantity(value, kind)
    except ValueError as exc:
        raise said(str(exc)) from None
    except OverflowError:
        raise fail("must be a finite number") from None
    if not _finite(amount):
        raise fail("must be a finite number")
    return amount, relative


def limit(kind: Kind):
    unit = {"count": "", "bytes": " bytes", "ms": " ms"}[kind]

    def check(value: Any) -> tuple[float, bool]:
        if isinstance(value, bool):  # YAML reads an unquoted yes/no/on/off as true/false
            units = ", ".join([*(u for u in UNITS[kind] if u), "%"])
            raise fail(f"expected a number with a unit ({units}; "
                       "YAML reads yes, no, on and off as true and false)")
        amount, relative = _quantity(value, kind)
        if amount <= 0:
            raise fail(f"must be > 0{unit}")
        if relative and amount > 1:
            raise fail("a relative limit must be at most 100% of the base")
        return amount, relative

    return check


def accuracy_points(value: Any) -> float:
    rule = "must be percentage points of accuracy, like 2% or 2pp"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise fail(rule)
    text = value.strip() if isinstance(value, str) else None
    if text is not None:
        for suffix in ("pp", "%"):
            if text.endswith(suffix):
                text = text[: -len(suffix)]
                break
        else:
            raise fail(rule)
    try:
        points = float(value if text is None else text)
    except ValueError:
        raise fail(rule) from None
    except OverflowError:  # an integer too large for a float: out of range below
        points = math.inf
    if not 0 <= points < 100:
        raise fail("must be >= 0 and < 100 percentage points")
    return points


def size(value: Any) -> int:
    amount, relative = _quantity(value, "bytes")
    if relative or amount < 1:  # int() of a fraction of a byte would be 0
        raise fail("must be an absolute size > 0 bytes (e.g. 4GB)")
    return int(amount)


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("must be a string")
    return value


def non_empty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail("must be a non-empty string")
    return value


# A budget file is data that people share: what reaches ssh's command line must not read as
# an option (``-oProxyCommand=...`` runs a command) or hold control characters.
_USER = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def ssh_host(value: Any) -> str:
    non_empty(value)
    text = value.strip()
    rule = ("must be user@name, a host name or an IP address (letters, digits, '.', '-' and "
            "'_'; not starting with '-')")
    user, at, host = text.rpartition("@")
    if at and not re.fullmatch(_USER, user):
        raise fail(rule)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            raise fail(rule) from None
    return text


def argument(value: Any) -> str:
    """One argument of a command line: no leading '-', no control characters."""
    text = non_empty(value)
    if text.startswith("-") or not text.isprintable():
        raise fail("must be a path or command name (not starting with '-', no control "
                   "characters)")
    return text


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail("must be true or false")
    return value


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail("must be an integer >= 1")
    return value


def port(value: Any) -> int:
    positive_int(value)
    if value > 65535:
        raise fail("must be a TCP port (1 to 65535)")
    return value


def spread(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise fail("must be a number > 0")
    if not _finite(value):
        raise fail("must be a finite number")
    return float(value)


def nearest(word: Any, names: list[str] | tuple[str, ...]) -> str:
    """``did you mean NAME? `` for a misspelt name, or nothing."""
    near = difflib.get_close_matches(word, names, n=1, cutoff=0.6) \
        if isinstance(word, str) else []
    return f"did you mean {near[0]}? " if near else ""


def one_of(names: tuple[str, ...], note: str = "", aliases: tuple[str, ...] = ()):
    """A check that the value is one of ``names`` (or an accepted old name, not listed)."""
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in names + aliases:
            said = (nearest(value, names) + note).strip()
            raise fail(f"must be one of {', '.join(names)}" + (f" ({said})" if said else ""))
        return value

    return check


def section(value: Any) -> Any:
    """An optional section left empty (``limits:`` with nothing under it) is an empty one."""
    return {} if value is None else value


def device(value: Any) -> Any:
    """``device: Raspberry Pi 4`` is short for ``device: {name: Raspberry Pi 4}``."""
    if value is None:
        raise said("missing section (the target device's name at least)")
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict):
        raise fail("must be the device's name or a mapping (name, cpu, cores, memory, notes)")
    return value
