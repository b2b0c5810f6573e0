"""Where a run's time goes: a stopwatch per kind of work, printed as one line when a search ends.

Work is timed where it happens (``timed`` on the training loop, the measures, the screening
loop, the sampler's calls), into one process-wide ``Stopwatch``. Time counts to the innermost
kind running, so the kinds add up to no more than the wall time and ``other`` is the rest
(exporting, quantizing, k-means, storage, reports); but what screening measures (the pruned
structures' MACs) is screening's cost, while its sampler calls count as sampling.

Example:
    >>> STOPWATCH.reset()
    >>> with STOPWATCH("measuring"):
    ...     pass
    >>> STOPWATCH.seconds["measuring"] >= 0.0
    True
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, ParamSpec, TypeVar

Kind = Literal["training", "screening", "measuring", "sampling"]
KINDS: tuple[Kind, ...] = ("training", "screening", "measuring", "sampling")
# Work of an inner kind that counts to the outer one while the outer one runs: the training
# steps the plan times to estimate a trial's fine-tune count as measuring.
ABSORBS: dict[str, frozenset[str]] = {"screening": frozenset({"measuring", "training"}),
                                      "measuring": frozenset({"training"})}

P = ParamSpec("P")
R = TypeVar("R")


class Stopwatch:
    """Seconds spent per kind of work since ``reset`` (see the module docstring)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = dict.fromkeys(KINDS, 0.0)
        self._stack: list[tuple[str, float]] = []  # (kind, time it last resumed)

    @contextmanager
    def __call__(self, kind: Kind) -> Iterator[None]:
        if kind not in self.seconds:
            raise KeyError(f"unknown kind of work {kind!r}; valid: {', '.join(KINDS)}")
        if self._stack and kind in ABSORBS.get(self._stack[-1][0], ()):
            yield  # counted to the outer kind
            return
        now = time.perf_counter()
        if self._stack:  # the outer kind pauses while this one runs
            outer, since = self._stack[-1]
            self.seconds[outer] += now - since
        self._stack.append((kind, now))
        try:
            yield
        finally:
            now = time.perf_counter()
            inner, since = self._stack.pop()
            self.seconds[inner] += now - since
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], now)

    def breakdown(self) -> str:
        """One line: the wall time since ``reset`` and each kind's share of it, ``other``
        last (``time: 84 s = training 40 s (48%), screening 12 s (14%), ...``)."""
        wall = max(time.perf_counter() - self.started, 1e-9)
        parts = dict(self.seconds)
        parts["other"] = max(0.0, wall - sum(parts.values()))
        return f"time: {wall:.0f} s = " + ", ".join(
            f"{kind} {s:.0f} s ({100 * s / wall:.0f}%)" for kind, s in parts.items())


STOPWATCH = Stopwatch()


def timed(kind: Kind) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator that counts a function's time to ``kind`` (``with STOPWATCH(kind):`` does the
    same for a block)."""
    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with STOPWATCH(kind):
                return fn(*args, **kwargs)

        return inner

    return wrap
