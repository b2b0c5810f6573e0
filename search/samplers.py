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
