"""Repair: sampled candidates over a static limit become the nearest that fits, before training."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from edgeslim.budget import Runtime
from edgeslim.evaluators import Caps, StagedEvaluator
from edgeslim.search.repair import (
    StaticCheck,
    first_fitting,
    ladder,
    repair,
    structure_measures,
)
from edgeslim.spaces import Candidate, PruningSpace, StagedSpace, WeightLayer
from edgeslim.stages import buildable_orders
from edgeslim.training import TrainRecipe
from toys import PlainNet

X = torch.zeros(1, 1, 8, 8)
BASE_PARAMS = 5178  # PlainNet


def _space(stages=("prune", "cluster", "quantize")) -> StagedSpace:
    pruning = PruningSpace.from_model(PlainNet(), X, 10)
    layers = (WeightLayer("conv1", 144), WeightLayer("conv2", 4608), WeightLayer("fc", 320))
    return StagedSpace(pruning, layers, buildable_orders(stages))


def _candidate(conv1: float, conv2: float, order=("prune",), **fields) -> Candidate:
    return Candidate(order=order, prune_ratios=(("conv1", conv1), ("conv2", conv2)), **fields)


def test_ladder_prunes_each_layer_further_in_proportion_to_its_room():
    steps = ladder(_candidate(0.0, 0.4), _space())
    assert len(steps) == 17 and steps[0] == _candidate(0.0, 0.4)
    assert steps[-1].ratios == {"conv1": 0.8, "conv2": 0.8}
    assert steps[8].ratios == {"conv1": 0.4, "conv2": 0.6}  # halfway to 0.8 from 0 and 0.4
    for a, b in zip(steps, steps[1:]):
        assert all(b.ratios[g] >= a.ratios[g] for g in a.ratios)
        assert all(round(r / 0.05, 6).is_integer() for r in b.ratios.values())


def test_a_candidate_over_the_params_limit_moves_to_the_nearest_that_fits():
    space = _space()
    check = StaticCheck(PlainNet(), X, {"params": 2500})
    sampled = _candidate(0.0, 0.1, importance="l1")
    assert structure_measures(PlainNet(), X, sampled.ratios)["params"] > 2500
    fixed = repair(sampled, space, check)
    assert fixed.repaired and fixed.fits and fixed.sampled == sampled
    assert fixed.candidate.importance == "l1" and fixed.candidate.order == ("prune",)
    assert structure_measures(PlainNet(), X, fixed.candidate.ratios)["params"] <= 2500
    before = ladder(sampled, space)[fixed.step - 1]  # one step less does not fit
    assert structure_measures(PlainNet(), X, before.ratios)["params"] > 2500
    attrs = fixed.attrs()
    assert attrs["repaired"] is True and attrs["repair_step"] == fixed.step
    assert attrs["sampled"] == sampled.to_dict()


def test_a_candidate_that_fits_is_left_alone():
    fixed = repair(_candidate(0.5, 0.5), _space(), StaticCheck(PlainNet(), X, {"params": 2500}))
    assert not fixed.repaired and fixed.fits and fixed.attrs() == {"repaired": False,
                                                                      "repair_step": 0}


def test_an_order_without_pruning_cannot_be_repaired():
    cand = Candidate(order=("quantize",), quantize="int8_dynamic")
    fixed = repair(cand, _space(), StaticCheck(PlainNet(), X, {"params": 2500}))
    assert fixed.candidate == cand and not fixed.fits and fixed.step is None


def test_no_limit_the_space_can_meet_leaves_it_to_the_evaluator():
    fixed = repair(_candidate(0.0, 0.0), _space(), StaticCheck(PlainNet(), X, {"params": 100}))
    assert not fixed.fits and not fixed.repaired



def test_a_candidate_the_runtime_refuses_does_not_fit_but_a_failing_device_fails_the_trial():
    """Repair moves past a candidate whose file cannot be built or run (it does not fit),
    but a device that fails to measure (unreachable, busy) says nothing of the candidate:
    the check raises, and the trial fails with the device's message."""
    from edgeslim.errors import CandidateError, DeviceError

    def refused(candidate):
        raise CandidateError("onnxruntime rejected the artifact: NOT_IMPLEMENTED")

    check = StaticCheck(PlainNet(), X, {"size_bytes": 1e9}, refused)
    assert check.violations(_candidate(0.5, 0.5)) == [
        "cannot be built: onnxruntime rejected the artifact: NOT_IMPLEMENTED"]

    def busy(candidate):
        raise DeviceError("ssh pi@board:22: device busy")

    check = StaticCheck(PlainNet(), X, {"size_bytes": 1e9}, busy)
    with pytest.raises(DeviceError, match="device busy"):
        repair(_candidate(0.5, 0.5), _space(), check)

class _Counted:
    """A check over a ladder of plain numbers: a step fits when its count is at most ``cap``."""

    def __init__(self, values, cap, guess=True):
        self.values, self.cap, self.guess, self.tried = values, cap, guess, []

    def fits(self, step):
        self.tried.append(step)
        return self.values[step] <= self.cap

    def crossing(self, unfit, fit):
        a, b, cap = (math.sqrt(v) for v in (self.values[unfit], self.values[fit], self.cap))
        return (a - cap) / (a - b) if self.guess and a > cap >= b else None


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
def test_the_guessed_search_finds_the_first_step_that_fits_in_fewer_tries(power):
    """Counts that fall like a pruned model's (a power of the kept share): the search lands
    on the bisection's step for every cap, and tries fewer steps on the whole; a repair
    (the first step known not to fit) about half as many."""
    values = [1000 * (1 - 0.8 * k / 16) ** power for k in range(17)]
    steps = list(range(17))
    guessed = bisected = repaired = repairs = 0
    for cap in [v - 1e-6 for v in values] + [v + 1e-6 for v in values]:
        first = next((k for k in steps if values[k] <= cap), None)
        for low in (-1, 0):
            if low == 0 and values[0] <= cap:
                continue
            check, plain = _Counted(values, cap), _Counted(values, cap, guess=False)
            assert first_fitting(steps, check, low) == first_fitting(steps, plain, low) == first
            guessed, bisected = guessed + len(check.tried), bisected + len(plain.tried)
            if low == 0:
                repaired += len(check.tried) / len(plain.tried)
                repairs += 1
    assert guessed < 0.85 * bisected and repaired / repairs < 0.7


def test_a_count_over_its_cap_settles_fits_without_the_costlier_ones(monkeypatch):
    """``fits`` counts params first: a candidate they rule out is never traced for its MACs,
    and neither is its artifact built; ``violations`` still names every broken limit."""
    from edgeslim.evaluators import MODEL_MEASURES

    traced = []
    count_macs = MODEL_MEASURES["macs"]
    monkeypatch.setitem(MODEL_MEASURES, "macs",
                        lambda m, x: traced.append(1) or count_macs(m, x))
    built = []
    check = StaticCheck(PlainNet(), X, {"params": 2500, "macs": 1.0, "size_bytes": 1e9},
                        lambda c: built.append(c) or {"size_bytes": 1.0})
    wide = _candidate(0.0, 0.0)
    assert not check.fits(wide) and traced == [] and built == []
    assert check.violations(wide) == [f"params {BASE_PARAMS} > 2500",
                                      f"macs {check.structure(wide)['macs']:.6g} > 1"]
    assert len(traced) == 1  # counted once per structure
    assert check.structure(wide)["params"] == BASE_PARAMS and len(traced) == 1


def test_limits_the_plan_settled_are_left_to_the_candidate_a_trial_builds():
    """Where every limit on the file is settled, repairs and fits go by the counts; the
    candidate a trial builds is still checked, and a file that cannot be built fails it."""
    from edgeslim.errors import CandidateError

    built = []

    def refused(candidate):
        built.append(candidate)
        raise CandidateError("ONNX export failed: an operator the exporter lacks")

    settled = StaticCheck(PlainNet(), X, {"params": 2500, "size_bytes": 1e9}, refused,
                          frozenset({"size_bytes"}))
    fixed = repair(_candidate(0.0, 0.0), _space(), settled)
    assert fixed.fits and fixed.repaired and built == []
    assert settled.violations(fixed.candidate) == [
        "cannot be built: ONNX export failed: an operator the exporter lacks"]
    assert built == [fixed.candidate]
    # Not settled: every step the repair tries has its file built, and none fits.
    unsettled = StaticCheck(PlainNet(), X, {"params": 2500, "size_bytes": 1e9}, refused)
    assert not repair(_candidate(0.0, 0.0), _space(), unsettled).fits and len(built) > 1


@pytest.mark.parametrize("stages", [("prune",), ("prune", "quantize")])
def test_size_limit_is_checked_on_the_untrained_artifact(digits, tmp_path: Path, stages):
    """Size is not counted but measured: the repaired candidate's exported file fits, and the
    trained candidate, built once, fits too."""
    torch.manual_seed(0)
    base = PlainNet()
    evaluator = StagedEvaluator(base, digits, TrainRecipe(epochs=1), Runtime(threads=1))
    full = evaluator.static_values(_candidate(0.0, 0.0), tmp_path / "full")["size_bytes"]
    cap = 0.5 * full
    check = StaticCheck(base, X, {"size_bytes": cap},
                        lambda c: evaluator.static_values(c, tmp_path / "static"))
    sampled = _candidate(0.1, 0.1, order=tuple(stages),
                         quantize="fp16" if "quantize" in stages else "none")
    fixed = repair(sampled, _space(("prune", "quantize")), check)
    assert fixed.repaired and fixed.fits
    measured = evaluator.static_values(fixed.candidate, tmp_path / "again")["size_bytes"]
    assert measured <= cap
    assert dataclasses.replace(fixed.candidate, prune_ratios=()) == \
        dataclasses.replace(sampled, prune_ratios=())  # only the ratios moved
    # The evaluator builds the checked candidate once, trained.
    m = evaluator.evaluate(fixed.candidate, tmp_path / "trial")
    assert m.finetuned and m.values["size_bytes"] <= cap
    assert sorted(p.name for p in (tmp_path / "trial").iterdir()) == ["final", "model_state.pt"]
    assert Caps({"size_bytes": cap}).violations(m.values, ("size_bytes",)) == []


@pytest.mark.parametrize("quantize", ["none", "int8_static", "fp16"])
def test_a_clustered_structure_is_checked_at_no_less_than_its_trained_size(digits, tmp_path,
                                                                           quantize):
    """The static check clusters without k-means (as many values per row as each count
    allows): the packed file it measures is the trained candidate's size within 3% (its
    packed tensors no smaller; the small ones the file zips differ: per-channel int8 turns a
    layer's shared values into different integers in rows whose largest weights differ, where
    each spread row holds them all)."""
    torch.manual_seed(0)
    base = PlainNet()
    for bn in (base.bn1, base.bn2):  # batch norms as training leaves them, not the identity
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.data = torch.rand_like(t) + 0.5
    evaluator = StagedEvaluator(base, digits, TrainRecipe(steps=2, batch_size=32),
                                Runtime(threads=1), timed=False)
    order = ("prune", "cluster") + (("quantize",) if quantize != "none" else ())
    for counts in ((8, 16, 8), (2, 4, 16), (64, 256, 32)):
        cand = _candidate(0.5, 0.25, order=order, quantize=quantize, cluster_counts=tuple(
            zip(("conv1", "conv2", "fc"), counts)))
        checked = evaluator.static_values(cand, tmp_path / f"static-{counts}")["size_bytes"]
        trained = evaluator.evaluate(cand, tmp_path / f"trial-{counts}").values["size_bytes"]
        assert abs(checked - trained) <= 0.03 * trained
