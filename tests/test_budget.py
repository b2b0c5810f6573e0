"""Budget files: parsing into typed values, and one precise line for each kind of mistake."""

from __future__ import annotations

import pytest
import yaml

from edgeslim.budget import Limit, load_budget, parse_budget
from edgeslim.errors import BudgetError
from edgeslim.units import parse_quantity
from toys import PI4


def test_pi4_parses_to_exact_values():
    b = load_budget(PI4)
    assert b.name == "pi4"
    assert b.device.cores == 4 and b.device.memory_bytes == 4_000_000_000
    assert "Cortex-A72" in b.device.cpu and "1.5 GHz" in b.device.cpu
    assert (b.runtime.name, b.runtime.threads) == ("onnxruntime", 4)
    assert b.limits == (
        Limit("params", 0.5, True),
        Limit("macs", 0.5, True),
        Limit("peak_memory_bytes", 64e6, False),
        Limit("size_bytes", 8e6, False),
        Limit("latency_ms", 20.0, False),
    )
    assert b.accuracy_drop_points == 2.0
    assert b.objectives == ("macs", "latency_ms")


def test_budget_is_frozen():
    b = load_budget(PI4)
    with pytest.raises(AttributeError):
        b.name = "other"  # type: ignore[misc]


def test_relative_limit_resolves_against_base():
    assert Limit("macs", 0.5, True).resolve(40e6) == 20e6
    assert Limit("macs", 3e6, False).resolve(40e6) == 3e6


@pytest.mark.parametrize("text, kind, expected", [
    ("1.2M", "count", (1.2e6, False)),
    ("40M", "count", (40e6, False)),
    ("250K", "count", (250e3, False)),
    (1500, "count", (1500.0, False)),
    ("8MB", "bytes", (8e6, False)),
    ("8MiB", "bytes", (8 * 2**20, False)),
    ("256 KB", "bytes", (256e3, False)),
    ("5ms", "ms", (5.0, False)),
    ("500us", "ms", (0.5, False)),
    ("0.1s", "ms", (100.0, False)),
    ("50%", "count", (0.5, True)),
    ("1e6", "count", (1e6, False)),
])
def test_quantities(text, kind, expected):
    assert parse_quantity(text, kind) == pytest.approx(expected)


def _write(tmp_path, raw):
    path = tmp_path / "b.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


DEVICE = {"name": "board"}


@pytest.mark.parametrize("raw, message", [
    ({"device": DEVICE, "limits": {"macs": "40Q"}},
     "limits.macs: unknown unit 'Q' (accepted: K, M, G, %), got '40Q'"),
    ({"device": DEVICE, "limits": {"size": 8}},
     "limits.size: needs a unit (B, KB, MB, GB, KiB, MiB, GiB, %), got 8"),
    ({"device": DEVICE, "limits": {"latency": "5 parsecs"}},
     "limits.latency: unknown unit 'parsecs' (accepted: us, ms, s, %), got '5 parsecs'"),
    ({"device": DEVICE, "limits": {"params": "150%"}},
     "limits.params: a relative limit must be at most 100% of the base, got '150%'"),
    ({"device": DEVICE, "limits": {"peak_memory": "0MB"}},
     "limits.peak_memory: must be > 0 bytes, got '0MB'"),
    ({"device": DEVICE, "limits": {"parms": "1M"}},
     "limits.parms: unknown key (did you mean params? allowed: accuracy_drop, "
     "activation_memory, latency, macs, params, peak_memory, size), got '1M'"),
    ({"device": DEVICE, "extra": 1},
     "extra: unknown key (allowed: device, latency, limits, objectives, runtime), got 1"),
    ({"device": DEVICE, "latency": {"source": "gpu"}},
     "latency.source: must be one of host, profile, ssh, got 'gpu'"),
    ({"device": DEVICE, "latency": {"source": "profile"}},
     "latency.profile: is required when latency.source is profile (a profile JSON file), "
     "got None"),
    ({"device": DEVICE, "latency": {"source": "ssh"}},
     "latency.host: is required when latency.source is ssh (a user@address), got None"),
    ({"device": DEVICE, "latency": {"host": "pi@10.0.0.2"}},
     "latency.host: does not apply to latency.source host, got 'pi@10.0.0.2'"),
    ({"device": DEVICE, "latency": {"source": "ssh", "host": "pi@h", "port": 0}},
     "latency.port: must be an integer >= 1, got 0"),
    ({"device": DEVICE, "latency": {"source": "ssh", "host": "pi@h", "port": 65536}},
     "latency.port: must be a TCP port (1 to 65535), got 65536"),
    ({"device": DEVICE, "latency": {"max_spread": -1}},
     "latency.max_spread: must be a number > 0, got -1"),
    ({"device": DEVICE, "latency": {"source": "ssh", "host": "pi@h", "cores": 4}},
     "latency.cores: unknown key (allowed: host, identity, known_hosts, max_spread, port, "
     "profile, python, source), got 4"),
    ({"limits": {}}, "device: missing section (the target device's name at least)"),
    ({"device": {"name": ""}}, "device.name: must be a non-empty string, got ''"),
    ({"device": DEVICE, "runtime": {"threads": 0}},
     "runtime.threads: must be an integer >= 1, got 0"),
    ({"device": DEVICE, "runtime": {"name": "tflite"}},
     "runtime.name: must be one of onnxruntime, litert, litert-micro (did you "
     "mean litert?), got 'tflite'"),
    ({"device": DEVICE, "limits": {"accuracy_drop": "120%"}},
     "limits.accuracy_drop: must be >= 0 and < 100 percentage points, got '120%'"),
    ({"device": DEVICE, "objectives": ["macs", "accuracy"]},
     "objectives[1]: must be one of params, macs, peak_memory, activation_memory, size, "
     "latency (accuracy is always an objective), got 'accuracy'"),
    ({"device": DEVICE, "objectives": ["macs", "flops"]}, "objectives[1]: is listed twice, "
     "got 'flops'"),
    ({"device": DEVICE, "objectives": "macs"},
     "objectives: must be a list of measure names, got 'macs'"),
    ([1, 2], "(top level): must be a mapping, got [1, 2]"),
    ("device: [unclosed", "not valid YAML at line 1: expected ',' or ']', but got '<stream end>'"),
])
def test_each_mistake_gets_one_precise_line(tmp_path, raw, message):
    path = _write(tmp_path, raw)
    with pytest.raises(BudgetError) as info:
        load_budget(path)
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(BudgetError, match=r"nope\.yaml: cannot read budget file"):
        load_budget(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    path = _write(tmp_path, "device: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(BudgetError, match="not valid YAML"):
        load_budget(path)


def test_parse_budget_accepts_minimal_mapping():
    b = parse_budget({"device": DEVICE})
    assert b.limits == () and b.objectives == () and b.accuracy_drop_points is None
