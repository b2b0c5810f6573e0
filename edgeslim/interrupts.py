"""Ctrl+C and a job scheduler's SIGTERM stop a run the same way: as a ``KeyboardInterrupt``
that names the signal. The search records the trial it stops as interrupted and queues it to
run again (``edgeslim.search.workers``); the command prints one line and exits with 128 plus
the signal's number, as a shell does.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

_NAMES = {signal.SIGINT: "Ctrl+C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(describe(signum))
        self.signum = signum


def describe(signum: int) -> str:
    """``Ctrl+C (SIGINT)``, ``SIGTERM``."""
    return _NAMES.get(signum, signal.Signals(signum).name)


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 plus the signal's number (130 for Ctrl+C, 143 for SIGTERM)."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


def interruption(exc: KeyboardInterrupt) -> str:
    """What stopped the run, for a trial's ``fail_reason``."""
    return str(exc) if isinstance(exc, Interrupted) else describe(signal.SIGINT)


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def stop_on_signals() -> dict[int, Any]:
    """Makes SIGINT and SIGTERM raise ``Interrupted`` in this process (its main thread);
    returns the handlers they had, for ``restore_signals``."""
    return {signum: signal.signal(signum, _raise) for signum in _NAMES}


def restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
