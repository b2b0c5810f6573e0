"""Malformed input through the optimize command: each mistake is one line on stderr naming what
is wrong, exit status 2, no traceback, and nothing written or changed on disk (the work
directory is not even created). Every case fails before any training."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torchvision
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_browse import toy_study

from edgeslim import training
from edgeslim.budget import LIMIT_KEYS, OBJECTIVE_KEYS, Budget, load_budget
from edgeslim.cli import main
from edgeslim.errors import BudgetError
from edgeslim.models import MODELS, build_model
from edgeslim.search.config import default_storage
from edgeslim.search.storage import open_storage
from toys import PI4

# A case writes its files into the test's folder and returns the arguments that use them and
# the message expected.
Case = Callable[[Path], tuple[list[str], str]]
WORKDIR = "w"


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: folders by path, files by size, mtime and content."""
    entries: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir() and not path.is_symlink():
            entries[key] = ("dir",)
        else:
            st_ = path.lstat()
            entries[key] = ("file", st_.st_size, st_.st_mtime_ns,
                            hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def refused(argv: list[str], root: Path, capsys) -> str:
    """Runs the command and checks the contract of a refused input; returns the message."""
    before = snapshot(root)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    # One line per mistake (a budget file can hold several).
    assert lines and all(line.startswith("optimize: error: ") for line in lines), err
    assert snapshot(root) == before
    return "\n".join(line.removeprefix("optimize: error: ") for line in lines)


class Trained(BaseException):
    """Raised by any training step: past ``except Exception``, so a refusal that trained
    first fails its test instead of printing a message."""


@pytest.fixture(autouse=True)
def no_training(monkeypatch) -> None:
    """A refused input is refused before anything trains (the base model or a candidate)."""
    def trains(*args, **kwargs):
        raise Trained("trained before refusing")

    monkeypatch.setattr(training, "_train_on", trains)


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch) -> Path:
    """The test's folder, also the current directory: a relative path the command wrote to
    by mistake would show up in the snapshot."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def search(tmp: Path, *extra: str, budget: Path = PI4) -> list[str]:
    return ["--budget", str(budget), "--workdir", str(tmp / WORKDIR), *extra]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Budget files

ALLOWED_TOP = "allowed: device, latency, limits, objectives, runtime"
ALLOWED_LIMITS = ("allowed: accuracy_drop, activation_memory, latency, macs, params, "
                  "peak_memory, size")

BUDGETS: dict[str, tuple[str | bytes | None, str]] = {
    # id: (file content, None for no file; the message after "<file>: ")
    "missing file": (None, "cannot read budget file (No such file or directory)"),
    "not yaml": ("device: [unclosed\n", "not valid YAML at line 2: expected ',' or ']', but "
                 "got '<stream end>'"),
    "binary file": (b"\x89PNG\r\n\x1a\n\x00\x00", "not a UTF-8 text file (byte 0 is 0x89); a "
                    "budget is a YAML file"),
    "control character": ("device:\n  name: a\x00b\n", "not valid YAML at line 2: character "
                          "U+0000 is not allowed"),
    "empty file": ("", "device: missing section (the target device's name at least)"),
    "a list": ("- device\n- limits\n", "(top level): must be a mapping, got ['device', "
               "'limits']"),
    "a scalar": ("just some text\n", "(top level): must be a mapping, got 'just some text'"),
    "unknown top-level key": ("device: {name: b}\nlimit: {macs: 50%}\n",
                              f"limit: unknown key (did you mean limits? {ALLOWED_TOP}), "
                              "got {'macs': '50%'}"),
    "unknown nested key": ("device: {name: b}\nlimits: {parms: 1M}\n",
                           f"limits.parms: unknown key (did you mean params? {ALLOWED_LIMITS}), "
                           "got '1M'"),
    "unknown device key": ("device: {name: b, colour: red}\n", "device.colour: unknown key "
                           "(allowed: cores, cpu, memory, name, notes), got 'red'"),
    "duplicate key": ("device: {name: b}\nlimits:\n  macs: 50%\n  macs: 20%\n",
                      "not valid YAML at line 4: key 'macs' is given twice"),
    "device not a mapping": ("device: 4\n", "device: must be the device's name or a mapping "
                             "(name, cpu, cores, memory, notes), got 4"),
    "no device name": ("device: {cpu: arm}\n", "device.name: must be a non-empty string, "
                       "got None"),
    "cores a string": ("device: {name: b, cores: four}\n", "device.cores: must be an integer "
                       ">= 1, got 'four'"),
    "threads a float": ("device: {name: b}\nruntime: {threads: 1.5}\n",
                        "runtime.threads: must be an integer >= 1, got 1.5"),
    "limits a list": ("device: {name: b}\nlimits: [macs, 50%]\n",
                      "limits: must be a mapping, got ['macs', '50%']"),
    "bad unit": ("device: {name: b}\nlimits: {macs: 40Q}\n",
                 "limits.macs: unknown unit 'Q' (accepted: K, M, G, %), got '40Q'"),
    "size without unit": ("device: {name: b}\nlimits: {size: 8}\n",
                          "limits.size: needs a unit (B, KB, MB, GB, KiB, MiB, GiB, %), got 8"),
    "latency in parsecs": ("device: {name: b}\nlimits: {latency: 5 parsecs}\n",
                           "limits.latency: unknown unit 'parsecs' (accepted: us, ms, s, %), "
                           "got '5 parsecs'"),
    "memory without unit": ("device: {name: b, memory: 4}\n",
                            "device.memory: needs a unit (B, KB, MB, GB, KiB, MiB, GiB, %), "
                            "got 4"),
    "negative latency": ("device: {name: b}\nlimits: {latency: -5ms}\n",
                         "limits.latency: expected a number with a unit (us, ms, s, %), got "
                         "'-5ms'"),
    "negative params": ("device: {name: b}\nlimits: {params: -5}\n",
                        "limits.params: must be > 0, got -5"),
    "zero memory": ("device: {name: b}\nlimits: {peak_memory: 0MB}\n",
                    "limits.peak_memory: must be > 0 bytes, got '0MB'"),
    "zero latency": ("device: {name: b}\nlimits: {latency: 0ms}\n",
                     "limits.latency: must be > 0 ms, got '0ms'"),
    "not a number": ("device: {name: b}\nlimits: {params: .nan}\n",
                     "limits.params: must be a finite number, got nan"),
    "too large": ("device: {name: b}\nlimits: {macs: 1e999}\n",
                  "limits.macs: must be a finite number, got '1e999'"),
    "percent over 100": ("device: {name: b}\nlimits: {params: 150%}\n",
                         "limits.params: a relative limit must be at most 100% of the base, "
                         "got '150%'"),
    "accuracy drop over 100": ("device: {name: b}\nlimits: {accuracy_drop: 120%}\n",
                               "limits.accuracy_drop: must be >= 0 and < 100 percentage "
                               "points, got '120%'"),
    "accuracy drop without unit": ("device: {name: b}\nlimits: {accuracy_drop: '2'}\n",
                                   "limits.accuracy_drop: must be percentage points of "
                                   "accuracy, like 2% or 2pp, got '2'"),
    "unknown objective": ("device: {name: b}\nobjectives: [macs, accuracy]\n",
                          "objectives[1]: must be one of params, macs, peak_memory, "
                          "activation_memory, size, latency (accuracy is always an "
                          "objective), got 'accuracy'"),
    "objective a list": ("device: {name: b}\nobjectives: [[macs]]\n",
                         "objectives[0]: must be one of params, macs, peak_memory, "
                         "activation_memory, size, latency (accuracy is always an "
                         "objective), got ['macs']"),
    "objective twice": ("device: {name: b}\nobjectives: [size, size]\n",
                        "objectives[1]: is listed twice, got 'size'"),
    "objectives a string": ("device: {name: b}\nobjectives: macs\n",
                            "objectives: must be a list of measure names, got 'macs'"),
    "unknown runtime": ("device: {name: b}\nruntime: {name: tflite}\n",
                        "runtime.name: must be one of onnxruntime, litert, litert-micro (did "
                        "you mean litert?), got 'tflite'"),
    "unknown latency source": ("device: {name: b}\nlatency: {source: gpu}\n",
                               "latency.source: must be one of host, profile, ssh, got 'gpu'"),
    "ssh without host": ("device: {name: b}\nlatency: {source: ssh, host: ''}\n",
                         "latency.host: must be a non-empty string, got ''"),
    "port out of range": ("device: {name: b}\nlatency: {source: ssh, host: pi@h, port: 70000}\n",
                          "latency.port: must be a TCP port (1 to 65535), got 70000"),
    "bad date": ("device: {name: b, notes: 2024-13-01}\n", "not valid YAML at line 1: cannot "
                 "read '2024-13-01' (month must be in 1..12)"),
    "huge value": ("device: {name: b}\nlimits: {macs: '" + "9" * 500 + "'}\n",
                   "limits.macs: must be a finite number, got '" + "9" * 37 + "..." + "9" * 38
                   + "'"),
}


@pytest.mark.parametrize("content, message", BUDGETS.values(), ids=BUDGETS.keys())
def test_bad_budget(tmp, capsys, content, message):
    path = tmp / "budgets" / "board.yaml"
    if content is not None:
        write(path, content)
    assert refused(search(tmp, budget=path), tmp, capsys) == f"{path}: {message}"
    assert not (tmp / WORKDIR).exists()


def test_budget_that_is_a_directory(tmp, capsys):
    (tmp / "b.yaml").mkdir()
    assert refused(search(tmp, budget=tmp / "b.yaml"), tmp, capsys) == \
        f"{tmp / 'b.yaml'}: cannot read budget file (Is a directory)"


# Random budget documents: load_budget either returns a Budget that keeps its invariants, or
# raises BudgetError with one line that starts with the file and names a key path. Nothing
# else may escape (KeyError, TypeError, ValueError, OverflowError...).

UNITS = ["", "K", "M", "G", "%", "pp", "B", "KB", "MB", "GiB", "us", "ms", "s", " ms", "Q",
         "parsecs", "%%", "e3", "e999", "e-999"]
KEYS = st.one_of(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1,
                         max_size=12), st.integers(-3, 3), st.none(), st.booleans())
NUMBERS = st.one_of(st.integers(-10, 10**12), st.integers(10**300, 10**310),
                    st.floats(allow_nan=True, allow_infinity=True))
QUANTITIES = st.builds(lambda n, u: f"{n}{u}", st.one_of(
    st.integers(-100, 10**9), st.floats(0, 1e6, allow_nan=False),
    st.sampled_from([".5", "5.", "1e3", "0", "-0", "nan", "inf", "1_000"])),
    st.sampled_from(UNITS))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, QUANTITIES, st.text(max_size=16),
                    st.sampled_from(["host", "ssh", "profile", "onnxruntime", "flops", "size",
                                     "2024-13-01", "pi@board", "~/.ssh/id"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=8)


PLAUSIBLE = {"count": ["50%", "1.2M", "40M", "500K", 1500, "100%"],
             "bytes": ["64MB", "8MiB", "50%", "1MB", "0MB"],
             "ms": ["20ms", "500us", "0.1s", "50%"], "pp": ["2%", "2pp", 1.5, "0%", "100%"]}


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` nine times in ten: random documents that get past the first check."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 9 else good)


def fields(keys: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A section: some of its keys with plausible or random values, rarely a stray key."""
    known = st.fixed_dictionaries({}, optional={k: mostly(v, VALUES) for k, v in keys.items()})
    stray = st.dictionaries(KEYS, VALUES, max_size=1)
    return st.tuples(known, mostly(st.just({}), stray)).map(lambda ab: {**ab[1], **ab[0]})


SECTIONS = {
    "device": st.tuples(fields({"cpu": st.text(max_size=12), "cores": st.integers(-2, 64),
                                "memory": mostly(st.sampled_from(["4GB", "512MiB", "256KB"]),
                                                 QUANTITIES),
                                "notes": st.text(max_size=12)}),
                        mostly(st.just("board"), SCALARS)).map(
        lambda fn: {"name": fn[1], **fn[0]}),
    "runtime": fields({"name": st.sampled_from(["onnxruntime", "tflite"]),
                       "threads": st.integers(-1, 8)}),
    "latency": fields({"source": st.sampled_from(["host", "profile", "ssh", "gpu"]),
                       "profile": st.sampled_from(["pi4.json", "/p/pi4.json", ""]),
                       "host": st.sampled_from(["pi@board", ""]),
                       "port": st.integers(-1, 70000), "identity": st.text(max_size=8),
                       "known_hosts": st.text(max_size=8), "python": st.text(max_size=8),
                       "max_spread": NUMBERS}),
    "limits": fields({key: mostly(st.sampled_from(PLAUSIBLE[kind]), QUANTITIES)
                      for key, (_, kind) in [*LIMIT_KEYS.items(), ("accuracy_drop", ("", "pp"))]}),
    "objectives": st.lists(mostly(st.sampled_from([*OBJECTIVE_KEYS, "accuracy"]), SCALARS),
                           max_size=4),
}


@st.composite
def documents(draw) -> dict:
    """Budget documents near the valid ones (so that every check is reached), each part
    sometimes replaced by a random value."""
    doc = {}
    for name, section in SECTIONS.items():
        if name == "device" or draw(st.booleans()):
            doc[name] = draw(mostly(section, VALUES))
    if draw(st.integers(0, 19)) == 19:
        doc[draw(KEYS)] = draw(VALUES)
    return doc


TEXTS = st.integers(0, 9).flatmap(lambda i: (
    documents().map(lambda doc: yaml.safe_dump(doc, allow_unicode=True)) if i < 7 else
    VALUES.map(lambda value: yaml.safe_dump(value, allow_unicode=True)) if i < 9 else
    st.text(max_size=60)))
KEY_PATH = re.compile(r"^(\(top level\)|device|runtime|latency|limits|objectives)"
                      r"(\.[^:]+|\[\d+\])?: ")


def check_budget(budget: Budget) -> None:
    """What a parsed Budget guarantees."""
    assert budget.device.name.strip()
    assert budget.device.cores is None or budget.device.cores >= 1
    assert budget.device.memory_bytes is None or budget.device.memory_bytes > 0
    assert budget.runtime.name == "onnxruntime" and budget.runtime.threads >= 1
    lat = budget.latency
    assert lat.source in ("host", "profile", "ssh")
    assert (lat.profile is not None) == (lat.source == "profile")
    assert (lat.host is not None) == (lat.source == "ssh")
    assert 1 <= lat.port <= 65535 and 0 < lat.max_spread < float("inf")
    measures = [lim.measure for lim in budget.limits]
    assert len(set(measures)) == len(measures)
    assert set(measures) <= {m for m, _ in LIMIT_KEYS.values()}
    for lim in budget.limits:
        assert 0 < lim.value < float("inf")
        assert not lim.relative or lim.value <= 1
    drop = budget.accuracy_drop_points
    assert drop is None or 0 <= drop < 100
    assert len(set(budget.objectives)) == len(budget.objectives)
    assert set(budget.objectives) <= set(OBJECTIVE_KEYS.values())


def check_budget_error(lines: list[str], path: Path) -> None:
    """One line per mistake, each the file first, then a key path (or what is wrong with the
    file as a whole)."""
    assert lines
    for message in lines:
        assert "\n" not in message and message.startswith(f"{path}: ")
        rest = message.removeprefix(f"{path}: ")
        assert (KEY_PATH.match(rest) or rest.startswith(("not valid YAML", "not a UTF-8 text"))
                or re.search(r": unknown key \((did you mean \w+\? )?"
                             f"{ALLOWED_TOP}\\), got ", rest)), rest


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=TEXTS)
def test_random_budgets_parse_or_fail_with_one_line(tmp_path, text):
    path = write(tmp_path / "random.yaml", text)
    try:
        budget = load_budget(path)
    except BudgetError as exc:
        check_budget_error(exc.lines, path)
    else:
        check_budget(budget)


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=TEXTS)
def test_random_budgets_through_the_command(tmp_path, capsys, text):
    """The command prints load_budget's message, or (the budget being valid) stops at the
    unknown model that follows it; it never creates the work directory."""
    path = write(tmp_path / "random.yaml", text)
    try:
        load_budget(path)
        expected = "unknown model 'no-such-model'; registered: "
    except BudgetError as exc:
        expected = str(exc)
    message = refused(search(tmp_path, "--model", "no-such-model", budget=path), tmp_path,
                      capsys)
    assert message.startswith(expected) if expected.endswith(": ") else message == expected
    assert not (tmp_path / WORKDIR).exists()


# ---------------------------------------------------------------------------------------------
# Model specifications

def _model_file(tmp: Path, body: str) -> str:
    return str(write(tmp / "models" / "mine.py", body))


def _unknown_name(tmp: Path):
    return ["--model", "resnet21"], (
        f"unknown model 'resnet21'; registered: {', '.join(sorted(MODELS))} (or "
        "torchvision:NAME, path/to/file.py:factory, package.module:factory)")


def _missing_file(tmp: Path):
    spec = f"{tmp / 'models' / 'none.py'}:make"
    return ["--model", spec], f"model file {tmp / 'models' / 'none.py'}: no such file"


def _missing_factory(tmp: Path):
    file = _model_file(tmp, "def make(num_classes):\n    return None\n")
    return ["--model", f"{file}:build"], f"model '{file}:build': {file} has no callable 'build'"


def _factory_raises(tmp: Path):
    file = _model_file(tmp, "def make(num_classes):\n"
                            "    raise RuntimeError('needs 3 input channels\\nsecond line')\n")
    return ["--model", f"{file}:make"], (f"model '{file}:make': factory failed: RuntimeError: "
                                         "needs 3 input channels")


def _factory_exits(tmp: Path):
    file = _model_file(tmp, "import sys\n\ndef make():\n    sys.exit(3)\n")
    return ["--model", f"{file}:make"], f"model '{file}:make': factory failed: SystemExit: 3"


def _not_a_module(tmp: Path):
    file = _model_file(tmp, "def make(in_channels, num_classes):\n    return [in_channels]\n")
    return ["--model", f"{file}:make"], (f"model '{file}:make': factory returned list, not a "
                                         "torch.nn.Module")


def _import_fails(tmp: Path):
    file = _model_file(tmp, "import timm_that_is_not_installed\n")
    return ["--model", f"{file}:make"], (
        f"model file {file}: import failed: ModuleNotFoundError: No module named "
        "'timm_that_is_not_installed'")


def _syntax_error(tmp: Path):
    file = _model_file(tmp, "def make(:\n")
    return ["--model", f"{file}:make"], (f"model file {file}: import failed: SyntaxError: "
                                         "invalid syntax (mine.py, line 1)")


def _module_missing(tmp: Path):
    return ["--model", "nosuchpkg.models:make"], (
        "model module 'nosuchpkg.models' cannot be imported: ModuleNotFoundError: No module "
        "named 'nosuchpkg' (is it installed, or on PYTHONPATH?)")


def _module_factory_missing(tmp: Path):
    return ["--model", "toys:nothing"], "model 'toys:nothing': toys has no callable 'nothing'"


def _torchvision_unknown(tmp: Path):
    names = torchvision.models.list_models(module=torchvision.models)
    return ["--model", "torchvision:resnet21"], (
        f"unknown torchvision classification model 'resnet21'; available: {', '.join(names)}")


MODEL_CASES: list[Case] = [
    _unknown_name, _missing_file, _missing_factory, _factory_raises, _factory_exits,
    _not_a_module, _import_fails, _syntax_error, _module_missing, _module_factory_missing,
    _torchvision_unknown,
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.__name__.strip("_"))
def test_bad_model(tmp, capsys, case):
    extra, message = case(tmp)
    # Importing a model file writes no __pycache__ beside it: the snapshot would show it.
    assert refused(search(tmp, *extra), tmp, capsys) == message
    assert not (tmp / WORKDIR).exists()


def test_model_listing_names_the_registered_models():
    _, message = _unknown_name(Path("."))
    assert "resnet20, resnet32, resnet34, resnet56" in message


# ---------------------------------------------------------------------------------------------
# Datasets

def _png(path: Path, size: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 90, dtype=np.uint8)).save(path)


def _npz(tmp: Path, **arrays) -> str:
    path = tmp / "data" / "set.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return str(path)


X = np.zeros((6, 2, 8), dtype=np.float32)
Y = np.array([0, 1, 0, 1, 0, 1])
FOLDER_HINT = "(expected class folders, or train/ and test/ holding class folders)"


def _unknown_dataset(tmp: Path):
    return ["--dataset", "imagenet"], ("unknown dataset 'imagenet'; registered: digits, cifar10, "
                                       "mnist, fashion-mnist (or imagefolder:PATH, npz:PATH)")


def _folder_without_path(tmp: Path):
    return ["--dataset", "imagefolder:"], ("dataset 'imagefolder:': give a path after "
                                           "imagefolder:, e.g. imagefolder:PATH")


def _folder_missing(tmp: Path):
    return ["--dataset", f"imagefolder:{tmp / 'pics'}"], \
        f"{tmp / 'pics'}: no such directory {FOLDER_HINT}"


def _folder_is_a_file(tmp: Path):
    write(tmp / "pics", "not a folder")
    return ["--dataset", f"imagefolder:{tmp / 'pics'}"], \
        f"{tmp / 'pics'}: not a directory {FOLDER_HINT}"


def _folder_empty(tmp: Path):
    (tmp / "pics").mkdir()
    return ["--dataset", f"imagefolder:{tmp / 'pics'}"], (
        f"{tmp / 'pics'}: no class folders (expected {tmp / 'pics'}/<class>/*.png, one folder "
        "per class, or train/ and test/ holding them)")


def _folder_without_classes(tmp: Path):
    _png(tmp / "pics" / "a.png")
    _png(tmp / "pics" / "b.png")
    return ["--dataset", f"imagefolder:{tmp / 'pics'}"], (
        f"{tmp / 'pics'}: no class folders (expected {tmp / 'pics'}/<class>/*.png, one folder "
        "per class, or train/ and test/ holding them)")


def _classes_without_images(tmp: Path):
    write(tmp / "pics" / "cat" / "notes.txt", "no images here")
    (tmp / "pics" / "dog").mkdir()
    return ["--dataset", f"imagefolder:{tmp / 'pics'}"], (
        f"{tmp / 'pics'}: no image files (.jpg, .jpeg, .png, .bmp, .gif, .webp, .tif, .tiff) in "
        "class folders")


def _one_class(tmp: Path):
    _png(tmp / "pics" / "train" / "cat" / "0.png")
    _png(tmp / "pics" / "train" / "cat" / "1.png")
    return ["--dataset", f"imagefolder:{tmp / 'pics'}"], (
        f"{tmp / 'pics' / 'train'}: a classifier needs at least 2 class folders, found 1 "
        "('cat')")


def _undecodable_image(tmp: Path):
    for cls in ("cat", "dog"):
        _png(tmp / "pics" / cls / "0.png")
    bad = write(tmp / "pics" / "dog" / "1.png", b"GIF89a but not really")
    return ["--dataset", f"imagefolder:{tmp / 'pics'}"], (
        f"{bad}: cannot be decoded as an image (cannot identify image file '{bad}')")


def _test_classes_differ(tmp: Path):
    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "cow"))):
        for cls in classes:
            _png(tmp / "pics" / split / cls / "0.png")
    return ["--dataset", f"imagefolder:{tmp / 'pics'}"], (
        f"{tmp / 'pics' / 'test'}: class folders ['cat', 'cow'] differ from the training "
        "split's ['cat', 'dog']")


def _npz_missing(tmp: Path):
    return ["--dataset", f"npz:{tmp / 'none.npz'}"], f"npz:{tmp / 'none.npz'}: no such file"


def _npz_not_an_archive(tmp: Path):
    path = write(tmp / "data" / "set.npz", "x_train,y_train\n1,2\n")
    return ["--dataset", f"npz:{path}"], (
        f"npz:{path}: cannot be read as an .npz file (not a zip archive as written by "
        "numpy.savez)")


def _npz_missing_labels(tmp: Path):
    spec = _npz(tmp, x_train=X)
    return ["--dataset", f"npz:{spec}"], (
        f"npz:{spec}: missing array 'y_train'; found x_train (expected x_train, y_train and "
        "optionally x_test, y_test, class_names)")


def _npz_flat_samples(tmp: Path):
    spec = _npz(tmp, x_train=X[:, 0], y_train=Y)
    return ["--dataset", f"npz:{spec}"], (
        f"npz:{spec}: x_train has shape (6, 8); expected N x C x L or N x C x H x W")


def _npz_labels_short(tmp: Path):
    spec = _npz(tmp, x_train=X, y_train=Y[:4])
    return ["--dataset", f"npz:{spec}"], (
        f"npz:{spec}: y_train has shape (4,) for 6 samples in x_train; expected one label "
        "per sample")


def _npz_test_shape(tmp: Path):
    spec = _npz(tmp, x_train=X, y_train=Y, x_test=X[:, :1], y_test=Y)
    return ["--dataset", f"npz:{spec}"], (
        f"npz:{spec}: x_test samples have shape (1, 8), x_train samples (2, 8)")


def _cifar10_data_dir_is_a_file(tmp: Path):
    write(tmp / "data", "not a folder")
    return ["--dataset", "cifar10", "--data-dir", str(tmp / "data")], \
        f"cifar10: --data-dir {tmp / 'data'} is not a directory"


DATA_CASES: list[Case] = [
    _unknown_dataset, _folder_without_path, _folder_missing, _folder_is_a_file, _folder_empty,
    _folder_without_classes, _classes_without_images, _one_class, _undecodable_image,
    _test_classes_differ, _npz_missing, _npz_not_an_archive, _npz_missing_labels,
    _npz_flat_samples, _npz_labels_short, _npz_test_shape, _cifar10_data_dir_is_a_file,
]


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.__name__.strip("_"))
def test_bad_dataset(tmp, capsys, case):
    extra, message = case(tmp)
    assert refused(search(tmp, *extra), tmp, capsys) == message
    assert not (tmp / WORKDIR).exists()


@pytest.fixture
def offline(monkeypatch):
    """No network, as on the machines the tests run on: name lookups fail at once."""
    def no_lookup(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)


@pytest.mark.parametrize("exists", [False, True], ids=["data-dir missing", "data-dir empty"])
def test_cifar10_without_its_files_leaves_the_data_dir_as_it_was(tmp, capsys, offline, exists):
    """The download torchvision attempts creates the folder and a partial archive; a failed
    download removes them again."""
    data_dir = tmp / "datasets" / "cifar"
    if exists:
        data_dir.mkdir(parents=True)
    message = refused(search(tmp, "--dataset", "cifar10", "--data-dir", str(data_dir)), tmp,
                      capsys)
    assert message == (
        f"cifar10: no data in {data_dir} and downloading failed (URLError); put torchvision's "
        f"cifar10 files in {data_dir} (as downloaded by torchvision.datasets.CIFAR10) or an "
        f"ImageFolder tree {data_dir}/train/<class>/*.png")
    assert data_dir.exists() == exists and (tmp / "datasets").exists() == exists


# ---------------------------------------------------------------------------------------------
# Checkpoints

class RunsCode:
    """Unpickling this runs ``touch MARKER`` (with pickle.load, not with weights_only)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _not_torch(tmp: Path):
    path = write(tmp / "ckpt" / "weights.pt", "these are not weights\n")
    return path, "cannot be loaded as weights: not a file written by torch.save"


def _empty(tmp: Path):
    path = write(tmp / "ckpt" / "weights.pt", b"")
    return path, "cannot be loaded as weights: not a file written by torch.save"


def _truncated(tmp: Path):
    path = tmp / "ckpt" / "weights.pt"
    path.parent.mkdir()
    torch.save(build_model("resnet20", 1, 10).state_dict(), path)
    path.write_bytes(path.read_bytes()[:4096])
    return path, ("cannot be loaded as weights: not a file written by torch.save (RuntimeError: "
                  "PytorchStreamReader failed reading zip archive: failed finding central "
                  "directory)")


def _a_directory(tmp: Path):
    (tmp / "ckpt" / "weights.pt").mkdir(parents=True)
    return tmp / "ckpt" / "weights.pt", ("is a directory; give the file written by "
                                         "torch.save(model.state_dict(), PATH)")


def _a_list(tmp: Path):
    path = tmp / "ckpt" / "weights.pt"
    path.parent.mkdir()
    torch.save([torch.zeros(2)], path)
    return path, "expected a state dict (parameter name -> tensor), got list"


def _not_tensors(tmp: Path):
    path = tmp / "ckpt" / "weights.pt"
    path.parent.mkdir()
    torch.save({"epoch": 3, "state_dict": {"fc.weight": torch.zeros(2), "step": 7}}, path)
    return path, "expected a state dict (parameter name -> tensor), but 'step' holds int"


def _other_model(tmp: Path):
    path = tmp / "ckpt" / "weights.pt"
    path.parent.mkdir()
    torch.save(build_model("resnet32", 1, 10).state_dict(), path)
    return path, ("does not match model 'resnet20': 72 keys the model does not have "
                  "(layer1.3.conv1.weight, layer1.3.bn1.weight, layer1.3.bn1.bias, ...); was "
                  "it saved from another model?")


def _other_classes(tmp: Path):
    path = tmp / "ckpt" / "weights.pt"
    path.parent.mkdir()
    torch.save({"model": build_model("resnet20", 1, 5).state_dict()}, path)
    return path, ("does not match model 'resnet20': fc.weight has shape (5, 64) in the "
                  "checkpoint but (10, 64) in the model (and 1 more); was it saved for another "
                  "number of classes or input channels?")


def _runs_code(tmp: Path):
    path = tmp / "ckpt" / "weights.pt"
    path.parent.mkdir()
    torch.save({"conv1.weight": RunsCode(tmp / "MARKER")}, path)
    return path, ("cannot be loaded as weights: it holds Python objects (posix.system), not "
                  "only tensors, and loading them could run code; save model.state_dict() "
                  "with torch.save and pass that file")


def _runs_code_plain_pickle(tmp: Path):
    path = write(tmp / "ckpt" / "weights.pt",
                 pickle.dumps(RunsCode(tmp / "MARKER"), protocol=2))
    return path, ("cannot be loaded as weights: it holds Python objects (posix.system), not "
                  "only tensors, and loading them could run code; save model.state_dict() "
                  "with torch.save and pass that file")


CHECKPOINT_CASES = [_not_torch, _empty, _truncated, _a_directory, _a_list, _not_tensors,
                    _other_model, _other_classes, _runs_code, _runs_code_plain_pickle]


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=lambda c: c.__name__.strip("_"))
def test_bad_checkpoint(tmp, capsys, case):
    path, problem = case(tmp)
    separator = " " if problem.startswith("does not match") else ": "
    message = refused(search(tmp, "--checkpoint", str(path)), tmp, capsys)
    assert message == f"checkpoint {path}{separator}{problem}"
    assert not (tmp / "MARKER").exists()  # the pickled command never ran
    assert not (tmp / WORKDIR).exists()


def test_a_pickle_that_runs_code_does_run_it_without_weights_only(tmp):
    """The check above means something: the same file, unpickled plainly, runs the command."""
    path, _ = _runs_code_plain_pickle(tmp)
    pickle.loads(path.read_bytes())
    assert (tmp / "MARKER").exists()


# ---------------------------------------------------------------------------------------------
# Storage URLs

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STORAGE_FORMS = ("must be journal:PATH, sqlite:///PATH, postgresql://USER@HOST/DB or "
                 "mysql://USER@HOST/DB")


def _unknown_scheme(tmp: Path):
    return ["--storage", "redis://127.0.0.1/0"], f"storage 'redis://127.0.0.1/0': {STORAGE_FORMS}"


def _bare_path(tmp: Path):
    return ["--storage", "studies.db"], f"storage 'studies.db': {STORAGE_FORMS}"


def _journal_directory(tmp: Path):
    (tmp / "runs").mkdir()
    return ["--storage", f"journal:{tmp / 'runs'}"], (
        f"storage 'journal:{tmp / 'runs'}': {tmp / 'runs'} is a directory; give a file path")


def _sqlite_under_a_file(tmp: Path):
    write(tmp / "runs", "a file where a folder should be")
    url = f"sqlite:///{tmp / 'runs' / 'sub' / 'studies.db'}"
    return ["--storage", url], (
        f"storage '{url}': cannot create the folder {tmp / 'runs' / 'sub'}: {tmp / 'runs'} is a "
        "file, not a directory; give another path")


def _workdir_under_a_file(tmp: Path):
    write(tmp / "runs", "a file where a folder should be")
    storage = default_storage(tmp / "runs" / WORKDIR)
    return ["--workdir", str(tmp / "runs" / WORKDIR)], (
        f"storage '{storage}': cannot create the folder {tmp / 'runs' / WORKDIR}: "
        f"{tmp / 'runs'} is a file, not a directory; give another path")


def _postgresql_nobody_listens(tmp: Path):
    port = free_port()
    url = f"postgresql://edgeslim:s3cret@127.0.0.1:{port}/edgeslim"
    shown = f"postgresql://edgeslim:***@127.0.0.1:{port}/edgeslim"
    return ["--storage", url], (
        f"storage '{shown}' cannot be opened: (psycopg.OperationalError) connection failed: "
        f"connection to server at \"127.0.0.1\", port {port} failed: Connection refused; check "
        "that the server runs and the URL is right")


STORAGE_CASES: list[Case] = [_unknown_scheme, _bare_path, _journal_directory,
                             _sqlite_under_a_file, _workdir_under_a_file,
                             _postgresql_nobody_listens]


@pytest.mark.parametrize("case", STORAGE_CASES, ids=lambda c: c.__name__.strip("_"))
def test_bad_storage_fails_before_anything_is_written(tmp, capsys, case):
    """The storage is checked first, before the data, the base model and the study."""
    extra, message = case(tmp)
    assert refused(search(tmp, *extra), tmp, capsys) == message
    assert not (tmp / WORKDIR).exists()


def test_bad_checkpoint_is_found_before_the_storage_is_used(tmp, capsys):
    """Options are checked before the storage: the first mistake is the one reported."""
    path, problem = _runs_code(tmp)
    extra, _ = _postgresql_nobody_listens(tmp)
    message = refused(search(tmp, "--checkpoint", str(path), *extra), tmp, capsys)
    assert message == f"checkpoint {path}: {problem}"


@pytest.mark.parametrize("mistake", ["storage", "not weights", "runs code"])
def test_storage_and_checkpoint_are_checked_before_the_data_is_cached(tmp, capsys, mistake):
    """The search decodes an image folder once and caches it under the work directory: a bad
    storage or checkpoint file stops the command before that."""
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(tmp / "pics" / cls / f"{i}.png")
    extra = ["--dataset", f"imagefolder:{tmp / 'pics'}"]
    if mistake == "storage":
        more, message = _sqlite_under_a_file(tmp)
    else:
        path, problem = (_not_torch if mistake == "not weights" else _runs_code)(tmp)
        more, message = ["--checkpoint", str(path)], f"checkpoint {path}: {problem}"
    assert refused(search(tmp, *extra, *more), tmp, capsys) == message
    assert not (tmp / WORKDIR).exists()


# ---------------------------------------------------------------------------------------------
# export, show, report and dashboard of what does not exist

@pytest.fixture
def study_dir(tmp) -> Path:
    """A work directory holding the hand-built study of test_browse (trials 0 to 2 complete,
    trial 3 failed: loss diverged)."""
    workdir = tmp / "runs"
    toy_study(workdir, default_storage(workdir))
    return workdir


def _journal(workdir: Path) -> str:
    return default_storage(workdir)


BROWSE = {
    "export no study": (["export", "--study", "nope", "--out", "OUT"],
                        "no study 'nope' in STORAGE; studies there: toy-digits-board"),
    "show no study": (["show", "--study", "nope"],
                      "no study 'nope' in STORAGE; studies there: toy-digits-board"),
    "report no study": (["report", "--study", "nope", "--out", "OUT"],
                        "no study 'nope' in STORAGE; studies there: toy-digits-board"),
    "dashboard no study": (["dashboard", "--study", "nope", "--port", "0"],
                           "no study 'nope' in STORAGE; studies there: toy-digits-board"),
    "export no trial": (["export", "--trial", "99", "--out", "OUT"],
                        "study 'toy-digits-board' has no trial 99 (trials 0 to 3)"),
    "export failed trial": (["export", "--trial", "3", "--out", "OUT"],
                            "trial 3 of 'toy-digits-board' is FAIL (loss diverged); pick a "
                            "complete trial"),
    "report no trial": (["report", "--trial", "99", "--out", "OUT"],
                        "study 'toy-digits-board' has no complete trial 99 (complete: 0, 1, 2)"),
    "report failed trial": (["report", "--trial", "3", "--out", "OUT"],
                            "study 'toy-digits-board' has no complete trial 3 (complete: 0, 1, "
                            "2)"),
    "export bad format": (["export", "--out", "OUT", "--format", "onnx,tflite"],
                          "--format: must be among onnx, pytorch, json, md, got 'onnx,tflite'"),
    "dashboard bad port": (["dashboard", "--port", "70000"],
                           "--port: must be 0 to 65535, got 70000"),
}


@pytest.mark.parametrize("argv, message", BROWSE.values(), ids=BROWSE.keys())
def test_browsing_what_does_not_exist(tmp, study_dir, capsys, argv, message):
    argv = [a.replace("OUT", str(tmp / "out")) for a in argv]
    got = refused([*argv, "--workdir", str(study_dir)], tmp, capsys)
    assert got == message.replace("STORAGE", _journal(study_dir))
    assert not (tmp / "out").exists()


@pytest.mark.parametrize("command", ["export", "report"])
def test_refused_export_leaves_an_existing_out_folder_as_it_was(tmp, study_dir, capsys, command):
    write(tmp / "out" / "model.onnx", b"an earlier export")
    message = refused([command, "--workdir", str(study_dir), "--out", str(tmp / "out"),
                       "--trial", "3"], tmp, capsys)
    assert message.endswith("; pick a complete trial") if command == "export" else \
        message == "study 'toy-digits-board' has no complete trial 3 (complete: 0, 1, 2)"


@pytest.mark.parametrize("command", ["export", "show", "report", "dashboard"])
@pytest.mark.parametrize("where", ["workdir", "journal", "sqlite"])
def test_browsing_a_storage_that_does_not_exist(tmp, capsys, command, where):
    path = {"workdir": tmp / "none" / "studies.journal", "journal": tmp / "none.journal",
            "sqlite": tmp / "none.db"}[where]
    location = {"workdir": ["--workdir", str(tmp / "none")],
                "journal": ["--storage", f"journal:{path}"],
                "sqlite": ["--storage", f"sqlite:///{path}"]}[where]
    out = ["--out", str(tmp / "out")] if command in ("export", "report") else []
    message = refused([command, *location, *out], tmp, capsys)
    assert message == (f"no study storage at {path.resolve() if where == 'workdir' else path}; "
                       "run a search first, or point --workdir or --storage at the one it used")
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("command", ["export", "report"])
def test_out_that_is_a_file(tmp, study_dir, capsys, command):
    write(tmp / "out", "a file")
    message = refused([command, "--workdir", str(study_dir), "--out", str(tmp / "out" / "x")],
                      tmp, capsys)
    assert message == (f"--out {tmp / 'out' / 'x'}: {tmp / 'out'} is a file, not a directory; "
                       "give a directory (it is created when missing)")


def test_browsing_a_storage_that_is_not_one(tmp, capsys):
    journal = write(tmp / "studies.journal", b"\x89PNG\r\n\x1a\n")
    message = refused(["show", "--storage", f"journal:{journal}"], tmp, capsys)
    assert message == (f"storage 'journal:{journal}': {journal} is not an Optuna journal file "
                       "(UnicodeDecodeError: 'utf-8' codec can't decode byte 0x89 in position "
                       "0: invalid start byte); point --storage or --workdir at the study's "
                       "storage")
    # A file named by mistake, whose last line has no line end, is not cut like a journal
    # whose writer was killed mid-line: it is left as it was (the snapshot checks it).
    notes = write(tmp / "notes.txt", "my notes\nthe last line has no line end")
    message = refused(["show", "--storage", f"journal:{notes}"], tmp, capsys)
    assert message == (f"storage 'journal:{notes}': {notes} is not an Optuna journal file "
                       "(JSONDecodeError: Expecting value: line 1 column 1 (char 0)); point "
                       "--storage or --workdir at the study's storage")
    db = write(tmp / "studies.db", "not a database")
    message = refused(["show", "--storage", f"sqlite:///{db}"], tmp, capsys)
    assert message == (f"storage 'sqlite:///{db}' cannot be opened: (sqlite3.DatabaseError) "
                       "file is not a database")


def test_browsing_a_server_nobody_listens_on(tmp, capsys):
    port = free_port()
    message = refused(["show", "--storage", f"postgresql://edgeslim@127.0.0.1:{port}/x"], tmp,
                      capsys)
    assert message == (
        f"storage 'postgresql://edgeslim@127.0.0.1:{port}/x' cannot be opened: "
        f"(psycopg.OperationalError) connection failed: connection to server at \"127.0.0.1\", "
        f"port {port} failed: Connection refused")


def test_the_study_storage_is_opened_for_reading_only(tmp, study_dir, capsys):
    """Loading the study for an error leaves its journal as it was (checked by ``refused``),
    and the study itself is intact afterwards."""
    refused(["show", "--study", "nope", "--workdir", str(study_dir)], tmp, capsys)
    storage = open_storage(_journal(study_dir))
    assert [s.study_name for s in storage.get_all_studies()] == ["toy-digits-board"]


# ---------------------------------------------------------------------------------------------
# Refusals that used to come after the data was cached or the base model trained


def test_a_checkpoint_for_another_model_writes_no_image_cache(tmp, capsys):
    for cls in ("a", "b"):
        for i in range(3):
            _png(tmp / "images" / "train" / cls / f"{i}.png")
    path = tmp / "ckpt.pt"
    torch.save(build_model("resnet32", 3, 2).state_dict(), path)
    message = refused(search(tmp, "--dataset", f"imagefolder:{tmp / 'images'}",
                             "--checkpoint", str(path)), tmp, capsys)
    assert message.startswith(f"checkpoint {path} does not match model 'resnet20': ")
    assert not (tmp / WORKDIR).exists()


def test_stages_that_cannot_meet_a_params_limit_are_refused_before_training(tmp, capsys):
    message = refused(search(tmp, "--stages", "cluster,quantize"), tmp, capsys)
    assert message == ("the budget caps params and macs below the base model's, which only "
                       "pruning can meet; add prune to --stages (or --order)")


def test_resuming_with_another_setup_is_refused_before_training(tmp, capsys):
    storage = default_storage(tmp / WORKDIR)
    study = optuna.create_study(storage=open_storage(storage), study_name="resnet20-digits-pi4")
    study.set_user_attr("setup", {"model": "resnet20", "seed": 5})
    message = refused(search(tmp), tmp, capsys)
    assert message.startswith(f"study 'resnet20-digits-pi4' in {storage} was created with a "
                              "different ")
    assert message.endswith("; resume it with the same options or pick a new --study-name")
    assert not (tmp / WORKDIR / "cache").exists() and not (tmp / WORKDIR / "base").exists()
