"""Where studies and their artifacts live, and what happens to trials whose process died."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from edgeslim.errors import StudyError

# A running trial on an RDB storage (PostgreSQL, MySQL) refreshes its heartbeat this often;
# one silent for the grace period (its machine or process died) is marked FAIL by the next
# worker that starts a trial, and re-queued once.
HEARTBEAT_S = 20
GRACE_S = 60
# The screening study of a search is named after it with this suffix.
SCREEN_SUFFIX = "/screen"
# A database server that does not answer a connection within this many seconds is reported,
# not waited on for the driver's default (minutes, or forever).
CONNECT_TIMEOUT_S = 10


def default_storage(workdir: Path) -> str:
    """A journal file in ``workdir``: safe for several worker processes writing at once (it
    appends under a lock), which an SQLite file is not."""
    return f"journal:{(Path(workdir) / 'studies.journal').resolve()}"


def _drop_torn_tail(path: Path, backend: Any) -> None:
    """Cuts a journal's last line when it has no line end: a process killed while appending
    (appends hold the journal's lock, so no live writer leaves one). Left in place, the next
    append would be glued to it and the journal could no longer be read."""
    from optuna.storages.journal._file import get_lock_file

    if not path.is_file() or path.stat().st_size == 0:
        return
    with get_lock_file(backend._lock), open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        if not data.startswith(b'{"op_code":'):
            return  # not an Optuna journal (a file named by mistake): left as it is
        f.truncate(data.rfind(b"\n") + 1)


def _rdb_storage(url: str, attempts: int = 4) -> RDBStorage:
    """An RDB storage; retried when another process creates the same tables at that moment
    (two machines starting against a new PostgreSQL database both issue CREATE TABLE, and
    the loser's fails on a unique index)."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    def make() -> RDBStorage:
        return RDBStorage(url, engine_kwargs=_engine_kwargs(url),
                          heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                              max_retry=1))

    for attempt in range(attempts - 1):
        try:
            return make()
        except (IntegrityError, ProgrammingError):
            time.sleep(0.5 * (attempt + 1))
    return make()


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: ``journal:PATH`` (a journal file, the default; safe for
    several processes on one machine), PostgreSQL or MySQL (several machines), or SQLite (one
    process at a time)."""
    check_storage_url(url, connect=False)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            backend = JournalFileBackend(str(path))
            _drop_torn_tail(path, backend)
            return JournalStorage(backend)
        except Exception as exc:  # it replays the file at once: undecodable or foreign lines
            raise StudyError(f"storage {url!r}: {path} is not an Optuna journal file "
                             f"({type(exc).__name__}: {str(exc)[:120]}); point --storage or "
                             "--workdir at the study's storage") from None
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return _rdb_storage(url)
    except Exception as exc:  # bad URL, missing driver, unreachable server
        raise StudyError(f"storage {_shown_url(url)!r} cannot be opened: "
                         f"{str(exc).splitlines()[0][:200]}") from None


def check_storage_url(url: str, connect: bool = True) -> None:
    """Refuses a storage URL that cannot work, without writing anything: a file storage
    whose path is a directory or whose folder cannot be created, a scheme Optuna does not
    know, or (with ``connect``) a database server that does not accept a connection."""
    for prefix in ("journal:", "sqlite:///"):
        if url.startswith(prefix):
            path = Path(url.removeprefix(prefix))
            if not str(path) or path.is_dir():
                raise StudyError(f"storage {url!r}: {path or 'the path'} is a directory; "
                                 "give a file path")
            blocked = _blocking_file(path.parent)
            if blocked is not None:
                raise StudyError(f"storage {url!r}: cannot create the folder {path.parent}: "
                                 f"{blocked} is a file, not a directory; give another path")
            return
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if "://" not in url or scheme not in ("postgresql", "mysql", "sqlite", "oracle", "mssql"):
        raise StudyError(f"storage {url!r}: must be journal:PATH, sqlite:///PATH, "
                         "postgresql://USER@HOST/DB or mysql://USER@HOST/DB")
    if connect and scheme != "sqlite":  # connecting to SQLite would create its file
        _connect_once(url)


def _blocking_file(folder: Path) -> Path | None:
    """The existing non-directory that keeps ``folder`` from being created, or None."""
    for path in (folder, *folder.parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql") and "connect_timeout" not in url:
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    return {}


def _connect_once(url: str) -> None:
    """Opens and closes one connection to the database server of ``url``; creates nothing."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as exc:  # missing driver, refused, timed out, bad credentials
        raise StudyError(f"storage {_shown_url(url)!r} cannot be opened: "
                         f"{str(exc).splitlines()[0][:200]}; check that the server runs and "
                         "the URL is right") from None


def _shown_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (messages end up in logs)."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def artifact_store(workdir: Path) -> FileSystemArtifactStore:
    """Trial artifacts (ONNX files, weights) live in ``<workdir>/artifacts``."""
    path = Path(workdir) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def load_study(name: str | None, url: str) -> optuna.Study:
    """Opens an existing study; with ``name`` None, the storage's only search study (screening
    studies aside). Creates nothing:
    a storage file that does not exist is an error."""
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix) and not Path(url.removeprefix(prefix)).is_file():
            raise StudyError(f"no study storage at {url.removeprefix(prefix)}; run a search "
                             "first, or point --workdir or --storage at the one it used")
    storage = open_storage(url)
    names = [s.study_name for s in
             optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is None:
        # A search's screening study is found by its own name only.
        names = [n for n in names if not n.endswith(SCREEN_SUFFIX)]
        if len(names) != 1:
            raise StudyError(f"{url} holds {len(names)} studies; pick one with --study "
                             f"({', '.join(names) or 'none'})")
        name = names[0]
    if name not in names:
        raise StudyError(f"no study {name!r} in {url}; studies there: "
                         f"{', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)
