"""Where studies and their artifacts live."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from edgeslim.errors import StudyError

# A running trial refreshes its heartbeat this often; one silent for the grace period (its
# process was killed) is marked FAIL when the next worker starts, and re-queued once.
HEARTBEAT_S = 20
GRACE_S = 60


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (SQLite, PostgreSQL, MySQL, or ``journal:PATH``)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                              max_retry=1))
    except Exception as exc:  # bad URL, missing driver, unreachable server
        raise StudyError(f"storage {url!r} cannot be opened: "
                         f"{str(exc).splitlines()[0][:200]}") from None


def artifact_store(workdir: Path) -> FileSystemArtifactStore:
    """Trial artifacts (ONNX files, weights) live in ``<workdir>/artifacts``."""
    path = Path(workdir) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def load_study(name: str | None, url: str) -> optuna.Study:
    """Opens an existing study; with ``name`` None, the storage's only study. Creates nothing:
    a storage file that does not exist is an error."""
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix) and not Path(url.removeprefix(prefix)).is_file():
            raise StudyError(f"no study storage at {url.removeprefix(prefix)}; run a search "
                             "first, or point --workdir or --storage at the one it used")
    storage = open_storage(url)
    names = [s.study_name for s in
             optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is None:
        if len(names) != 1:
            raise StudyError(f"{url} holds {len(names)} studies; pick one with --study "
                             f"({', '.join(names) or 'none'})")
        name = names[0]
    if name not in names:
        raise StudyError(f"no study {name!r} in {url}; studies there: "
                         f"{', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)
