"""LiteRT and LiteRT for Microcontrollers: conversion, the measures taken in each runtime, and
the runtime names a budget accepts. The runtime tests run both interpreters for real; they
are skipped only where the litert extra is not installed (``uv sync --extra litert``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgeslim._budget_schema import RUNTIME_NAMES
from edgeslim.budget import parse_budget
from edgeslim.cli import main
from edgeslim.data import Split
from edgeslim.errors import BudgetError, CandidateError, ConfigError
from edgeslim.export import write_onnx
from edgeslim.runtimes import RUNTIMES, RuntimeInfo, check_installed, register_runtime
from toys import REPO, PlainNet

INSTALLED = all(find_spec(m) is not None for m, _ in RUNTIMES["litert-micro"].modules) \
    and find_spec("ai_edge_litert") is not None
needs_litert = pytest.mark.skipif(not INSTALLED, reason="the litert extra is not installed "
                                  "(uv sync --extra litert)")
DEVICE = {"name": "a board"}


# --- names and packages: no LiteRT package needed --------------------------------------------

def test_the_registry_holds_the_names_a_budget_accepts():
    assert tuple(RUNTIMES) == RUNTIME_NAMES == ("onnxruntime", "litert", "litert-micro")


def test_an_unknown_runtime_lists_the_valid_names():
    with pytest.raises(ConfigError, match=re.escape(
            "unknown runtime 'tflite'; valid: onnxruntime, litert, litert-micro")):
        check_installed("tflite")


def test_a_runtime_is_registered_once():
    with pytest.raises(ValueError, match="runtime 'litert' is already registered"):
        register_runtime(RuntimeInfo("litert", ".tflite"))


def test_a_missing_package_is_named_with_the_install_command(monkeypatch):
    real = find_spec
    monkeypatch.setattr("edgeslim.runtimes.find_spec",
                        lambda name: None if name == "tflite_micro" else real(name))
    if not INSTALLED:  # the others are missing too: name only the ones this test removes
        monkeypatch.setattr("edgeslim.runtimes.find_spec",
                            lambda name: None if name == "tflite_micro" else object())
    with pytest.raises(ConfigError) as err:
        check_installed("litert-micro")
    assert str(err.value) == ("runtime litert-micro needs tflite-micro, not installed; "
                              "install with: uv sync --extra litert")
    assert check_installed("onnxruntime").suffix == ".onnx"


def test_the_command_refuses_a_runtime_without_its_packages_before_training(
        tmp_path, monkeypatch, capsys):
    budget = tmp_path / "mcu.yaml"
    budget.write_text("device: {name: a board}\nruntime: {name: litert-micro}\n")
    monkeypatch.setattr("edgeslim.runtimes.find_spec", lambda name: None)
    code = main(["--budget", str(budget), "--workdir", str(tmp_path / "w")])
    assert code == 2
    assert capsys.readouterr().err == (
        "optimize: error: runtime litert-micro needs tensorflow, tf-keras, onnx2tf, "
        "onnx-graphsurgeon, sng4onnx, tflite-micro, not installed; install with: "
        "uv sync --extra litert\n")
    assert not (tmp_path / "w").exists()  # nothing trained, nothing written


def test_int8_io_is_read_for_litert_and_refused_for_onnxruntime():
    budget = parse_budget({"device": DEVICE, "runtime": {"name": "litert", "int8_io": True}})
    assert (budget.runtime.name, budget.runtime.int8_io) == ("litert", True)
    with pytest.raises(BudgetError) as err:
        parse_budget({"device": DEVICE, "runtime": {"int8_io": True}}, source="b.yaml")
    assert err.value.lines == ["b.yaml: runtime.int8_io: applies to runtime litert and "
                               "litert-micro only, got True"]
    with pytest.raises(BudgetError) as err:
        parse_budget({"device": DEVICE, "runtime": {"name": "litert", "int8_io": "yes"}},
                     source="b.yaml")
    assert err.value.lines == ["b.yaml: runtime.int8_io: must be true or false, got 'yes'"]


def test_litert_is_timed_here_over_ssh_or_from_a_profile_litert_micro_not_from_a_profile():
    with pytest.raises(BudgetError) as err:
        parse_budget({"device": DEVICE, "runtime": {"name": "litert-micro"},
                      "latency": {"source": "profile", "profile": "p.json"}}, source="b.yaml")
    assert err.value.lines == ["b.yaml: latency.source: a profile is made on a board that runs "
                               "Python; runtime litert-micro is timed on this host (host) or "
                               "over ssh (ssh), got 'profile'"]
    for latency in ({"source": "ssh", "host": "pi@h"}, {"source": "profile", "profile": "p"}):
        budget = parse_budget({"device": DEVICE, "runtime": {"name": "litert"},
                               "latency": latency}, source="b.yaml")
        assert budget.latency.source == latency["source"]


def test_litert_micro_searches_the_quantization_it_runs():
    from edgeslim._options import search_config
    from edgeslim.cli import build_parser

    budget = parse_budget({"device": DEVICE, "runtime": {"name": "litert-micro"}})
    args = build_parser().parse_args(["search", "--budget", "b.yaml"])
    assert search_config(args, budget).space.quant_modes == ("int8_static",)
    assert search_config(args, parse_budget({"device": DEVICE})).space.quant_modes == (
        "int8_static", "int8_dynamic", "fp16")
    args = build_parser().parse_args(["search", "--budget", "b.yaml", "--quantize",
                                      "int8_static,fp16"])
    with pytest.raises(ConfigError) as err:
        search_config(args, budget)
    assert str(err.value) == (
        "--quantize: runtime litert-micro runs int8_static only (LiteRT for Microcontrollers "
        "has no kernels for dynamic-range (hybrid) or float16 files), got 'int8_static,fp16'")



def test_the_device_without_the_runtime_is_named_with_the_install_command(monkeypatch, capsys):
    """What the ssh source runs on the device to check it (``remote --check --runtime``)."""
    from edgeslim.evaluators import remote

    monkeypatch.setattr("edgeslim.runtimes.find_spec", lambda name: None)
    with pytest.raises(SystemExit) as exit_:
        remote.main(["--check", "--runtime", "litert"])
    # The device runs LiteRT files: it needs the interpreter, not the converter.
    assert str(exit_.value).startswith("runtime litert needs ai-edge-litert, not installed")
    assert "install with: uv sync --extra litert on " in str(exit_.value)

def test_the_plan_offers_a_litert_budget_a_profile_or_ssh_and_a_microcontroller_neither(
        monkeypatch):
    from edgeslim.search.plan import host_line

    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    budget = parse_budget({"device": "Raspberry Pi 4", "runtime": {"name": "litert"},
                           "limits": {"latency": "5ms"}})
    assert host_line(budget) == (
        "latency is timed on this x86_64 host, not on Raspberry Pi 4 (an Arm device): its "
        "figures are this host's; for the device's, make a profile on the board (optimize "
        "profile, then latency: {source: profile}) or time on it over ssh (latency: {source: "
        "ssh})")
    budget = parse_budget({"device": {"name": "a board", "cpu": "Arm Cortex-M4F"},
                           "runtime": {"name": "litert-micro"}, "limits": {"latency": "5ms"}})
    assert host_line(budget).endswith(
        "for the device's, a microcontroller runs no Python to time on, so take it as a "
        "relative figure (LiteRT for Microcontrollers' reference kernels on this host)")


# --- the runtimes themselves ------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The toy PlainNet (1x8x8 input) as ONNX and as LiteRT files: float32, int8 (float input
    and output), int8 with int8 input and output, and dynamic-range int8."""
    from edgeslim.litert import onnx_to_tflite

    tmp = tmp_path_factory.mktemp("litert")
    torch.manual_seed(0)
    model = PlainNet(1).eval()
    onnx_path = write_onnx(model, torch.zeros(1, 1, 8, 8), tmp / "plain.onnx")
    calibration = [np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)]
    out = {"onnx": onnx_path}
    for name, mode, io in (("fp32", "none", False), ("int8", "int8_static", False),
                           ("int8_io", "int8_static", True),
                           ("dynamic", "int8_dynamic", False)):
        out[name] = onnx_to_tflite(onnx_path, tmp / f"{name}.tflite", mode,
                                   iter(calibration), int8_io=io)
    return out


def _inputs(n: int = 8) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 1, 8, 8)).astype(np.float32)


@needs_litert
@pytest.mark.parametrize("runtime", ["litert", "litert-micro"])
def test_the_float_file_computes_what_onnxruntime_computes(files, runtime):
    from edgeslim.evaluators.litert import open_runner
    from edgeslim.export import ort_session

    runner, session = open_runner(files["fp32"], runtime), ort_session(files["onnx"])
    for x in _inputs():
        expected = session.run(None, {"input": x[None]})[0]
        assert np.abs(runner.run(x[None]) - expected).max() < 1e-4


@needs_litert
def test_int8_files_are_full_integer_with_float_or_int8_io(files):
    from ai_edge_litert.interpreter import Interpreter

    def io_types(path: Path) -> tuple[str, str, set[str]]:
        it = Interpreter(model_path=str(path))
        kinds = {np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
        return (np.dtype(it.get_input_details()[0]["dtype"]).name,
                np.dtype(it.get_output_details()[0]["dtype"]).name, kinds)

    # Float at the edges (quantized on entry, dequantized on exit), int8 inside.
    assert io_types(files["int8"])[:2] == ("float32", "float32")
    assert "int8" in io_types(files["int8"])[2]
    assert io_types(files["int8_io"])[:2] == ("int8", "int8")
    assert io_types(files["fp32"]) == ("float32", "float32", {"float32", "int32"})


@needs_litert
@pytest.mark.parametrize("runtime", ["litert", "litert-micro"])
def test_int8_io_gives_the_same_logits_within_one_output_step(files, runtime):
    from edgeslim.evaluators.litert import open_runner

    floating, integer = open_runner(files["int8"], runtime), open_runner(files["int8_io"],
                                                                         runtime)
    details = integer.interpreter.get_output_details(0) if runtime == "litert-micro" \
        else integer.interpreter.get_output_details()[0]
    step = float(details["quantization_parameters"]["scales"][0])
    for x in _inputs():
        assert np.abs(floating.run(x[None]) - integer.run(x[None])).max() <= step * 1.001


@needs_litert
def test_accuracy_in_litert_equals_onnxruntime_on_the_float_file(files, digits):
    from edgeslim.evaluators.accuracy import onnx_accuracy
    from edgeslim.evaluators.litert import litert_accuracy

    split = Split(digits.val.x[:64], digits.val.y[:64])
    expected = onnx_accuracy(files["onnx"], split, digits)
    assert litert_accuracy(files["fp32"], split, digits, "litert") == expected
    assert litert_accuracy(files["fp32"], split, digits, "litert-micro") == expected


@needs_litert
def test_the_micro_arena_holds_the_largest_layer_input_and_output(files):
    from edgeslim.evaluators.litert import micro_arena_bytes

    # conv2 reads conv1's 16x8x8 output and writes 32x8x8: both live at once, 1 byte each in
    # int8 (3,072 bytes), 4 each in float32 (12,288 bytes).
    int8, fp32 = (micro_arena_bytes(files[k], (1, 8, 8)) for k in ("int8", "fp32"))
    assert 3072 <= int8 < fp32
    assert fp32 >= 12288


@needs_litert
def test_measures_in_litert_micro_are_the_arena_and_the_file(files, digits):
    from edgeslim.budget import Runtime
    from edgeslim.evaluators.litert import measure_litert_file, micro_arena_bytes
    from edgeslim.evaluators.memory import memory_bytes

    split = Split(digits.val.x[:16], digits.val.y[:16])
    values, info = measure_litert_file(files["int8"], files["onnx"], digits,
                                       Runtime("litert-micro"), split)
    arena, size = micro_arena_bytes(files["int8"], (1, 8, 8)), files["int8"].stat().st_size
    weights, activations = memory_bytes(files["onnx"])
    assert (values["activation_bytes"], values["peak_memory_bytes"], values["size_bytes"]) == \
        (arena, arena + size, size)
    assert (info["micro_arena_bytes"], info["onnx_activation_bytes"],
            info["onnx_peak_memory_bytes"]) == (arena, activations, weights + activations)
    assert info["latency_source"] == "host (litert-micro)" and info["latency_threads"] == 1
    assert info["latency_runs"] >= 30


@needs_litert
def test_the_base_model_is_measured_in_the_budgets_runtime(digits, tmp_path):
    import dataclasses
    from types import SimpleNamespace

    from edgeslim.evaluators.litert import micro_arena_bytes
    from edgeslim.search._prepare import base_test_accuracy, measure_base

    torch.manual_seed(0)
    data = dataclasses.replace(digits, test=digits.val)  # test accuracy must equal val's
    budget = parse_budget({"device": DEVICE, "runtime": {"name": "litert-micro"}})
    model = PlainNet(1).eval()
    values = measure_base(SimpleNamespace(model=model), data, budget, tmp_path)
    tflite = tmp_path / "base.tflite"
    assert "test_acc" not in values  # taken for the card at export
    assert base_test_accuracy(model, data, budget.runtime, tmp_path / "t") == values["val_acc"]
    assert values["activation_bytes"] == micro_arena_bytes(tflite, (1, 8, 8))
    assert values["size_bytes"] == tflite.stat().st_size
    assert "latency_ms" not in values  # the budget does not ask for it


@needs_litert
def test_litert_micro_refuses_a_hybrid_file_naming_the_node(files):
    from edgeslim.evaluators.litert import open_runner

    with pytest.raises(CandidateError, match=re.escape(
            "litert-micro rejected the artifact dynamic.tflite: ") + ".*Hybrid models are not "
            r"supported on TFLite Micro\. Node CONV_2D \(number \d+\) failed to prepare"):
        open_runner(files["dynamic"], "litert-micro")


@needs_litert
def test_an_operator_the_converter_lacks_fails_the_candidate_naming_it(tmp_path):
    from edgeslim.litert import onnx_to_tflite

    class Gelu(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(x).flatten(1)

    path = write_onnx(Gelu(), torch.zeros(1, 1, 8, 8), tmp_path / "gelu.onnx")
    with pytest.raises(CandidateError) as err:
        onnx_to_tflite(path, tmp_path / "gelu.tflite", "int8_static", iter([_inputs()]))
    assert str(err.value) == ("LiteRT conversion failed: ConverterError: 'tf.Erf' op is "
                              "neither a custom op nor a flex op")
    assert not (tmp_path / "gelu.tflite").exists()


@needs_litert
def test_an_onnx_operator_onnx2tf_lacks_fails_the_candidate_naming_it(tmp_path):
    from edgeslim.litert import onnx_to_tflite

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Bogus", ["input"], ["logits"])], "g",
                              [value("input", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [value("logits", TensorProto.FLOAT, [1, 1, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "bogus.onnx")
    with pytest.raises(CandidateError) as err:
        onnx_to_tflite(tmp_path / "bogus.onnx", tmp_path / "b.tflite")
    assert str(err.value) == "LiteRT conversion failed: onnx2tf cannot convert the ONNX " \
        "operator Bogus"


@needs_litert
@pytest.mark.slow
def test_pytorch_compilers_load_after_a_conversion_in_the_same_process():
    """TensorFlow and Triton both carry LLVM; loaded in the wrong order the process aborts."""
    code = ("from edgeslim.litert import _tensorflow\n_tensorflow()\n"
            "import torch._dynamo, torchvision.ops\nprint('loaded')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode, proc.stdout) == (0, "loaded\n"), proc.stderr[-2000:]


# --- a search ----------------------------------------------------------------------------------

@needs_litert
@pytest.mark.slow
def test_a_search_in_litert_micro_records_the_arena_of_each_trial(workdir, tmp_path):
    from edgeslim.search.config import default_storage
    from edgeslim.search.storage import load_study

    budget = tmp_path / "mcu.yaml"
    budget.write_text("device: {name: a board, memory: 256KB}\n"
                      "runtime: {name: litert-micro}\n"
                      "limits: {activation_memory: 160KB}\nobjectives: [activation_memory]\n")
    assert main(["--budget", str(budget), "--trials", "1", "--workdir", str(workdir),
                 "--order", "prune,quantize", "--quantize", "int8_static",
                 "--no-references", "--finalists", "0"]) == 0
    study = load_study(None, default_storage(workdir))
    trial = study.trials[0]
    attrs = trial.user_attrs
    assert attrs["runtime"] == "litert-micro"
    assert attrs["activation_bytes"] == attrs["micro_arena_bytes"] > 0
    assert attrs["onnx_activation_bytes"] > 0
    assert attrs["candidate"]["quantize"] == "int8_static"
    assert study.user_attrs["base"]["activation_bytes"] > 0

    out = tmp_path / "best"
    assert main(["export", "--workdir", str(workdir), "--out", str(out), "--trial", "0"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert (card["files"]["deployable"], card["files"]["tflite"]) == ("model.tflite",) * 2
    assert card["measured_on"]["runtime"].startswith("LiteRT for Microcontrollers")
    assert card["preprocessing"]["tflite_input_shape"] == [1, 8, 8, 1]
    # Measured again on the exported file, in the same runtime: the same arena and accuracy.
    assert card["measures"]["activation_bytes"]["value"] == attrs["micro_arena_bytes"]
    assert card["measures"]["val_acc"]["value"] == attrs["val_acc"]
    assert card["measures"]["size_bytes"]["value"] == (out / "model.tflite").stat().st_size
    assert card["litert_vs_pytorch"]["runtime"] == "litert-micro"
    assert card["litert_vs_pytorch"]["argmax_agree"] >= 0.9
    assert card["onnx_vs_pytorch"]["pass"] is True
    _readme_example_classifies_like_the_runtime(out / "model.tflite", tmp_path)



@pytest.mark.slow
def test_a_pi4_study_exports_for_the_microcontroller_without_training(searched, tmp_path):
    """The digits study searched under budgets/pi4.yaml (onnxruntime) exported for
    budgets/mcu.yaml (LiteRT for Microcontrollers): the int8 file is made again from a
    trial's float weights, and the card's arena is what that runtime reports for it."""
    from edgeslim.data import load_dataset
    from edgeslim.evaluators.litert import litert_accuracy, micro_arena_bytes
    from edgeslim.search.config import default_storage
    from edgeslim.search.storage import load_study

    study = load_study(None, default_storage(searched))
    int8 = {t.number for t in study.trials if t.user_attrs.get("finetuned")
            and t.user_attrs["candidate"]["quantize"] == "int8_static"}
    out = tmp_path / "mcu"
    assert main(["export", "--budget", str(REPO / "budgets" / "mcu.yaml"),
                 "--workdir", str(searched), "--out", str(out)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert (card["chosen_for"], card["searched_for"]) == ("mcu", "pi4")
    assert card["trial"] in int8  # LiteRT Micro runs int8 files only
    assert card["measured_on"]["runtime"].startswith("LiteRT for Microcontrollers")
    tflite = out / "model.tflite"
    assert card["measures"]["activation_bytes"]["value"] == micro_arena_bytes(tflite, (1, 8, 8))
    data = load_dataset("digits", Path("unused"))
    assert card["measures"]["val_acc"]["value"] == litert_accuracy(tflite, data.val, data,
                                                                   "litert-micro")
    assert set(card["limits"]) == {"params", "size_bytes", "activation_bytes", "accuracy_drop"}
    assert card["fits_budget"] == all(v["pass"] for v in card["limits"].values())

def _readme_example_classifies_like_the_runtime(tflite: Path, folder: Path) -> None:
    """The LiteRT example of docs/deployment.md, run as written in a fresh process beside
    ``best/``."""
    from PIL import Image

    from edgeslim.data import load_dataset
    from edgeslim.evaluators.litert import open_runner

    data = load_dataset("digits", Path("unused"))
    pixels = data.val.x[7]  # uint8, 1 x 8 x 8
    Image.fromarray(pixels[0].numpy(), mode="L").save(folder / "digit.png")
    logits = open_runner(tflite, "litert").run(data.normalize(pixels[None]).numpy())
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "deployment.md").read_text(),
                        re.S)
    code = [b for b in blocks if "ai_edge_litert" in b]
    assert len(code) == 1
    proc = subprocess.run([sys.executable, "-I", "-c", code[0]], capture_output=True,
                          text=True, cwd=folder, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == f"{data.class_names[int(logits.argmax())]}\n"


@pytest.mark.slow
def test_a_litert_profile_predicts_what_a_litert_search_records(tmp_path):
    """``optimize profile --runtime litert`` times every layer configuration and the whole
    models as LiteRT files in LiteRT; a search with ``runtime: litert`` and that profile
    predicts each candidate's latency from its float graph and quantization mode."""
    import onnx

    from edgeslim.evaluators.profile import load_profile
    from edgeslim.search.config import default_storage
    from edgeslim.search.storage import load_study

    plain = f"{REPO / 'tests' / 'toys.py'}:plain_net"
    profile = tmp_path / "litert.json"
    assert main(["profile", "--runtime", "litert", "--out", str(profile), "--model", plain,
                 "--input-shape", "1x8x8", "--quantize", "none,int8_static", "--threads", "1",
                 "--models", "6", "--holdout", "3", "--layer-seconds", "0.05",
                 "--model-seconds", "0.1"]) == 0
    loaded = load_profile(profile)
    assert (loaded.runtime, loaded.modes) == ("litert", ("none", "int8_static"))
    assert all(ms > 0 for table in loaded.layers.values() for ms in table.values())
    assert {m: len(e["models"]) for m, e in loaded.error.items()} == {"none": 6,
                                                                     "int8_static": 6}
    budget = tmp_path / "b.yaml"
    budget.write_text(f"device: {{name: board}}\nruntime: {{name: litert, threads: 1}}\n"
                      f"latency: {{source: profile, profile: {profile}}}\n"
                      "limits: {latency: 5ms}\nobjectives: [latency]\n")
    workdir = tmp_path / "w"
    assert main(["--budget", str(budget), "--model", plain, "--workdir", str(workdir),
                 "--trials", "2", "--finetune-steps", "2", "--order", "prune,quantize",
                 "--quantize", "int8_static", "--no-references", "--finalists", "0",
                 "--study-name", "p"]) == 0
    study = load_study("p", default_storage(workdir))
    base = workdir / "base" / "base.onnx"
    assert study.user_attrs["base"]["latency_ms"] == pytest.approx(
        loaded.predict_ms(onnx.load(str(base)), "none"))
    trials = [t for t in study.trials
              if t.user_attrs.get("finetuned") and "duplicate_of" not in t.user_attrs]
    assert trials
    from edgeslim.search.retarget import download_trial_artifact
    from edgeslim.ship.exporter import rebuild_model

    for t in trials:
        assert t.user_attrs["latency_source"] == "profile"
        assert t.user_attrs["latency_runs"] == 0
        # The prediction of the trial's float graph in its mode: what the search recorded.
        folder = tmp_path / f"t{t.number}"
        folder.mkdir()
        model = rebuild_model(study, t, download_trial_artifact(study, t, "model_state.pt",
                                                                folder))
        graph = write_onnx(model, torch.zeros(1, 1, 8, 8), folder / "float.onnx")
        assert t.user_attrs["latency_ms"] == pytest.approx(
            loaded.predict_ms(onnx.load(str(graph)), "int8_static"))
