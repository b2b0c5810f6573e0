"""Budget files as YAML: PyYAML's safe loader made stricter, and its errors on one line."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from edgeslim.errors import BudgetError


def read_yaml(path: Path) -> tuple[Any, list[str]]:
    """The document in ``path``, read with ``_BudgetLoader`` (plain YAML only), and the keys
    given twice in it (``not valid YAML at line 4: key 'x' is given twice``), reported with the
    file's other mistakes.

    Raises:
        BudgetError: one line naming the file, the line and the problem, for a file that is not
            YAML at all.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BudgetError(f"{path}: cannot read budget file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise BudgetError(f"{path}: not a UTF-8 text file (byte {exc.start} is "
                          f"{exc.object[exc.start]:#04x}); a budget is a YAML file") from None
    loader = None
    try:
        loader = _BudgetLoader(text)  # a SafeLoader: builds no Python objects
        raw = loader.get_single_data()
    except ConstructorError as exc:
        # Refused tags, duplicate keys and malformed scalars: say which, and where.
        line = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        raise BudgetError(f"{path}: not valid YAML{line}: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, ...)
        line = text.count("\n", 0, exc.position) + 1
        raise BudgetError(f"{path}: not valid YAML at line {line}: character "
                          f"U+{int(exc.character):04X} is not allowed") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise BudgetError(f"{path}: not valid YAML{where}" + (f": {problem}" if problem else "")
                          ) from None
    except RecursionError:
        raise BudgetError(f"{path}: not valid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    return raw, loader.repeated


class _BudgetLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a repeated key is an error (YAML would keep the last
    one silently), and a scalar that does not convert (``2024-13-01``, ``!!float x``, an
    integer of thousands of digits) is reported with its line instead of escaping as a
    ``ValueError``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: list[str] = []

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:
            what = shown(node.value) if isinstance(node, yaml.ScalarNode) else node.tag
            raise ConstructorError(None, None, f"cannot read {what} ({first_line(exc)})",
                                   node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # complex keys are refused by the base class; merges may override
            key = self.construct_object(key_node)
            if key in seen:
                self.repeated.append(f"not valid YAML at line {key_node.start_mark.line + 1}: "
                                     f"key {shown(key)} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_undefined(self, node: yaml.Node) -> Any:
        raise ConstructorError(None, None, f"tag {node.tag!r} is not allowed (a budget holds "
                               "plain mappings, lists, strings and numbers)", node.start_mark)


_BudgetLoader.add_constructor(None, _BudgetLoader.construct_undefined)


# Values and keys quoted in messages are cut short: a message stays one readable line even for
# a huge or deeply nested value (YAML aliases can make one exponentially large).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 80, 80, 40
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 6


# However nested, a value quoted in a message is cut at this many characters: an alias bomb's
# value is thousands of characters even with the limits above.
SHOWN_CHARS = 120


def shown(value: Any) -> str:
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer past Python's 4300-digit limit on str()
        return f"<a {type(value).__name__} too long to show>"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__
