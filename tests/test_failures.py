"""A candidate that fails is a result, not a crash: a fine-tune whose loss becomes nan, a model
that cannot be built, a model the ONNX exporter refuses, an artifact onnxruntime refuses or
cannot run. Each becomes a FAILED trial with its reason in ``fail_reason``, the study goes on
with the next trial, and the end-of-run summary counts the failures.

The failures are real: a user's model (``NARROW_MODEL``) that trains, exports and runs at full
width, and fails in a different way at each of three narrower widths; hand-written ONNX files
that onnxruntime refuses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
from onnx import TensorProto, helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from edgeslim.budget import Runtime
from edgeslim.cli import main
from edgeslim.compress import kept_channels, quantize_onnx
from edgeslim.errors import CandidateError
from edgeslim.evaluators import Caps, StagedEvaluator, measure_onnx_file, onnx_accuracy
from edgeslim.models import build_model
from edgeslim.present.report import summary_line
from edgeslim.search.config import default_storage
from edgeslim.search.objective import Objective
from edgeslim.search.repair import StaticCheck
from edgeslim.search.storage import load_study
from edgeslim.search.workers import run_trials
from edgeslim.spaces import Candidate, PruningSpace, StagedSpace
from edgeslim.training import TrainRecipe

# A user's model given as a file (``--model narrow.py:make``). Pruned, it fails by width, each
# width in its own way, so a study meets every kind of failure among candidates that succeed.
NARROW_MODEL = '''
import torch
from torch import nn


class Gate(torch.autograd.Function):
    """x * sigmoid(x), exported as com.example::Gate: a custom operator the user's device
    runtime implements and onnxruntime does not."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * s * (1 + x * (1 - s))

    @staticmethod
    def symbolic(g, x):
        return g.op("com.example::Gate", x).setType(x.type())


class NarrowFails(nn.Module):
    """conv1 (16 channels) -> conv2 (32) -> linear. Pruned, conv1 at 8 channels divides by
    zero (the loss becomes nan); conv2 at 16 uses torch.special.i0e, which the ONNX exporter
    does not support; conv2 at 8 uses Gate, which onnxruntime does not implement."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x))) / (self.conv1.out_channels - 8)
        x = torch.relu(self.bn2(self.conv2(x)))
        if self.conv2.out_channels == 16:
            x = x * torch.special.i0e(x)
        elif self.conv2.out_channels == 8:
            x = Gate.apply(x)
        return self.fc(x.mean(dim=(2, 3)))


def make(num_classes):
    return NarrowFails(num_classes)
'''

NAN = "training loss became nan at step 1/2"
EXPORT = ("ONNX export failed: UnsupportedOperatorError: Exporting the operator "
          "'aten::special_i0e' to ONNX opset version 17 is not supported")
GATE = "FAIL: Fatal error: com.example:Gate(-1) is not a registered function/op"
RUNTIME = f"onnxruntime rejected the artifact model.onnx: {GATE}"
# Two steps of 32 images: enough to meet a nan, and fast.
RECIPE = TrainRecipe(steps=2, batch_size=32)


def outcome(conv1: int, conv2: int) -> str | None:
    """The fail_reason the narrow model's rules give a candidate with these widths (None: it
    completes). Export and onnxruntime come first: the untrained artifact is checked before any
    fine-tune when the budget limits its size."""
    return {16: EXPORT, 8: RUNTIME}.get(conv2) or (NAN if conv1 == 8 else None)


def pruned(conv1: float = 0.0, conv2: float = 0.0, quantize: str = "none") -> Candidate:
    order = ("prune",) if quantize == "none" else ("prune", "quantize")
    return Candidate(order=order, prune_ratios=(("conv1", conv1), ("conv2", conv2)),
                     quantize=quantize)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "narrow.py"
    path.write_text(NARROW_MODEL)
    return path


@pytest.fixture(scope="module")
def narrow(model_file):
    return build_model(f"{model_file}:make", 1, 10)


@pytest.fixture
def evaluator(narrow, digits) -> StagedEvaluator:
    return StagedEvaluator(narrow, digits, RECIPE, Runtime())


def test_the_narrow_model_widths():
    # The ratios below keep these channels (round_to 8): conv1 16 -> 8 at 0.5; conv2 32 -> 24
    # at 0.25, -> 16 at 0.5, -> 8 at 0.75.
    assert [kept_channels(16, 0.5), kept_channels(32, 0.25), kept_channels(32, 0.5),
            kept_channels(32, 0.75)] == [8, 24, 16, 8]


@pytest.mark.parametrize("candidate, reason", [
    pytest.param(pruned(conv1=0.5), NAN, id="loss-nan"),
    # A candidate of another model's study (ResNet-20 layer names) cannot be built on this one.
    pytest.param(Candidate(prune_ratios=(("layer1.0.conv1", 0.5),)),
                 "no layer named 'layer1.0.conv1' in the model", id="no-such-layer"),
    pytest.param(Candidate(prune_ratios=(("bn1", 0.5),)),
                 "layer 'bn1' is a BatchNorm2d, not prunable", id="not-prunable"),
    pytest.param(Candidate(order=("cluster",), cluster_counts=(("bn1", 4),)),
                 "cannot cluster 'bn1': not a convolution or linear layer", id="not-clusterable"),
    pytest.param(pruned(conv2=0.5), EXPORT, id="export-unsupported-operator"),
    pytest.param(pruned(conv2=0.75), RUNTIME, id="onnxruntime-rejects"),
    # The dynamic quantizer writes the file (it runs nothing); onnxruntime then refuses it.
    pytest.param(pruned(conv2=0.75, quantize="int8_dynamic"), RUNTIME,
                 id="onnxruntime-rejects-int8-dynamic"),
    # Static quantization calibrates in onnxruntime, which refuses the graph there.
    pytest.param(pruned(conv2=0.75, quantize="int8_static"),
                 f"int8_static quantization failed in onnxruntime: {GATE}",
                 id="quantizer-calibration-rejected"),
])
def test_each_failure_of_a_candidate_is_a_candidate_error(evaluator, tmp_path, candidate,
                                                          reason):
    with pytest.raises(CandidateError) as err:
        evaluator.evaluate(candidate, tmp_path)
    assert str(err.value) == reason


def _onnx_file(path: Path, node: onnx.NodeProto, opset: int = 17,
               initializers: tuple[onnx.TensorProto, ...] = ()) -> Path:
    """A one-node model with the input and output of an exported candidate."""
    graph = helper.make_graph(
        [node], "candidate",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                ir_version=8), str(path))
    return path


@pytest.mark.parametrize("node, opset, reason", [
    pytest.param(helper.make_node("NoSuchOp", ["input"], ["logits"]), 17,
                 'INVALID_GRAPH: This is an invalid model. In Node, ("", NoSuchOp, "", -1) : '
                 '("input": tensor(float),) -> ("logits": tensor(float),) , Error No Op '
                 "registered for NoSuchOp with domain_version of 17", id="unknown-operator"),
    pytest.param(helper.make_node("Relu", ["input"], ["logits"]), 99,
                 "FAIL: ONNX Runtime only *guarantees* support for models stamped with "
                 "official released onnx opset versions. Opset 99 is under development",
                 id="unsupported-opset"),
])
def test_onnxruntime_refusing_the_file_is_a_candidate_error(digits, tmp_path, node, opset,
                                                            reason):
    path = _onnx_file(tmp_path / "model.onnx", node, opset)
    with pytest.raises(CandidateError) as err:
        measure_onnx_file(path, digits, Runtime(), digits.val)
    assert str(err.value).startswith(f"onnxruntime rejected the artifact model.onnx: {reason}")
    assert "\n" not in str(err.value)


def test_onnxruntime_failing_to_run_the_file_is_a_candidate_error(digits, tmp_path):
    # onnxruntime loads this graph; its Reshape kernel fails on the first run.
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [7, 3])
    path = _onnx_file(tmp_path / "model.onnx",
                      helper.make_node("Reshape", ["input", "shape"], ["logits"]),
                      initializers=(shape,))
    reason = ("onnxruntime failed to run the artifact model.onnx: FAIL: Non-zero status code "
              "returned while running Reshape node. Name:'' Status Message: input_shape_size "
              "== requested_shape_size was false. The input tensor cannot be reshaped to the "
              "requested shape. Input shape:{%s,1,8,8}, requested shape:{7,3}")
    with pytest.raises(CandidateError) as timed:  # latency: batch 1
        measure_onnx_file(path, digits, Runtime(), digits.val)
    assert str(timed.value) == reason % 1
    with pytest.raises(CandidateError) as scored:  # accuracy: batches of 256
        onnx_accuracy(path, digits.val, digits)
    assert str(scored.value) == reason % 256


def test_activations_that_overflow_fail_int8_calibration_with_their_reason(tmp_path):
    # Finite weights whose product with the images passes float32's largest value (3.4e38),
    # as after a fine-tune that ran away from a random initialisation; the next layer
    # adds inf to -inf, giving nan.
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 3, 3], [1e38] * 18)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["h"]), helper.make_node("Neg", ["h"], ["n"]),
         helper.make_node("Add", ["h", "n"], ["logits"])], "candidate",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], initializer=[weight])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    batches = iter([np.full((4, 1, 8, 8), 2.0, np.float32)])
    with pytest.raises(CandidateError) as err:
        quantize_onnx(path, tmp_path / "int8.onnx", "int8_static", batches)
    assert str(err.value) == (
        "int8_static quantization failed: a calibrated range is not a number: the float "
        "model's activations overflow (inf or nan) on the calibration images")


def test_bugs_are_not_taken_for_failed_candidates(digits, tmp_path):
    # A file that is not there was never written: a bug of the caller, whatever the candidate.
    with pytest.raises(ort_state.NoSuchFile):
        measure_onnx_file(tmp_path / "never-written.onnx", digits, Runtime())
    with pytest.raises(ValueError, match="^int8_static needs calibration batches$"):
        quantize_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx", "int8_static", None)


def _objective(space, evaluator: StagedEvaluator, tmp_path: Path, caps: Caps,
               check: StaticCheck | None = None) -> Objective:
    (tmp_path / "artifacts").mkdir()
    return Objective(space, evaluator, caps, ("macs",),
                     FileSystemArtifactStore(str(tmp_path / "artifacts")), tmp_path / "trials",
                     check=check)


def _study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"],
                               sampler=optuna.samplers.RandomSampler(seed=0))


@pytest.mark.parametrize("repair", [False, True], ids=["no-repair", "repair"])
def test_a_study_records_each_failure_and_goes_on(narrow, evaluator, tmp_path, repair):
    """Five trials through the search loop: two complete, three fail, one of each kind. With a
    size limit and repair, export and onnxruntime fail while the limits are checked (before
    the evaluator runs); they are recorded the same way."""
    space = StagedSpace.for_stages(PruningSpace.from_model(narrow, evaluator.example, 10,
                                                           importances=("l2",)), (),
                                   order="prune")
    caps, check = Caps(), None
    if repair:
        caps = Caps(limits={"size_bytes": 8e6})
        check = StaticCheck(narrow, evaluator.example, caps.limits,
                            lambda c: evaluator.static_values(c, tmp_path / "static"))
    candidates = [pruned(conv2=0.25), pruned(conv1=0.5), pruned(conv2=0.5), pruned(conv2=0.75),
                  pruned()]
    study = _study()
    for candidate in candidates:
        study.enqueue_trial(space.params_for(candidate))
    run_trials(study, _objective(space, evaluator, tmp_path, caps, check), 5, tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                               TrialState.FAIL, TrialState.FAIL,
                                               TrialState.COMPLETE]
    assert [t.user_attrs.get("fail_reason") for t in study.trials] == [
        None, NAN, EXPORT, RUNTIME, None]
    # Each failed trial says what it tried to build.
    assert [Candidate.from_dict(t.user_attrs["candidate"]) for t in study.trials] == candidates
    assert summary_line(study) == "5 trials: 2 complete (2 feasible), 3 failed"


@dataclasses.dataclass(frozen=True)
class GivenCandidates(StagedSpace):
    """A space whose trial ``n`` is ``candidates[n]``, built or not."""

    candidates: tuple[Candidate, ...] = ()

    def __call__(self, trial: optuna.trial.BaseTrial) -> Candidate:
        return self.candidates[trial.number]


def test_a_candidate_that_cannot_be_built_is_recorded_and_the_study_goes_on(narrow, evaluator,
                                                                            tmp_path):
    candidates = (Candidate(prune_ratios=(("layer1.0.conv1", 0.5),)),
                  Candidate(order=("cluster",), cluster_counts=(("bn1", 4),)),
                  pruned(conv1=0.0))
    space = GivenCandidates.for_stages(PruningSpace.from_model(narrow, evaluator.example, 10),
                                       (), order="prune")
    study = _study()
    objective = _objective(dataclasses.replace(space, candidates=candidates), evaluator,
                           tmp_path, Caps())
    run_trials(study, objective, 3, tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL,
                                               TrialState.COMPLETE]
    assert [t.user_attrs.get("fail_reason") for t in study.trials] == [
        "no layer named 'layer1.0.conv1' in the model",
        "cannot cluster 'bn1': not a convolution or linear layer", None]
    assert summary_line(study) == "3 trials: 1 complete (1 feasible), 2 failed"


def test_a_space_with_fewer_models_than_trials_ends_the_search_saying_so(narrow, evaluator,
                                                                        tmp_path):
    """Every trial samples the same model: the first is trained, the others repeat it, and
    the search stops short of its trials with why, rather than failing the study."""
    space = GivenCandidates.for_stages(PruningSpace.from_model(narrow, evaluator.example, 10),
                                       (), order="prune")
    study = _study()
    objective = _objective(dataclasses.replace(space, candidates=(pruned(),) * 40), evaluator,
                           tmp_path, Caps())
    assert run_trials(study, objective, 3, tmp_path) == (
        "search stopped at 1 of 3 trials: 31 of the 32 trials sampled a model already built, "
        "so the space holds few others (--stages, --cluster-counts and --quantize widen it)")
    assert [t.user_attrs.get("duplicate_of") for t in study.trials] == [None] + [0] * 31


def test_the_command_records_failed_candidates_and_finishes(model_file, tmp_path, capsys):
    """The whole command on digits with the narrow model: under a size limit every candidate's
    artifact is checked before training. With seed 3, TPE draws, in order, a model the
    exporter refuses, one that completes, one whose loss becomes nan, one that completes, one
    onnxruntime refuses; the command ends normally and its summary counts three failures."""
    budget = tmp_path / "board.yaml"
    budget.write_text("device: {name: a test board}\nlimits: {size: 8MB}\nobjectives: [flops]\n")
    workdir = tmp_path / "w"
    code = main(["--budget", str(budget), "--model", f"{model_file}:make", "--trials", "5",
                 "--finetune-steps", "2", "--no-references", "--finalists", "0", "--screen",
                 "0", "--base-epochs", "2", "--order", "prune", "--seed", "3",
                 # the criteria TPE drew among when this sequence was recorded
                 "--importance", "l1,l2,bn_scale,lamp",
                 "--sampler", "tpe", "--workdir", str(workdir)])
    assert code == 0
    study = load_study(None, default_storage(workdir))
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.FAIL]
    assert [t.user_attrs.get("fail_reason") for t in trials] == [EXPORT, None, NAN, None,
                                                                 RUNTIME]
    # Each outcome is the one the model's rules give the widths the trial was pruned to.
    for t in trials:
        ratios = t.user_attrs["candidate"]["prune_ratios"]
        widths = kept_channels(16, ratios["conv1"]), kept_channels(32, ratios["conv2"])
        assert t.user_attrs.get("fail_reason") == outcome(*widths)
    assert all(t.user_attrs["finetuned"] for t in trials if t.state == TrialState.COMPLETE)
    assert "5 trials: 2 complete (2 feasible), 3 failed" in capsys.readouterr().out.splitlines()
