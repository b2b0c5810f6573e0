"""Registries of named parts: each lists what it holds, makes each, and names the valid ones
when given another."""

from __future__ import annotations

import optuna
import pytest

from edgeslim._budget_schema import LATENCY_SOURCES
from edgeslim.budget import LatencySource, Runtime
from edgeslim.compress.importance import CRITERIA, criterion
from edgeslim.errors import ConfigError
from edgeslim.evaluators.meters import METERS, HostMeter, make_meter
from edgeslim.search.samplers import SAMPLERS, sampler


def test_every_sampler_is_made_and_seeded():
    kinds = {name: type(sampler(name, 3)) for name in SAMPLERS}
    assert kinds == {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                     "gp": optuna.samplers.GPSampler, "random": optuna.samplers.RandomSampler}
    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=sampler("random", 3))
        draws.append(study.ask().suggest_float("x", 0, 1))
    assert draws[0] == draws[1]


def test_an_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="^--sampler: must be one of tpe, nsga2, gp, random, "
                                          "got 'cmaes'$"):
        sampler("cmaes", 0)


def test_the_meters_are_the_budget_latency_sources():
    assert tuple(METERS) == LATENCY_SOURCES
    assert isinstance(make_meter(LatencySource(), Runtime(threads=2)), HostMeter)


def test_an_unknown_criterion_lists_the_valid_ones():
    with pytest.raises(ValueError, match="^unknown importance 'fisher'; valid: "
                       + ", ".join(CRITERIA) + "$"):
        criterion("fisher")
