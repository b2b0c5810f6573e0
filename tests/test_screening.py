"""Screening: allocations ranked by their accuracy after batch-norm recalibration, the best
enqueued as trials of the study."""

from __future__ import annotations

import copy
import dataclasses

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from torch import nn

from edgeslim.budget import Runtime
from edgeslim.cli import main
from edgeslim.compress import apply_pruning
from edgeslim.data import augment_batch
from edgeslim.evaluators import Caps, StagedEvaluator
from edgeslim.evaluators.screening import fast_accuracy, recalibrate_batch_norm
from edgeslim.precision import autocast_for, default_device
from edgeslim.present.report import pareto_trials
from edgeslim.search.config import default_storage
from edgeslim.search.objective import Objective
from edgeslim.search.repair import StaticCheck, structure_measures
from edgeslim.search.screening import (
    SCORE_ATTR,
    SCREENED_ATTR,
    ScreenObjective,
    best_screened,
    enqueue_screened,
    run_screening,
)
from edgeslim.search.storage import SCREEN_SUFFIX, load_study
from edgeslim.search.study import feasible_orders
from edgeslim.search.workers import counts, run_trials
from edgeslim.spaces import Candidate, PruningSpace, StagedSpace, WeightLayer
from edgeslim.stages import buildable_orders
from edgeslim.training import TrainRecipe, train
from toys import REPO, UNTIMED, PlainNet

X = torch.zeros(1, 1, 8, 8)
LAYERS = (WeightLayer("conv1", 144), WeightLayer("conv2", 4608), WeightLayer("fc", 320))


# The criteria these tests pass by name (the default space offers Taylor alone).
CRITERIA = ("l1", "l2", "bn_scale", "lamp")


def _space(stages=("prune",)) -> StagedSpace:
    return StagedSpace(PruningSpace.from_model(PlainNet(), X, 10, importances=CRITERIA), LAYERS,
                       buildable_orders(stages))


@pytest.fixture(scope="module")
def trained(digits) -> nn.Module:
    torch.manual_seed(0)
    model = PlainNet()
    train(model, digits, TrainRecipe(epochs=30, lr=0.1))
    return model.eval()


@pytest.mark.parametrize("augment", [False, True])
def test_recalibration_sets_each_batch_norm_to_the_average_over_the_images(digits, augment):
    model = PlainNet().eval()
    model.bn1.running_mean.fill_(5.0)  # stale statistics are replaced, not blended
    assert recalibrate_batch_norm(model, digits, images=512, seed=3, augment=augment) == 2
    assert model.bn1.momentum == 0.1 and not model.training  # the model is left as it was
    # The same images (augmented as in training, with the same draws), in batches of 256.
    gen = torch.Generator().manual_seed(3)
    idx = torch.randperm(len(digits.train), generator=gen)[:512]
    x = digits.train.x[idx]
    if augment:
        x = torch.cat([augment_batch(x[i:i + 256], digits.augment, gen) for i in (0, 256)])
        assert digits.augment.crop_padding and not torch.equal(x, digits.train.x[idx])
    ctx, _ = autocast_for("auto", default_device())
    with torch.no_grad(), ctx:
        out = model.conv1(digits.normalize(x)).float()
    assert torch.allclose(model.bn1.running_mean, out.mean(dim=(0, 2, 3)), atol=1e-3)
    assert int(model.bn1.num_batches_tracked) == 2  # 512 images in batches of 256


def test_recalibration_recovers_a_pruned_models_accuracy(trained, digits):
    pruned = copy.deepcopy(trained)
    apply_pruning(pruned, X, {"conv1": 0.5, "conv2": 0.5}, "l1")
    stale = fast_accuracy(pruned, digits.val, digits, 1000)
    recalibrate_batch_norm(pruned, digits)
    fresh = fast_accuracy(pruned, digits.val, digits, 1000)
    assert fast_accuracy(trained, digits.val, digits, 1000) > 0.8
    assert fresh > stale + 0.1


def test_screening_scores_only_candidates_within_the_structural_limits(trained, digits):
    space = _space()
    check = StaticCheck(trained, X, {"params": 2000.0})
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    assert run_screening(study, ScreenObjective(space, trained, digits, check), 6) == 6
    assert len(study.trials) == 6
    for t in study.trials:
        cand = Candidate.from_dict(t.user_attrs["candidate"])
        assert structure_measures(trained, X, cand.ratios)["params"] == t.user_attrs["params"]
        assert t.user_attrs["params"] <= 2000 and t.value == t.user_attrs[SCORE_ATTR]
        assert t.user_attrs["repaired"] == (cand.ratios != {
            g: round(t.params[f"prune/{g}"], 10) for g in ("conv1", "conv2")})


def test_the_best_distinct_screened_allocations_are_enqueued_once(trained, digits):
    space = _space()
    screen = optuna.create_study(direction="maximize",
                                 sampler=optuna.samplers.RandomSampler(seed=1))
    run_screening(screen, ScreenObjective(space, trained, digits,
                                          StaticCheck(trained, X, {"params": 2000.0})), 8)
    ranked = best_screened(screen, 8, set())
    assert [t.value for t in ranked] == sorted((t.value for t in ranked), reverse=True)
    keys = [tuple(sorted(t.user_attrs["candidate"]["prune_ratios"].items())) +
            (t.user_attrs["candidate"]["importance"],) for t in ranked]
    assert len(set(keys)) == len(keys)  # repairs that meet at one candidate count once

    study = optuna.create_study(direction="maximize")
    assert enqueue_screened(study, screen, space, 2) == [t.number for t in ranked[:2]]
    # 3/4 of the trials to run come from screening: the next call takes the next ones.
    assert enqueue_screened(study, screen, space, 1) == [ranked[2].number]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs[SCREENED_ATTR]["trial"] for t in waiting] == \
        [t.number for t in ranked[:3]]
    best = Candidate.from_dict(ranked[0].user_attrs["candidate"])
    fixed = waiting[0].system_attrs["fixed_params"]
    assert space(optuna.trial.FixedTrial({**fixed, "stages/order": "prune"})).ratios == \
        best.ratios
    assert waiting[0].user_attrs[SCREENED_ATTR]["acc"] == ranked[0].value


def test_orders_that_cannot_meet_a_params_limit_are_left_out():
    space = _space(("prune", "cluster", "quantize"))
    base = {"params": 5178.0, "macs": 150000.0}
    assert len(space.orders) == 9
    kept = feasible_orders(space, Caps(limits={"params": 2000.0}), base)
    assert sorted(">".join(o) for o in kept.orders) == [
        "cluster>prune", "cluster>prune>quantize", "prune", "prune>cluster",
        "prune>cluster>quantize", "prune>quantize"]
    # A limit the base already meets, or one on another measure, removes nothing.
    assert feasible_orders(space, Caps(limits={"params": 6000.0}), base) is space
    assert feasible_orders(space, Caps(limits={"size_bytes": 100.0}), base) is space


def test_a_search_fine_tunes_the_best_screened_allocations_first(tmp_path, capsys):
    workdir = tmp_path / "w"
    assert main(["--budget", str(UNTIMED), "--model", f"{REPO / 'tests' / 'toys.py'}:plain_net",
                 "--stages", "prune", "--trials", "4", "--screen", "8", "--no-references",
                 "--finalists", "0", "--base-epochs", "5", "--finetune-steps", "3",
                 # PlainNet has 8 channel structures; four criteria make more models to rank.
                 "--importance", ",".join(CRITERIA),
                 "--workdir", str(workdir), "--study-name", "s"]) == 0
    out = capsys.readouterr().out
    assert "screened 8 allocations in " in out and "the best 3 are fine-tuned first" in out
    study = load_study("s", default_storage(workdir))
    screen = load_study("s" + SCREEN_SUFFIX, default_storage(workdir))
    assert load_study(None, default_storage(workdir)).study_name == "s"
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in screen.trials) == 8
    best = best_screened(screen, 3, set())
    assert [t.user_attrs[SCREENED_ATTR]["trial"] for t in study.trials[:3]] == \
        [t.number for t in best]
    for t, s in zip(study.trials, best):
        assert t.user_attrs["candidate"]["prune_ratios"] == \
            s.user_attrs["candidate"]["prune_ratios"]
    assert SCREENED_ATTR not in study.trials[3].user_attrs  # the sampler's own
    before = len(study.trials)
    # Resuming with more trials screens more and enqueues the next best.
    assert main(["--budget", str(UNTIMED), "--model", f"{REPO / 'tests' / 'toys.py'}:plain_net",
                 "--stages", "prune", "--trials", "5", "--screen", "8", "--no-references",
                 "--finalists", "0", "--base-epochs", "5", "--finetune-steps", "3",
                 "--importance", ",".join(CRITERIA),
                 "--workdir", str(workdir), "--study-name", "s"]) == 0
    study = load_study("s", default_storage(workdir))
    (new,) = [t for t in study.trials[before:] if SCREENED_ATTR in t.user_attrs]
    # the best screened model the study had not built yet
    built = {t.user_attrs["built_as"] for t in study.trials[:before]}
    (expected,) = best_screened(screen, 1, built | {
        screen.trials[t.user_attrs[SCREENED_ATTR]["trial"]].user_attrs["built_as"]
        for t in study.trials[:before] if SCREENED_ATTR in t.user_attrs})
    assert new.user_attrs[SCREENED_ATTR]["trial"] == expected.number


def test_ratios_that_snap_to_the_same_channels_build_the_same_model():
    space = _space(("prune", "quantize"))
    a = Candidate(order=("prune",), prune_ratios=(("conv1", 0.45), ("conv2", 0.3)),
                  importance="l1")
    # 16 * 0.55 and 16 * 0.5 both snap to 8 channels, 32 * 0.7 and 32 * 0.75 to 24
    b = Candidate(order=("prune",), prune_ratios=(("conv1", 0.5), ("conv2", 0.25)),
                  importance="l1", quantize="none", cluster_counts=(("fc", 8),))
    assert space.pruning.kept(a) == space.pruning.kept(b) == (8, 24)
    assert space.built_as(a) == space.built_as(b)
    assert space.built_as(a) != space.built_as(dataclasses.replace(a, importance="l2"))
    nothing = Candidate(order=("prune",), prune_ratios=(("conv1", 0.0), ("conv2", 0.0)))
    # with nothing pruned the criterion is irrelevant
    assert space.built_as(nothing) == space.built_as(dataclasses.replace(nothing,
                                                                          importance="lamp"))
    assert space.built_as(a) != space.built_as(dataclasses.replace(
        a, order=("prune", "quantize"), quantize="int8_static"))


def test_a_trial_that_repeats_a_built_model_takes_its_results_untrained(
        trained, digits, tmp_path):
    space = _space()
    evaluator = StagedEvaluator(trained, digits, TrainRecipe(steps=3), Runtime(),
                                Caps(limits={"params": 4000.0}))
    objective = Objective(space, evaluator, evaluator.caps, ("macs",),
                          FileSystemArtifactStore(str(tmp_path)), tmp_path / "trials",
                          check=StaticCheck(trained, X, {"params": 4000.0}))
    study = optuna.create_study(directions=["maximize", "minimize"])
    for ratios in ((0.45, 0.3), (0.5, 0.25), (0.5, 0.5)):
        study.enqueue_trial({"stages/order": "prune", "prune/conv1": ratios[0],
                             "prune/conv2": ratios[1], "prune/importance": "l1"})
    run_trials(study, objective, 2, tmp_path)
    first, repeat, other = study.trials
    assert repeat.user_attrs["duplicate_of"] == 0 and repeat.values == first.values
    assert repeat.user_attrs["val_acc"] == first.user_attrs["val_acc"]
    assert "finetune_seconds" in first.user_attrs and not any(
        k.startswith("artifact:") for k in repeat.user_attrs)
    assert repeat.user_attrs["candidate"]["prune_ratios"] == {"conv1": 0.5, "conv2": 0.25}
    # the repeat does not count: a third trial ran to reach two
    assert [counts(t) for t in study.trials] == [True, False, True]
    assert pareto_trials(study) and repeat not in pareto_trials(study)
    assert "duplicate_of" not in other.user_attrs


def test_screening_samples_with_tpe_where_the_search_uses_gp():
    from edgeslim.search.samplers import screening_sampler

    # A GP proposal costs seconds, a screening score about one: TPE screens instead.
    assert [screening_sampler(s) for s in ("gp", "tpe", "nsga2", "random")] == [
        "tpe", "tpe", "nsga2", "random"]
