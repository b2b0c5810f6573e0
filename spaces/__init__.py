"""Search spaces: pure functions from an Optuna trial to a frozen Candidate."""

from edgeslim.spaces._base import Candidate, Space
from edgeslim.spaces.pruning import PruningSpace
from edgeslim.spaces.stages import StagedSpace, WeightLayer

__all__ = ["Candidate", "PruningSpace", "Space", "StagedSpace", "WeightLayer"]
