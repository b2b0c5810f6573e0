"""optuna-dashboard on a study's storage, with its trials' artifacts, bound to this machine by
default (the dashboard has no login and can edit studies)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna_dashboard import wsgi
from rich.console import Console

from edgeslim.errors import ConfigError
from edgeslim.present.notes import annotate
from edgeslim.search.records import StudyRecord

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """One line per request would bury the address printed at the start."""


def serve(study: optuna.Study, storage: optuna.storages.BaseStorage, storage_url: str,
          host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          console: Console | None = None) -> int:
    """Serves optuna-dashboard for the study's storage (after writing the study's note), with
    the trials' artifacts downloadable, until interrupted. ``port`` 0 picks a free port; the
    address is printed once the server listens."""
    console = console or Console()
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: must be 0 to 65535, got {port}")
    artifacts = Path(StudyRecord.of(study).path("artifacts") or "")
    store = FileSystemArtifactStore(str(artifacts)) if artifacts.is_dir() else None
    app = wsgi(storage, artifact_store=store)
    try:
        server = make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there "
                          f"({exc.strerror or exc})") from None
    annotate(study, storage_url)  # once the address is known to work: a refusal writes nothing
    url = f"http://{host}:{server.server_port}/dashboard/studies/{study._study_id}"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    with server:
        console.print(f"optuna-dashboard for {study.study_name!r}: {url}", soft_wrap=True)
        if store is None:
            console.print(f"no artifact directory at {artifacts}: trial files cannot be "
                          "downloaded", style="yellow", soft_wrap=True)
        if not loopback:
            console.print(f"listening on {host}: anyone who reaches it can read and edit the "
                          "study (the dashboard has no login)", style="yellow", soft_wrap=True)
        console.print("press Ctrl+C to stop", style="dim")
        console.file.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0
