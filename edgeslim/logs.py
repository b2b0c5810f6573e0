"""The libraries' warnings and log records go to a log file in the work directory, never over
the progress bars: Python warnings (PyTorch's, torch-pruning's), Optuna's trial log (with the
traceback of each failed trial), onnxruntime's quantizer (``WARNING:root:Axis 1 is
out-of-range ...``) and what PyTorch's C++ code prints while exporting (``captured_stderr``).
The terminal shows what the user must act on; ``--debug`` leaves everything on it.

Records are held in memory until ``attach`` names the file (once the command's input has been
checked), so a refused command still writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

LOG_NAME = "optimize.log"
_HELD = 10_000  # records held before a file is attached; older ones are dropped
_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


class _ToFile(logging.Handler):
    """Holds records until ``attach``, then writes them and every later one to the file."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.emit(record)
        else:
            self.held = [*self.held[-_HELD + 1:], record]

    def reset(self) -> None:
        self.reset_file()
        self.held = []

    def reset_file(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file = None

    def attach(self, path: Path) -> None:
        if self.file is not None and Path(self.file.baseFilename) == path.resolve():
            return
        self.reset_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter(_FORMAT))
        for record in self.held:
            self.file.emit(record)
        self.held = []


_HANDLER = _ToFile()


def quiet_libraries() -> None:
    """Routes the libraries' warnings and log records to the log file (see the module)."""
    import optuna

    root = logging.getLogger()
    _HANDLER.reset()
    if _HANDLER not in root.handlers:  # also keeps logging.warning() from adding a stderr one
        root.addHandler(_HANDLER)
    root.setLevel(logging.WARNING)
    warnings.resetwarnings()
    warnings.simplefilter("default")
    logging.captureWarnings(False)  # on again below, over whatever shows warnings now
    logging.captureWarnings(True)
    logging.getLogger("fvcore").setLevel(logging.ERROR)  # an uncounted operator per layer
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.INFO)  # each trial's result, in the file


def show_libraries() -> None:
    """Undoes ``quiet_libraries`` (``--debug``): everything goes to the terminal again."""
    import optuna

    logging.getLogger().removeHandler(_HANDLER)
    _HANDLER.reset()
    logging.captureWarnings(False)
    optuna.logging.enable_default_handler()
    optuna.logging.disable_propagation()


def attach(path: Path) -> None:
    """Writes the held records, and from now on every record, to ``path`` (appended)."""
    if _HANDLER in logging.getLogger().handlers:
        _HANDLER.attach(Path(path))


@contextlib.contextmanager
def captured_stderr(what: str) -> Iterator[None]:
    """Catches what C and C++ code writes to the process's stderr while the body runs (the
    TorchScript exporter prints a whole graph when it fails) and logs it as a warning about
    ``what``. Left alone with ``--debug``, when nothing routes the logs."""
    if _HANDLER not in logging.getLogger().handlers:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                logging.getLogger("edgeslim").warning("%s printed:\n%s", what, text)
