"""Budget files as a user writes them: every mistake in a file reported in one run, the
forgiving forms (a plain device name, ``flops`` for ``macs``), the published JSON Schema, and
a malformed file refused before PyTorch is imported.

The corpus in ``tests/bad_budgets/`` holds one file per situation; each ends with the lines
the command must print for it, as ``# expect: <line after the file name>`` comments."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeslim._budget_schema import FLOPS_NOTE, LIMIT_KEYS, json_schema
from edgeslim.budget import Limit, load_budget, parse_budget
from edgeslim.cli import main
from edgeslim.errors import BudgetError
from toys import REPO

CORPUS = sorted((REPO / "tests" / "bad_budgets").glob("*.yaml"))
EXPECT = "# expect: "


def expected(path: Path) -> list[str]:
    return [line.removeprefix(EXPECT) for line in path.read_text().splitlines()
            if line.startswith(EXPECT)]


def test_corpus_is_large_and_each_file_says_what_it_expects():
    assert len(CORPUS) >= 30
    assert all(expected(path) for path in CORPUS)
    # Several files hold more than one mistake, each reported.
    assert sum(len(expected(path)) >= 3 for path in CORPUS) >= 5


@pytest.fixture(scope="module")
def warm_cli(tmp_path_factory):
    """The command's first run imports its libraries once; the corpus is timed after it."""
    tmp = tmp_path_factory.mktemp("warm")
    main(["--budget", str(CORPUS[0]), "--workdir", str(tmp / "w")])


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_every_mistake_in_one_run(path, tmp_path, capsys, warm_cli):
    workdir = tmp_path / "w"
    start = time.perf_counter()
    code = main(["--budget", str(path), "--workdir", str(workdir)])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.splitlines() == [f"optimize: error: {path}: {line}" for line in expected(path)]
    assert not workdir.exists()
    assert seconds < 1


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "board.yaml"
    path.write_text(text)
    return path


def test_plain_device_name_is_its_name(tmp_path):
    budget = load_budget(_write(tmp_path, "device: Raspberry Pi 4\nlimits: {macs: 40M}\n"))
    assert budget.device.name == "Raspberry Pi 4"
    assert (budget.device.cpu, budget.device.cores, budget.device.memory_bytes) == ("", None, None)
    assert budget.limits == (Limit("macs", 40e6, False),)
    assert budget.notes == ()


def test_flops_is_read_as_macs_with_a_note(tmp_path):
    path = _write(tmp_path, "device: b\nlimits: {flops: 50%}\nobjectives: [flops, size]\n")
    budget = load_budget(path)
    assert budget.limits == (Limit("macs", 0.5, True),)
    assert budget.objectives == ("macs", "size_bytes")
    assert budget.notes == (f"{path}: limits.flops: {FLOPS_NOTE}",
                            f"{path}: objectives: flops: {FLOPS_NOTE}")
    assert FLOPS_NOTE.startswith("read as MACs")


def test_flops_note_is_printed_at_the_start_of_a_search(tmp_path, capsys):
    # The note comes before anything else is checked: a missing checkpoint stops the command.
    path = _write(tmp_path, "device: b\nlimits: {flops: 50%}\n")
    code = main(["--budget", str(path), "--workdir", str(tmp_path / "w"),
                 "--checkpoint", str(tmp_path / "none.pt")])
    out = capsys.readouterr()
    assert code == 2
    assert out.out.replace("\n", "") == f"note: {path}: limits.flops: {FLOPS_NOTE}"
    assert out.err == f"optimize: error: --checkpoint: no such file {tmp_path / 'none.pt'}\n"


def test_committed_schema_is_the_generated_one():
    committed = json.loads((REPO / "budgets" / "budget.schema.json").read_text())
    assert committed == json_schema()


def test_budgets_name_the_schema_and_meet_it():
    budgets = sorted((REPO / "budgets").glob("*.yaml"))
    assert [p.stem for p in budgets] == ["jetson-nano", "mcu", "pi4", "pi5"]
    for path in budgets:
        assert path.read_text().splitlines()[0] == \
            "# yaml-language-server: $schema=budget.schema.json"
        load_budget(path)


def test_malformed_budget_is_refused_before_torch_is_imported(tmp_path):
    path = _write(tmp_path, "device: {name: b}\nlimits: {macs: 40Q}\n")
    code = ("import sys\nfrom edgeslim.cli import main\n"
            f"code = main(['--budget', {str(path)!r}, '--workdir', {str(tmp_path / 'w')!r}])\n"
            "print(code, 'torch' in sys.modules, 'torchvision' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.stdout == "2 False False\n"
    assert proc.stderr == (f"optimize: error: {path}: limits.macs: unknown unit 'Q' "
                           "(accepted: K, M, G, %), got '40Q'\n")


# Generated budgets: valid ones parse to exactly what they say; k mistakes put into a valid one
# give exactly k lines, each naming the key it was put on.

COUNTS = st.builds(lambda n, u: (f"{n}{u}", n * {"": 1, "K": 1e3, "M": 1e6}[u]),
                   st.integers(1, 999), st.sampled_from(["", "K", "M"]))
SIZES = st.builds(lambda n, u: (f"{n}{u}", n * {"KB": 1e3, "MB": 1e6, "KiB": 1024}[u]),
                  st.integers(1, 999), st.sampled_from(["KB", "MB", "KiB"]))
TIMES = st.builds(lambda n, u: (f"{n}{u}", n * {"ms": 1.0, "s": 1e3}[u]),
                  st.integers(1, 999), st.sampled_from(["ms", "s"]))
PERCENT = st.integers(1, 100).map(lambda n: (f"{n}%", n / 100))
KIND = {"count": COUNTS, "bytes": SIZES, "ms": TIMES}


@st.composite
def valid_budgets(draw) -> tuple[dict, dict, tuple]:
    """A valid document, and the limits and objectives it must parse to."""
    doc: dict = {"device": draw(st.one_of(
        st.just("board"), st.just({"name": "board", "cores": 4, "memory": "4GB"})))}
    limits, want = {}, {}
    for key, (measure, kind) in LIMIT_KEYS.items():
        if draw(st.booleans()):
            text, value = draw(st.one_of(KIND[kind], PERCENT))
            limits[key] = text
            want[measure] = Limit(measure, value, text.endswith("%"))
    if limits:
        doc["limits"] = limits
    objectives = draw(st.lists(st.sampled_from(list(LIMIT_KEYS)), unique=True, max_size=3))
    if objectives:
        doc["objectives"] = objectives
    return doc, want, tuple(LIMIT_KEYS[key][0] for key in objectives)


MISTAKES = {  # key path -> (where to put it, value, the rule it breaks)
    "limits.params": (("limits", "params"), "0", "must be > 0, got '0'"),
    "limits.size": (("limits", "size"), 8, "needs a unit (B, KB, MB, GB, KiB, MiB, GiB, %), "
                    "got 8"),
    "limits.latency": (("limits", "latency"), "150%", "a relative limit must be at most 100% "
                       "of the base, got '150%'"),
    "limits.sise": (("limits", "sise"), "1MB", "unknown key (did you mean size? allowed: "
                    "accuracy_drop, activation_memory, latency, macs, params, peak_memory, "
                    "size), got '1MB'"),
    "runtime.threads": (("runtime", "threads"), 0, "must be an integer >= 1, got 0"),
    "latency.source": (("latency", "source"), "gpu", "must be one of host, profile, ssh, got "
                       "'gpu'"),
    "runtimes": (("runtimes",), {}, "unknown key (did you mean runtime? allowed: device, "
                 "latency, limits, objectives, runtime), got {}"),
}


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=valid_budgets())
def test_generated_valid_budgets_parse_to_what_they_say(budget):
    doc, limits, objectives = budget
    parsed = parse_budget(yaml.safe_load(yaml.safe_dump(doc)), source="b.yaml")
    assert parsed.device.name == "board"
    got = {lim.measure: lim for lim in parsed.limits}
    assert list(got) == list(limits)
    for measure, lim in limits.items():
        assert got[measure].value == pytest.approx(lim.value)
        assert got[measure].relative == lim.relative
    assert parsed.objectives == objectives


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=valid_budgets(), mistakes=st.lists(st.sampled_from(list(MISTAKES)), min_size=1,
                                                 max_size=len(MISTAKES), unique=True))
def test_generated_mistakes_are_each_reported_once(budget, mistakes):
    doc = budget[0]
    for name in mistakes:
        where, value, _ = MISTAKES[name]
        section = doc
        for part in where[:-1]:
            section = section.setdefault(part, {})
        section[where[-1]] = value
    with pytest.raises(BudgetError) as info:
        parse_budget(yaml.safe_load(yaml.safe_dump(doc)), source="b.yaml")
    assert sorted(info.value.lines) == sorted(f"b.yaml: {name}: {MISTAKES[name][2]}"
                                              for name in mistakes)
