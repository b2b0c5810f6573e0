"""``optimize plan``: what the search space reaches against each limit, before training, and a
budget no candidate can meet refused before the base model trains."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from edgeslim._options import search_config
from edgeslim.budget import load_budget
from edgeslim.cli import build_parser, main
from edgeslim.data.synthetic_har import write_npz
from edgeslim.evaluators import MODEL_MEASURES
from edgeslim.models import build_model
from edgeslim.search.extremes import extreme_candidates, measure_candidate
from edgeslim.search.plan import EVERY, NONE, SOME, LimitPlan, Plan, host_line, make_plan
from edgeslim.search.study import latency_meter, load_inputs
from edgeslim.spaces import PruningSpace, StagedSpace, WeightLayer
from toys import PI4, REPO, plain_net

MCU = REPO / "budgets" / "mcu.yaml"


def _config(tmp_path: Path, budget: Path, *extra: str):
    args = build_parser().parse_args(["plan", "--budget", str(budget), "--workdir",
                                      str(tmp_path / "w"), "--trials", "4", *extra])
    return search_config(args)


def test_extreme_candidates_of_a_toy_space():
    model = plain_net()
    pruning = PruningSpace.from_model(model, torch.zeros(1, 1, 8, 8), 10, round_to=8,
                                      max_ratio=0.5, step=0.25, importances=("l1",))
    layers = (WeightLayer("conv1", 144), WeightLayer("fc", 640))
    space = StagedSpace.for_stages(pruning, layers, stages=("prune", "cluster", "quantize"),
                                   cluster_counts=(8, 16), quant_modes=("int8_static", "fp16"))
    least, most = extreme_candidates(space)
    assert [(c.order, c.quantize, dict(c.cluster_counts)) for c in least] == [
        (("prune",), "none", {}), (("quantize",), "int8_static", {}),
        (("quantize",), "fp16", {})]
    assert all(r == 0.0 for c in least for _, r in c.prune_ratios)
    assert [(c.order, c.quantize, dict(c.cluster_counts)) for c in most] == [
        (("prune", "cluster", "quantize"), "int8_static", {"conv1": 8, "fc": 8}),
        (("prune", "cluster", "quantize"), "fp16", {"conv1": 8, "fc": 8}),
        (("prune",), "none", {})]
    assert {r for c in most for _, r in c.prune_ratios} == {0.5}


def test_host_line_for_an_arm_board_timed_on_x86(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert host_line(load_budget(PI4)) == (
        "latency is timed on this x86_64 host, not on Raspberry Pi 4 Model B (4 GB) (an Arm "
        "device): its figures are this host's; for the device's, make a profile on the board "
        "(optimize profile, then latency: {source: profile}) or time on it over ssh (latency: "
        "{source: ssh})")
    assert host_line(load_budget(MCU)) is None  # no latency limit, nothing timed
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert host_line(load_budget(PI4)) is None


def _measured_sample(config, n: int) -> list[dict[str, float]]:
    """``n`` candidates the search could sample (a random sampler on the space), measured
    as the plan measures its extremes."""
    data, space = load_inputs(config)
    model = build_model(config.model, data.in_channels, data.num_classes)
    from edgeslim.evaluators import Caps, StagedEvaluator

    evaluator = StagedEvaluator(model, data, config.finetune, config.budget.runtime, Caps(),
                                meter=latency_meter(config, data), timed=False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        candidate = space(study.ask())
        out.append(measure_candidate(evaluator, candidate, config.workdir, timed=False))
    return out


def test_plan_mcu_resnet20_on_digits(tmp_path):
    config = _config(tmp_path, MCU)
    data, space = load_inputs(config)
    model = build_model("resnet20", data.in_channels, data.num_classes)
    plan = make_plan(config, data, space, model, None)
    by = {lim.measure: lim for lim in plan.limits}
    params = MODEL_MEASURES["params"](model, torch.zeros(1, *data.input_shape)).value
    assert by["params"].base == params
    assert (by["params"].verdict, by["activation_bytes"].verdict, by["size_bytes"].verdict) \
        == (EVERY, EVERY, SOME)
    assert by["params"].high == params and by["params"].low < params / 4
    assert by["size_bytes"].low < 600e3 < by["size_bytes"].high
    assert (by["params"].source, by["size_bytes"].source, by["activation_bytes"].source) == (
        "counted in PyTorch", "the exported file's length",
        "the tensor arena LiteRT for Microcontrollers plans")
    assert plan.host_line is None and plan.trial_seconds > 0
    # What the search samples lies within the planned range.
    config.workdir.mkdir(parents=True)
    for values in _measured_sample(config, 2):
        for lim in plan.limits:
            assert lim.low <= values[lim.measure] <= lim.high


def test_plan_mcu_cnn1d(tmp_path):
    path = write_npz(tmp_path / "har.npz", 240, 60)
    config = _config(tmp_path, MCU, "--model", "cnn1d", "--dataset", f"npz:{path}")
    data, space = load_inputs(config)
    model = build_model("cnn1d", data.in_channels, data.num_classes)
    plan = make_plan(config, data, space, model, None)
    by = {lim.measure: lim for lim in plan.limits}
    # cnn1d: 9*64*7 + 64*64*5 + 64*128*5 + 128*128*3 conv weights and biases, batch norms,
    # a 128 x 6 classifier: 95.6K parameters, under 500K whatever is pruned.
    assert by["params"].verdict == EVERY
    assert by["activation_bytes"].verdict in (EVERY, SOME)
    assert by["size_bytes"].verdict == EVERY  # 95.6K fp32 weights are 383 kB < 600 kB


def test_unreachable_budget_stops_the_search_before_training(tmp_path, capsys):
    budget = tmp_path / "tiny.yaml"
    budget.write_text("device: a tiny board\nlimits: {activation_memory: 100B}\n")
    workdir = tmp_path / "w"
    code = main(["--budget", str(budget), "--workdir", str(workdir), "--trials", "2"])
    out = capsys.readouterr()
    assert code == 2
    assert out.err.startswith("optimize: error: no candidate can meet the budget: "
                              "activation_bytes 0.1 kB is below the smallest the space "
                              "reaches (")
    assert out.err.endswith("; a higher --max-ratio (now 0.8) or a smaller model than resnet20 "
                            "would help\n")
    assert "activation_bytes: limit 0.1 kB" in out.out and "unreachable" in out.out
    assert not (workdir / "cache" / "base").exists()  # no base model was trained


@pytest.mark.slow
def test_plan_pi4_vgg16_bn(tmp_path, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    config = _config(tmp_path, PI4, "--model", "vgg16_bn")
    data, space = load_inputs(config)
    model = build_model("vgg16_bn", data.in_channels, data.num_classes)
    plan = make_plan(config, data, space, model, latency_meter(config, data))
    by = {lim.measure: lim for lim in plan.limits}
    # Relative params and MACs limits (50%): the unpruned candidates break them, pruned ones
    # meet them; 8 MB of file is only met compressed; latency is timed on this host.
    assert (by["params"].verdict, by["macs"].verdict) == (SOME, SOME)
    assert by["size_bytes"].verdict == SOME
    assert by["latency_ms"].source == "timed on this host"
    assert plan.host_line is not None and plan.host_line.startswith("latency is timed on this")



def test_the_plan_verdicts_hold_for_what_a_search_found(searched, tmp_path):
    """The plan of the digits search under budgets/pi4.yaml, against the trials that search
    recorded (``searched``): every trial lies in the planned range of each limited measure,
    and a limit every candidate meets is met by every trial."""
    from edgeslim.search.config import default_storage
    from edgeslim.search.storage import load_study

    config = _config(tmp_path, PI4)
    data, space = load_inputs(config)
    model = build_model("resnet20", data.in_channels, data.num_classes)
    plan = make_plan(config, data, space, model, latency_meter(config, data))
    study = load_study(None, default_storage(searched))
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert trials
    by = {lim.measure: lim for lim in plan.limits}
    assert (by["params"].verdict, by["macs"].verdict) == (SOME, SOME)
    for lim in plan.limits:
        # Latency is timed again at another moment: a timing's spread on a shared host.
        slack = 0.5 if lim.measure == "latency_ms" else 1e-6
        for t in trials:
            value = t.user_attrs[lim.measure]
            assert lim.low * (1 - slack) <= value <= lim.high * (1 + slack), (lim, t.number)
            if lim.verdict == EVERY:
                assert t.constraints[lim.measure] <= 0, (lim, t.number)


def _search_within_plan(tmp_path: Path, budget: Path, *extra: str) -> None:
    """Plans ``budget`` for the options ``extra``, runs a short search with them, and checks
    the plan against what the search recorded: every complete trial lies within the planned
    range of each limited measure, and a limit every candidate meets is met by every trial."""
    from edgeslim.search.config import default_storage
    from edgeslim.search.storage import load_study

    config = _config(tmp_path, budget, *extra)
    data, space = load_inputs(config)
    model = build_model(config.model, data.in_channels, data.num_classes)
    plan = make_plan(config, data, space, model, latency_meter(config, data))
    workdir = tmp_path / "search"
    assert main(["--budget", str(budget), "--workdir", str(workdir), "--trials", "3",
                 "--finetune-steps", "2", "--base-epochs", "1", "--finalists", "0",
                 "--screen", "0", "--study-name", "s", *extra]) == 0
    trials = [t for t in load_study("s", default_storage(workdir)).trials
              if t.state == optuna.trial.TrialState.COMPLETE]
    assert trials
    # Latency is timed again, at another moment. A LiteRT file's bytes and arena depend a little
    # on the weights' values too (the converter shares equal constants, plans buffers by
    # size): the plan measures untrained weights, a trial trained ones (176 bytes in 468 kB).
    litert = config.budget.runtime.name != "onnxruntime"
    for lim in plan.limits:
        slack = 0.5 if lim.measure == "latency_ms" else 0.01 if litert else 1e-6
        for t in trials:
            value = t.user_attrs[lim.measure]
            assert lim.low * (1 - slack) <= value <= lim.high * (1 + slack), (lim, t.number)
            if lim.verdict == EVERY:
                assert t.constraints[lim.measure] <= 0, (lim, t.number)


@pytest.mark.slow
def test_the_mcu_plan_for_cnn1d_holds_for_what_a_search_found(tmp_path):
    path = write_npz(tmp_path / "har.npz", 240, 60)
    _search_within_plan(tmp_path, MCU, "--model", "cnn1d", "--dataset", f"npz:{path}")


@pytest.mark.slow
def test_the_pi4_plan_for_vgg16_bn_holds_for_what_a_search_found(tmp_path):
    _search_within_plan(tmp_path, PI4, "--model", "vgg16_bn")


def test_the_plan_measures_batch_norms_as_a_trained_model_has_them():
    """An untrained model's batch norms are the identity, which the LiteRT converter folds
    away; the plan measures a copy whose batch norms are not, and leaves the model as it is."""
    from edgeslim.search.extremes import like_trained

    model = build_model("cnn1d", 9, 6)
    copy = like_trained(model)
    norms = [m for m in copy.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and all(not torch.all(m.running_var == 1) and not torch.all(m.weight == 1)
                         for m in norms)
    assert all(torch.all(m.running_var == 1) for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm1d))
    assert all(torch.equal(a, b) for a, b in zip(like_trained(model).state_dict().values(),
                                                  copy.state_dict().values()))


def test_settled_limits_are_those_every_extreme_meets_with_room_to_spare():
    def limit(measure, cap, high, verdict):
        return LimitPlan(measure, cap, cap, 0.0, high, "measured", verdict)

    plan = Plan((limit("size_bytes", 8e6, 1.1e6, EVERY), limit("latency_ms", 20.0, 11.0, EVERY),
                 limit("peak_memory_bytes", 1e6, 2e6, SOME), limit("params", 1e3, 2e3, NONE)),
                "most", "least", None, None, None, 4)
    assert plan.settled() == {"size_bytes"}  # latency's largest is over half its cap
    assert plan.settled(share=0.6) == {"size_bytes", "latency_ms"}
