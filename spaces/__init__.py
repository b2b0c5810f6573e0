"""Search spaces: pure functions from an Optuna trial to a frozen Candidate."""

from edgeslim.spaces._base import Candidate, Space
from edgeslim.spaces.pruning import PruningSpace, uniform_candidate

__all__ = ["Candidate", "PruningSpace", "Space", "uniform_candidate"]
