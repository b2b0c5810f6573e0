"""The exceptions a user can cause. The CLI prints their message on one line and exits 2."""

from __future__ import annotations


class EdgeslimError(Exception):
    """Base class of every error caused by input the user can fix (files, flags, names)."""


class BudgetError(EdgeslimError):
    """A budget file is malformed: unknown key, bad unit or impossible value. ``lines`` holds
    one line per problem (the message is them, joined), so that every mistake in a file is
    reported at once."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = list(lines) if lines else [message]


class ConfigError(EdgeslimError):
    """A command-line option or a combination of options is invalid."""


class ModelError(EdgeslimError):
    """A model specification cannot be resolved, built or matched to its checkpoint."""


class DataError(EdgeslimError):
    """A dataset name is unknown, or its files are missing or malformed."""


class StudyError(EdgeslimError):
    """A study, trial or storage named by the user does not exist or cannot be opened."""


class CandidateError(Exception):
    """A sampled candidate cannot be built, trained or exported.

    Not a user error: the search records the trial as failed with this message and goes on.
    """


class DeviceError(CandidateError):
    """The device that measures a candidate failed (unreachable, busy, its runtime refused to
    run), not the candidate: a check before training must not take it as "does not fit" and
    move on to another candidate. The trial fails with this message and the search goes on."""
