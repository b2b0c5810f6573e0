"""Several processes on one study: --workers on a journal file, machines on PostgreSQL, a
worker killed in the middle of a trial, and one stopped by Ctrl+C or SIGTERM."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from edgeslim.cli import main
from edgeslim.interrupts import Interrupted
from edgeslim.search.config import default_storage
from edgeslim.search.interrupted import recover_interrupted
from edgeslim.search.storage import load_study, open_storage
from edgeslim.search.workers import counted, counts, queued, retried, run_trials
from toys import REPO, UNTIMED

COMPLETE, FAIL, RUNNING, WAITING = (
    optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
SEARCH = ["--budget", str(UNTIMED), "--finalists", "0", "--base-epochs", "3", "--screen", "8"]
FAST = [*SEARCH, "--finetune-steps", "5"]
# Two processes on two cores: one thread each, as --workers 2 sets up.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    again = retried(study.trials)
    return [t for t in study.trials if counts(t, again)]


def _check_no_trial_lost_or_repeated(study: optuna.Study, trials: int) -> Counter:
    """Checks the study's trials; returns how often each screened allocation ran."""
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))  # unique and gapless
    assert len(_counted(study)) == trials
    assert not [t for t in study.trials if t.state == RUNNING]
    for t in study.trials:
        if t.state == COMPLETE:
            assert t.values is not None and t.user_attrs["val_acc"] == t.values[0]
    refs = Counter(t.user_attrs["reference"] for t in study.trials
                   if "reference" in t.user_attrs and t.state == COMPLETE)
    assert refs and max(refs.values()) == 1  # no reference ran twice
    screened = Counter(t.user_attrs["screened"]["trial"] for t in study.trials
                       if "screened" in t.user_attrs and t.state == COMPLETE)
    assert max(screened.values(), default=1) == 1  # no screened allocation ran twice
    return screened


@pytest.mark.slow
def test_two_local_workers_share_one_journal(tmp_path: Path):
    workdir = tmp_path / "w"
    # The digits fine-tune (5 epochs, seconds): the second process, started with spawn,
    # joins while the first is still running trials.
    assert main([*SEARCH, "--trials", "8", "--workers", "2", "--workdir", str(workdir)]) == 0
    study = load_study(None, default_storage(workdir))
    # six references, then two search trials, both from screening
    assert len(_check_no_trial_lost_or_repeated(study, 8)) == 2
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials if "worker" in t.user_attrs}
    assert len(pids) == 2  # both processes ran trials
    # Resuming asks for nothing more: the count is met.
    assert main([*SEARCH, "--trials", "8", "--workers", "2", "--workdir", str(workdir)]) == 0
    assert len(load_study(None, default_storage(workdir)).trials) == len(study.trials)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's package; .ci/run installs it),
    run as the ``postgres`` user when the tests run as root; yields its URL. Its directory is
    outside pytest's (which only root may enter) and removed afterwards."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="edgeslim-pg-"))
    root.chmod(0o777)
    data, port = root / "data", _free_port()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(root / "log"), "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p",
                        str(port), "-U", "postgres", "edgeslim"], check=True,
                       capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/edgeslim"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_join_one_study_on_postgresql(tmp_path: Path, postgres: str):
    """Two processes with their own work directories (as on two machines) run the same
    command against one PostgreSQL study at once."""
    command = [sys.executable, "-m", "edgeslim.cli", *FAST, "--trials", "8", "--storage",
               postgres, "--study-name", "shared"]
    procs = [subprocess.Popen([*command, "--workdir", str(tmp_path / name)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=ONE_THREAD)
             for name in ("a", "b")]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=postgres)
    # six references, then two search trials, both from screening
    assert len(_check_no_trial_lost_or_repeated(study, 8)) == 2
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials if "worker" in t.user_attrs}
    assert len(pids) == 2


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_trial_then_resume(tmp_path: Path):
    workdir = tmp_path / "w"
    storage = default_storage(workdir)
    # Long fine-tunes (digits: 15 epochs a stage, seconds) so that the kill lands in one.
    command = [sys.executable, "-m", "edgeslim.cli", *SEARCH, "--trials", "4",
               "--finetune-epochs", "15", "--workdir", str(workdir)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def second_trial_training():
        if not Path(storage.removeprefix("journal:")).is_file():
            return None
        try:
            trials = load_study(None, storage).trials
        except Exception:
            return None  # the study is being created
        done = [t for t in trials if t.state == COMPLETE]
        running = [t for t in trials if t.state == RUNNING and "candidate" in t.user_attrs]
        return (done, running[0]) if done and running else None

    try:
        done, running = _wait_for(second_trial_training, 600, "a trial to train")
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number: t for t in load_study(None, storage).trials if t.state == COMPLETE}
    assert before and running.number not in before
    assert list((workdir / "trials").glob(f"trial-{running.number}-*"))  # left by the kill

    assert main([*SEARCH, "--trials", "4", "--finetune-epochs", "15",
                 "--workdir", str(workdir)]) == 0
    study = load_study(None, storage)
    after = {t.number: t for t in study.trials}
    for number, t in before.items():  # finished trials are intact
        assert after[number].state == COMPLETE and after[number].values == t.values
        assert after[number].user_attrs == t.user_attrs
    killed = after[running.number]
    assert killed.state == FAIL and killed.user_attrs["interrupted"] is True
    assert killed.user_attrs["fail_reason"].startswith(
        "interrupted: worker process ") and "ended while the trial ran" in \
        killed.user_attrs["fail_reason"]
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == running.number]
    assert retry.state == COMPLETE and retry.params == killed.params
    assert not list((workdir / "trials").glob(f"trial-{running.number}-*"))
    _check_no_trial_lost_or_repeated(study, 4)
    # Every artifact of every finished trial reads back.
    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    store = FileSystemArtifactStore(str(workdir / "artifacts"))
    for t in study.trials:
        for key, artifact_id in t.user_attrs.items():
            if key.startswith("artifact:"):
                out = tmp_path / "read" / f"{t.number}-{key[9:]}"
                out.parent.mkdir(exist_ok=True)
                download_artifact(artifact_store=store, artifact_id=artifact_id,
                                  file_path=str(out))
                assert out.stat().st_size > 0


def test_a_running_trial_of_a_live_process_is_left_alone(tmp_path: Path):
    storage = default_storage(tmp_path)
    from edgeslim.search.interrupted import worker_identity
    from edgeslim.search.storage import open_storage

    study = optuna.create_study(storage=open_storage(storage))
    trial = study.ask()
    trial.set_user_attr("worker", worker_identity())
    assert recover_interrupted(study) == []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = study.ask()
    other.suggest_float("x", 0, 1)
    identity = {**worker_identity(), "pid": dead.pid}
    other.set_user_attr("worker", identity)
    assert recover_interrupted(study) == [other.number]
    states = {t.number: t.state for t in study.trials}
    assert states[trial.number] == RUNNING and states[other.number] == FAIL
    (retry,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert retry.user_attrs["retry_of"] == other.number
    assert retry.system_attrs["fixed_params"] == other.params
    assert recover_interrupted(study) == []  # once only
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_journal_torn_by_a_killed_writer_is_read_and_appended_again(tmp_path: Path):
    """A process killed in the middle of an append leaves a last line without its end; the
    next process cuts it (under the journal's lock) before appending after it."""
    from edgeslim.search.storage import open_storage

    url = default_storage(tmp_path)
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    path = tmp_path / "studies.journal"
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "w", "trial_id": 1, "us')
    study = optuna.load_study(storage=open_storage(url), study_name="s")
    assert path.read_bytes() == whole
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    trials = optuna.load_study(storage=open_storage(url), study_name="s").trials
    assert [t.state for t in trials] == [COMPLETE] * 3


def test_an_interrupted_trial_is_recorded_and_queued_by_its_own_process(tmp_path):
    study = optuna.create_study(storage=open_storage(default_storage(tmp_path)))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        if trial.number == 0:
            raise Interrupted(signal.SIGTERM)
        trial.set_user_attr("finetuned", True)  # counts towards the study's trials
        return 1.0

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, objective, 2, tmp_path)
    (stopped, queued) = study.trials
    assert stopped.state == FAIL and stopped.user_attrs["interrupted"] is True
    assert stopped.user_attrs["fail_reason"] == (
        f"interrupted: SIGTERM stopped worker process {os.getpid()} on {socket.gethostname()} "
        "while the trial ran")
    assert queued.state == WAITING and queued.user_attrs == {"retry_of": 0}
    assert queued.system_attrs["fixed_params"] == stopped.params
    assert recover_interrupted(study) == []  # its retry is queued already
    run_trials(study, objective, 2, tmp_path)  # resumed: the retry runs, then one more
    assert [t.state for t in study.trials] == [FAIL, COMPLETE, COMPLETE]
    assert study.trials[1].params == stopped.params and counted(study.trials) == 2


def test_references_enqueued_by_two_processes_at_once_are_queued_once():
    """Two processes that set a study up at the same moment both enqueue its references:
    what is queued counts each once (or screening, which fills the rest, would be skipped)."""
    study = optuna.create_study()
    for _ in range(2):
        for name in ("uniform", "int8"):
            study.enqueue_trial({"x": 0.5}, user_attrs={"reference": name})
    study.enqueue_trial({"x": 0.1})  # no tag: runs whatever else is queued
    assert queued(study.trials) == 3
    trial = study.ask()  # the first reference starts: it no longer waits
    assert queued(study.trials) == 2
    study.tell(trial, 1.0)
    assert queued(study.trials) == 2


def test_a_trial_stopped_again_before_its_retry_was_queued_gets_one_on_resume(tmp_path):
    study = optuna.create_study(storage=open_storage(default_storage(tmp_path)))
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("interrupted", True)  # recorded, then a second Ctrl+C
    study.tell(trial, state=FAIL)
    assert recover_interrupted(study) == [0]
    assert recover_interrupted(study) == []  # once only
    (queued,) = study.get_trials(states=(WAITING,))
    assert queued.user_attrs == {"retry_of": 0}


@pytest.mark.parametrize("signum, status, what", [(signal.SIGINT, 130, "Ctrl+C (SIGINT)"),
                                                  (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_stops_any_command_with_one_line(tmp_path, capsys, monkeypatch, signum,
                                                  status, what):
    def run(args) -> int:
        os.kill(os.getpid(), signum)  # delivered to the handler main() installed
        time.sleep(5)
        return 0

    monkeypatch.setattr("edgeslim.cli.run", run)
    assert main(["show", "--workdir", str(tmp_path)]) == status
    assert capsys.readouterr().err == (f"optimize: stopped by {what}; rerun the same command "
                                       "to resume\n")
    assert signal.getsignal(signum) is not None  # the handlers main() replaced are back
