"""The ssh latency source against a real OpenSSH server on 127.0.0.1 (Debian's openssh-server).

The server runs as a throwaway daemon with its own host key, a fresh client key and an
authorized_keys file in the test's temporary directory; the "device" is this machine, reached
through ssh, running this checkout's interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from edgeslim.budget import LatencySource
from edgeslim.cli import main
from edgeslim.errors import CandidateError, ConfigError
from edgeslim.evaluators.latency_ssh import SshMeter, sha256
from edgeslim.export import write_onnx
from edgeslim.search.config import default_storage
from edgeslim.search.storage import load_study
from toys import PI4, PlainNet

pytestmark = pytest.mark.slow
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path(SSHD).exists() or not shutil.which("ssh-keygen"):
        pytest.fail("openssh-server is not installed (apt-get install -y openssh-server; "
                    ".ci/run installs it)")
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    config = d / "sshd_config"
    config.write_text(f"""ListenAddress 127.0.0.1
Port {port}
HostKey {d / 'host'}
AuthorizedKeysFile {d / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {d / 'sshd.pid'}
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                    text=True).stdout.strip()
    spec = LatencySource(source="ssh", host=f"{user}@127.0.0.1", port=port,
                         identity=str(d / "client"), known_hosts=str(d / "known_hosts"),
                         python=sys.executable)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if server.poll() is not None:
            pytest.fail(f"sshd exited: {server.stderr.read().decode()[-500:]}")
        time.sleep(0.1)
    yield spec, d
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def toy_onnx(tmp_path):
    return write_onnx(PlainNet().eval(), torch.zeros(1, 1, 8, 8), tmp_path / "toy.onnx")


def test_ssh_source_times_the_artifact_on_the_device_and_caches_it(sshd, toy_onnx, tmp_path):
    spec, _ = sshd
    meter = SshMeter(spec, threads=1, cache=tmp_path / "cache.json")
    described = meter.check()
    assert described["runtime"] == "onnxruntime" and described["cores"] >= 1
    result = meter.measure(toy_onnx)
    assert result.source == "ssh" and result.runs >= 30 and result.threads == 1
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms
    cache = json.loads((tmp_path / "cache.json").read_text())
    assert list(cache) == [f"{spec.host}:{spec.port}|1|{sha256(toy_onnx)}"]
    assert meter.measure(toy_onnx) == result  # from the cache, not timed again



def test_ssh_source_times_litert_files_in_the_budgets_runtime_on_the_device(sshd, toy_onnx,
                                                                           tmp_path):
    """A LiteRT budget timed over ssh: the .tflite file is copied and timed on the device in
    LiteRT (float file) or LiteRT for Microcontrollers (int8 file), the device checked for
    that runtime first."""
    from edgeslim.budget import Runtime
    from edgeslim.data import load_dataset
    from edgeslim.evaluators.litert import measure_litert_file
    from edgeslim.litert import onnx_to_tflite

    spec, _ = sshd
    calibration = [np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)]
    files = {"litert": onnx_to_tflite(toy_onnx, tmp_path / "toy.tflite"),
             "litert-micro": onnx_to_tflite(toy_onnx, tmp_path / "toy-int8.tflite",
                                            "int8_static", iter(calibration))}
    data = load_dataset("digits", Path("unused"))
    for runtime, tflite in files.items():
        meter = SshMeter(spec, threads=1, cache=tmp_path / f"{runtime}.json", runtime=runtime)
        assert meter.check()["cores"] >= 1
        values, info = measure_litert_file(tflite, None, data, Runtime(name=runtime),
                                           meter=meter)
        assert info["latency_source"] == "ssh" and values["latency_ms"] > 0
        cache = json.loads((tmp_path / f"{runtime}.json").read_text())
        assert list(cache) == [f"{spec.host}:{spec.port}|1|{sha256(tflite)}|{runtime}"]

def test_unreachable_device_is_one_line(toy_onnx):
    spec = LatencySource(source="ssh", host="nobody@127.0.0.1", port=_free_port())
    with pytest.raises(ConfigError) as info:
        SshMeter(spec, threads=1).check()
    message = str(info.value)
    assert message.startswith(f"latency.host: cannot time artifacts on nobody@127.0.0.1 port "
                              f"{spec.port} with python3: ssh nobody@127.0.0.1:{spec.port}: ")
    assert "Connection refused" in message and "\n" not in message
    with pytest.raises(CandidateError, match="Connection refused"):
        SshMeter(spec, threads=1).measure(toy_onnx)


def test_search_measures_through_ssh_and_survives_a_failing_measurement(sshd, tmp_path,
                                                                       monkeypatch):
    from edgeslim.search.objective import Objective

    spec, d = sshd
    # The device's interpreter, behind a wrapper that fails the first call after trial 0 is
    # recorded: the connection check, the plan, the base model and trial 0 succeed, the next
    # measurement fails.
    armed = d / "armed"
    wrapper = d / "flaky-python"
    wrapper.write_text(f"""#!/bin/sh
if [ -e {armed} ]; then rm {armed}; echo "device busy: measurement refused" >&2; exit 1; fi
exec {sys.executable} "$@"
""")
    record = Objective.record

    def arm_after_trial_0(self, trial, measurement):
        values = record(self, trial, measurement)
        if trial.number == 0:
            armed.write_text("")
        return values

    monkeypatch.setattr(Objective, "record", arm_after_trial_0)
    wrapper.chmod(0o755)
    budget = tmp_path / "ssh.yaml"
    budget.write_text(PI4.read_text().replace("threads: 4 ", "threads: 1 ").split("\nlatency:")[0]
                      + f"""
latency:
  source: ssh
  host: {spec.host}
  port: {spec.port}
  identity: {spec.identity}
  known_hosts: {spec.known_hosts}
  python: {wrapper}
limits:
  latency: 20ms
objectives: [latency]
""")
    workdir = tmp_path / "w"
    code = main(["--budget", str(budget), "--trials", "3", "--workdir", str(workdir),
                 "--finetune-steps", "2", "--no-references", "--finalists", "0",
                 "--study-name", "ssh"])
    assert code == 0
    study = load_study("ssh", default_storage(workdir))
    states = [t.state for t in study.trials]
    assert len(states) == 3
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1
    assert "device busy: measurement refused" in failed[0].user_attrs["fail_reason"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    assert all(t.user_attrs["latency_source"] == "ssh" for t in complete)


def test_search_with_an_unreachable_device_exits_2_before_training(tmp_path, capsys):
    port = _free_port()
    budget = tmp_path / "b.yaml"
    budget.write_text("device: {name: board}\nruntime: {threads: 1}\n"
                      f"latency: {{source: ssh, host: pi@127.0.0.1, port: {port}}}\n")
    code = main(["--budget", str(budget), "--workdir", str(tmp_path / "w"), "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"optimize: error: latency.host: cannot time artifacts on "
                          f"pi@127.0.0.1 port {port} with python3: ")
    assert not (tmp_path / "w" / "studies.journal").exists()
    assert not (tmp_path / "w" / "cache" / "base").exists()  # nothing was trained
