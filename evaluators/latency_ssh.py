"""The ``ssh`` latency source: copy the artifact to the device and time it there.

The device runs the same timing code as the host (``python -m edgeslim.evaluators.remote``), so
it needs this package installed, with onnxruntime or the budget's LiteRT runtime;
authentication is by key only (``BatchMode``: never a password
prompt in the middle of a search). Results are cached by the artifact's SHA-256, the device and
the thread count, so re-measuring a file (the model card, a resumed study) costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgeslim.budget import LatencySource
from edgeslim.errors import CandidateError, ConfigError, DeviceError
from edgeslim.evaluators.latency import LatencyResult
from edgeslim.evaluators.remote import REFUSED_EXIT
from edgeslim.fsutil import atomic_write_json

REMOTE_DIR = ".cache/edgeslim/artifacts"  # under the remote user's home
CONNECT_TIMEOUT_S = 10
MEASURE_TIMEOUT_S = 600


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class SshMeter:
    """Times artifacts on ``spec.host`` over ssh; ``cache`` is a JSON file of past results."""

    spec: LatencySource
    threads: int
    cache: Path | None = None
    runtime: str = "onnxruntime"  # the runtime the device times files in
    source: str = field(default="ssh", init=False)

    def _options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        if self.spec.identity:
            opts += ["-i", self.spec.identity, "-o", "IdentitiesOnly=yes"]
        if self.spec.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.spec.known_hosts}",
                     "-o", "StrictHostKeyChecking=accept-new"]
        return opts

    def _ssh(self, command: str, timeout: float, stdin: Path | None = None) -> str:
        # "--" ends ssh's options: the host is never read as one (the budget checks it too).
        args = ["ssh", "-p", str(self.spec.port), *self._options(), "--", str(self.spec.host),
                command]
        try:
            if stdin is None:
                done = subprocess.run(args, capture_output=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL)
            else:
                with open(stdin, "rb") as f:
                    done = subprocess.run(args, capture_output=True, timeout=timeout, stdin=f)
        except FileNotFoundError:
            raise DeviceError("ssh is not installed on this machine") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.where}: no answer within {timeout:g} s") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace")
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            # The runtime on the device refused the file: the candidate's failure.
            error = CandidateError if done.returncode == REFUSED_EXIT else DeviceError
            raise error(f"{self.where}: {lines[-1] if lines else 'exit status '}"
                        f"{'' if lines else done.returncode}")
        return done.stdout.decode(errors="replace")

    @property
    def where(self) -> str:
        return f"ssh {self.spec.host}:{self.spec.port}"

    def check(self) -> dict[str, object]:
        """Connects once and returns the device's description; a ConfigError names the problem
        (unreachable host, refused key, no edgeslim on the device)."""
        python = shlex.quote(self.spec.python)
        try:
            out = self._ssh(f"{python} -m edgeslim.evaluators.remote --check "
                            f"--runtime {shlex.quote(self.runtime)}", CONNECT_TIMEOUT_S * 3)
            return json.loads(out.strip().splitlines()[-1])
        except (CandidateError, ValueError, IndexError) as exc:
            raise ConfigError(f"latency.host: cannot time artifacts on {self.spec.host} "
                              f"port {self.spec.port} with {self.spec.python}: {exc}") from None

    def measure(self, onnx_path: Path, below_ms: float | None = None,
                input_shape: tuple[int, ...] | None = None) -> LatencyResult:
        """The file's latency on the device: an ONNX file in onnxruntime, a LiteRT file
        (``.tflite``, with the ``input_shape`` of one input, ONNX layout) in the meter's
        runtime."""
        path = Path(onnx_path)
        litert = path.suffix == ".tflite"
        digest = sha256(path)
        runtime = self.runtime if litert else "onnxruntime"
        key = f"{self.spec.host}:{self.spec.port}|{self.threads}|{digest}" \
            + (f"|{runtime}" if litert else "")
        cached = self._cached().get(key)
        if cached is not None:
            return LatencyResult(**cached)
        remote = f"{REMOTE_DIR}/{digest}{path.suffix}"
        # Copied through ssh's stdin (no scp or sftp needed on the device), then renamed, so a
        # broken transfer never leaves a half-written file under the final name.
        self._ssh(f"mkdir -p {REMOTE_DIR} && cat > {remote}.part && mv {remote}.part {remote}",
                  MEASURE_TIMEOUT_S, stdin=path)
        extra = ""
        if litert:
            if input_shape is None:
                raise ValueError("a LiteRT file is timed with its input shape")
            extra = f" --runtime {shlex.quote(runtime)} --input-shape " \
                    + "x".join(str(int(v)) for v in input_shape)
        out = self._ssh(f"{shlex.quote(self.spec.python)} -m edgeslim.evaluators.remote "
                        f"{remote} --threads {self.threads} "
                        f"--max-spread {self.spec.max_spread}{extra}", MEASURE_TIMEOUT_S)
        try:
            fields = json.loads(out.strip().splitlines()[-1])
            result = LatencyResult(**{**fields, "source": "ssh"})
        except (ValueError, TypeError, IndexError):
            raise DeviceError(f"{self.where}: unreadable timing output {out[-200:]!r}") \
                from None
        if self.cache is not None:
            atomic_write_json({**self._cached(), key: result.to_dict()}, self.cache)
        return result

    def _cached(self) -> dict[str, dict]:
        if self.cache is None or not self.cache.is_file():
            return {}
        try:
            return json.loads(self.cache.read_text())
        except ValueError:
            return {}  # a damaged cache costs a re-measurement, never a wrong number
