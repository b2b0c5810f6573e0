"""Latency sources: noise handling on the host, and device profiles (built, predicted, checked)."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from scipy.stats import spearmanr

from edgeslim.cli import main
from edgeslim.compress.prune import apply_pruning, prunable_groups
from edgeslim.errors import ConfigError
from edgeslim.evaluators import latency as latency_module
from edgeslim.evaluators.latency import (
    LatencyResult,
    available_cores,
    measure_latency,
    time_interleaved,
)
from edgeslim.evaluators.profile import graph_mode, layer_signatures, load_profile
from edgeslim.evaluators.profile_build import (
    ROUNDS,
    ProfileOptions,
    build_profile,
    layer_configurations,
)
from edgeslim.export import write_onnx
from edgeslim.models import build_model
from edgeslim.search.config import default_storage
from edgeslim.search.storage import load_study
from toys import REPO, PlainNet

PLAIN = f"{REPO / 'tests' / 'toys.py'}:plain_net"


@pytest.fixture
def plain_onnx(tmp_path):
    return write_onnx(PlainNet().eval(), torch.zeros(1, 1, 8, 8), tmp_path / "plain.onnx")


def test_host_timing_caps_threads_and_stops_in_whole_blocks(plain_onnx):
    result = measure_latency(plain_onnx, None, threads=999, max_spread=10.0)
    assert result.threads == available_cores() and result.threads_requested == 999
    assert result.capped and result.source == "host" and result.attempts == 1
    assert result.runs >= 30 and result.runs % latency_module.BLOCK == 0
    assert result.latency_ms == result.p10_ms <= result.median_ms <= result.p90_ms


def _fake_timings(monkeypatch, spreads):
    calls = iter(spreads)

    def fake(*args, **kwargs):
        spread = next(calls)
        return LatencyResult(1.0, 1.0 - spread / 2, 1.0 + spread / 2, 30, 1, 1)

    monkeypatch.setattr(latency_module, "time_once", fake)


def test_a_wide_timing_is_redone_and_the_narrower_kept(monkeypatch, plain_onnx):
    _fake_timings(monkeypatch, [0.6, 0.1])
    result = measure_latency(plain_onnx, (1, 8, 8), 1, max_spread=0.25)
    assert (result.attempts, result.unstable, result.spread) == (2, False, pytest.approx(0.1))


def test_a_timing_still_wide_after_the_retry_is_flagged(monkeypatch, plain_onnx):
    _fake_timings(monkeypatch, [0.6, 0.4])
    result = measure_latency(plain_onnx, (1, 8, 8), 1, max_spread=0.25)
    assert (result.attempts, result.unstable, result.spread) == (2, True, pytest.approx(0.4))


def test_layer_signatures_read_the_graph(plain_onnx):
    assert layer_signatures(onnx.load(str(plain_onnx))) == [
        "conv2d cin=1 in=8x8 cout=16 k=3x3 s=1x1 p=1x1 d=1x1 g=1",
        "conv2d cin=16 in=8x8 cout=32 k=3x3 s=1x1 p=1x1 d=1x1 g=1",
        "fc in=32 out=10",
    ]
    assert graph_mode(onnx.load(str(plain_onnx))) == "none"


def test_layer_configurations_cover_every_channel_count_the_space_allows():
    # conv1 keeps 8 or 16 of 16 channels, conv2 8, 16, 24 or 32 of 32 (ratios 0 to 0.8 by
    # 0.05, multiples of 8): conv1 2 configs, conv2 2 x 4, fc (reads conv2) 4.
    specs = layer_configurations(ProfileOptions(model=PLAIN, input_shape=(1, 8, 8)))
    sigs = sorted(s["cin"] * 1000 + s["cout"] for s in specs)
    assert len(specs) == 14
    assert sigs == sorted([1016, 1008] + [c * 1000 + o for c in (8, 16) for o in (8, 16, 24, 32)]
                          + [c * 1000 + 10 for c in (8, 16, 24, 32)])


def _write_profile(tmp_path, **changes):
    raw = json.loads((tmp_path / "p.json").read_text()) if (tmp_path / "p.json").exists() else {}
    raw.update(changes)
    path = tmp_path / "q.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def plain_profile(tmp_path_factory):
    opts = ProfileOptions(model=PLAIN, input_shape=(1, 8, 8), modes=("none", "int8_static"),
                          threads=1, models=6, holdout=3, layer_seconds=0.05,
                          model_seconds=0.1)
    path = tmp_path_factory.mktemp("profile") / "p.json"
    path.write_text(json.dumps(build_profile(opts)))
    return path


def test_profile_file_holds_its_tables_fit_and_error(plain_profile):
    profile = load_profile(plain_profile)
    assert profile.modes == ("none", "int8_static")
    assert all(len(table) == 14 for table in profile.layers.values())
    for mode in profile.modes:
        assert profile.error[mode]["held_out_models"] == 3
        assert len(profile.error[mode]["models"]) == 6


@pytest.mark.parametrize("text,message", [
    ("{", "is not valid JSON (a damaged or truncated profile? make it again with "
          "`optimize profile`)"),
    ('{"format": "something-else"}', "is not an edgeslim latency profile"),
    ('{"format": "edgeslim-latency-profile", "version": 99}',
     "has format version 99; this edgeslim reads version 1"),
    ('{"format": "edgeslim-latency-profile", "version": 1, "runtime": "onnxruntime"}',
     "is damaged (bad or missing field 'runtime_version')"),
])
def test_a_bad_profile_file_is_named_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(info.value) == f"latency.profile: {path} {message}"


def test_a_profile_for_another_setup_is_refused(plain_profile):
    profile = load_profile(plain_profile)
    args = dict(runtime="onnxruntime", threads=1, model=PLAIN, input_shape=(1, 8, 8),
                num_classes=10, round_to=8, max_ratio=0.8, modes=("none",))
    profile.check(**args)  # the setup it was made for
    for change, what in [({"runtime": "tflite"}, "runtime onnxruntime, the search uses tflite"),
                         ({"model": "resnet20"}, f"model {PLAIN}, the search uses resnet20"),
                         ({"threads": 4}, "threads 1, the search uses 4"),
                         ({"round_to": 16}, "--round-to 8, the search uses 16"),
                         ({"modes": ("none", "fp16")},
                          "quantization modes none,int8_static, the search uses none,fp16")]:
        with pytest.raises(ConfigError) as info:
            profile.check(**{**args, **change})
        assert str(info.value) == (f"latency.profile: {plain_profile} was made for {what}; "
                                   "run `optimize profile` for this setup")


def test_search_with_a_profile_for_another_model_exits_2(plain_profile, tmp_path, capsys):
    budget = tmp_path / "b.yaml"
    budget.write_text(f"device: {{name: board}}\nruntime: {{threads: 1}}\n"
                      f"latency: {{source: profile, profile: {plain_profile}}}\n")
    code = main(["--budget", str(budget), "--workdir", str(tmp_path / "w"), "--trials", "1"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"optimize: error: latency.profile: {plain_profile} was made for model {PLAIN}, the "
        "search uses resnet20; run `optimize profile` for this setup\n")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("runtime", ["tflite", "litert-micro"])
def test_profile_command_refuses_an_unknown_runtime(tmp_path, capsys, runtime):
    code = main(["profile", "--runtime", runtime, "--out", str(tmp_path / "p.json")])
    assert code == 2
    assert capsys.readouterr().err == (
        f"optimize: error: --runtime: must be one of onnxruntime, litert, got {runtime!r} (a "
        "profile times layers on the board, as ONNX files in onnxruntime or as LiteRT files "
        "in LiteRT)\n")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.slow
def test_profile_predicts_unseen_resnet20_candidates(tmp_path):
    """A profile of this machine predicts candidates it has not seen: median absolute error at
    most 10% and Spearman rank correlation at least 0.9 against their measured latency."""
    base = build_model("resnet20", 3, 10).eval()
    example = torch.zeros(1, 3, 32, 32)
    groups = prunable_groups(base, example, 10, 8)
    rng = np.random.default_rng(1234)  # not the profile's seed: other candidates
    paths = []
    for i in range(16):
        model = copy.deepcopy(base)
        ratios = {g.name: float(rng.choice(np.arange(0, 0.85, 0.05))) for g in groups}
        apply_pruning(model, example, ratios, "l1", 8)
        paths.append((write_onnx(model, example, tmp_path / f"c{i}.onnx"), (3, 32, 32)))
    # The candidates are timed as the profile's models are: together, in turns, in several
    # windows, each keeping its fastest. A window follows each of the profile's own passes over
    # its models, so candidates and profile are timed in the same spells of other work on a
    # shared host, with one more window before and one after.
    windows = [time_interleaved(paths, 1, seconds=3.0)]

    def window_after_each_model_pass(phase: str, done: int, total: int) -> None:
        if phase == "models":
            windows.append(time_interleaved(paths, 1, seconds=3.0))

    opts = ProfileOptions(model="resnet20", input_shape=(3, 32, 32), modes=("none",),
                          threads=1, models=10, holdout=4, layer_seconds=0.3,
                          model_seconds=1.0)
    built = build_profile(opts, progress=window_after_each_model_pass)
    (tmp_path / "profile.json").write_text(json.dumps(built))
    profile = load_profile(tmp_path / "profile.json")
    windows.append(time_interleaved(paths, 1, seconds=3.0))
    assert len(windows) == 2 + ROUNDS
    measured = np.min([[t.latency_ms for t in w] for w in windows], axis=0)
    predicted = [profile.predict_ms(onnx.load(str(p))) for p, _ in paths]
    errors = np.abs(np.array(predicted) - measured) / np.array(measured)
    rho = spearmanr(predicted, measured).statistic
    detail = f"predicted {np.round(predicted, 3)}, measured {np.round(measured, 3)}"
    assert np.median(errors) <= 0.10, f"median error {np.median(errors):.3f}: {detail}"
    assert rho >= 0.9, f"Spearman {rho:.3f}: {detail}"


def test_search_predicts_latency_from_a_matching_profile(plain_profile, tmp_path):
    budget = tmp_path / "b.yaml"
    budget.write_text(f"device: {{name: board}}\nruntime: {{threads: 1}}\n"
                      f"latency: {{source: profile, profile: {plain_profile}}}\n"
                      "limits: {latency: 5ms}\nobjectives: [latency]\n")
    workdir = tmp_path / "w"
    code = main(["--budget", str(budget), "--model", PLAIN, "--workdir", str(workdir),
                 "--trials", "2", "--finetune-steps", "2", "--quantize", "int8_static",
                 "--no-references", "--study-name", "p"])
    assert code == 0
    study = load_study("p", default_storage(workdir))
    profile = load_profile(plain_profile)
    base = workdir / "base" / "base.onnx"
    assert study.user_attrs["base"]["latency_ms"] == pytest.approx(
        profile.predict_ms(onnx.load(str(base))))
    for t in study.trials:
        assert t.user_attrs["latency_source"] == "profile"
        assert t.user_attrs["latency_runs"] == 0


@pytest.mark.parametrize("options,message", [
    (["--quantize", "int4"], "--quantize: must be among none, int8_static, int8_dynamic, fp16, "
                             "got 'int4'"),
    (["--models", "5", "--holdout", "4"], "--models/--holdout: need at least 3 held-out models "
                                          "and 2 more to fit, got 5 models with 4 held out"),
    (["--input-shape", "3x0x32"], "--input-shape: must be CxL, CxHxW or CxDxHxW with positive "
                                  "sizes, got '3x0x32'"),
])
def test_profile_command_refuses_bad_options_before_timing(tmp_path, capsys, options, message):
    code = main(["profile", "--out", str(tmp_path / "p.json"), *options])
    assert code == 2
    assert capsys.readouterr().err == f"optimize: error: {message}\n"
    assert not (tmp_path / "p.json").exists()


def test_a_linear_layer_applied_at_every_position_is_keyed_by_its_rows(tmp_path):
    # Like ConvNeXt's pointwise layers: a Linear over the last axis of a 1x4x8 tensor does the
    # work of 4 rows, so it must not share a table entry with a Linear on one 8-vector.
    path = write_onnx(torch.nn.Linear(8, 16).eval(), torch.zeros(1, 4, 8), tmp_path / "l.onnx")
    assert layer_signatures(onnx.load(str(path))) == ["fc rows=4 in=8 out=16"]


def test_the_remote_timer_tells_a_refused_file_from_a_failing_device(tmp_path, capsys):
    """What the ssh source runs on the device: a file the runtime refuses exits with
    ``REFUSED_EXIT`` (the host fails the candidate), anything else is the device's failure."""
    import onnx
    from onnx import TensorProto, helper

    from edgeslim.evaluators import remote

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="edgeslim.test")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("edgeslim.test", 1)])
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(SystemExit) as exit_:
        remote.main([str(bad), "--threads", "1"])
    assert exit_.value.code == remote.REFUSED_EXIT
    assert "bad.onnx" in capsys.readouterr().err
