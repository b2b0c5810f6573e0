"""The samplers a study can use, by name: Optuna's, configured for this search. Imports
Optuna only when one is made, so that the command line can list the names for free.

The Gaussian-process sampler (``gp``), multivariate TPE and NSGA-II are constraint-aware:
Optuna reads ``Trial.set_constraint``; random ignores the constraints.
``benchmarks/search_vs_rules.py`` compares them and chose the defaults (per dataset), and
``benchmarks/sampler_cost.py`` times their proposals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeslim.errors import ConfigError
from edgeslim.timing import timed

if TYPE_CHECKING:
    import optuna


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      constant_liar=True)


def _nsga2(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


def _gp(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


def _random(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe, "nsga2": _nsga2, "gp": _gp, "random": _random}


def sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A new sampler ``name`` seeded with ``seed``; an unknown name lists the valid ones."""
    try:
        factory = SAMPLERS[name]
    except KeyError:
        raise ConfigError(f"--sampler: must be one of {', '.join(SAMPLERS)}, got {name!r}") \
            from None
    return factory(seed)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of a study (``edgeslim.search.samplers``), its time counted as sampling
    (``edgeslim.timing``)."""
    return timed_sampler(sampler(name, seed))


# The calls through which Optuna asks a sampler for parameters and tells it results.
SAMPLER_CALLS = ("infer_relative_search_space", "sample_relative", "sample_independent",
                 "before_trial", "after_trial")


def timed_sampler(sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """``sampler`` itself (same type, same behaviour), its calls timed as sampling."""
    for name in SAMPLER_CALLS:
        setattr(sampler, name, timed("sampling")(getattr(sampler, name)))
    return sampler


def screening_sampler(name: str) -> str:
    """The sampler of the screening study: the search's, but TPE for GP. A screening score
    takes about a second, and a Gaussian-process proposal over the pruning ratios took 4 to 20
    s at 40 allocations against 0.03 s for TPE (benchmarks/results/sampler_cost.md): GP would
    spend most of screening's time choosing what to score."""
    return "tpe" if name == "gp" else name
