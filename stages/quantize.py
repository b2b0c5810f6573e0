"""``quantize``: int8 or float16 storage of the exported file.

Parameter: ``quantize/mode`` (``int8_static``, ``int8_dynamic``, ``fp16``). It works on the
exported file, in the budget's runtime's own converter (onnxruntime's quantizer, or LiteRT's),
so the evaluator's deployment runs it and it comes last in every order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeslim.compress import QUANT_MODES
from edgeslim.errors import ConfigError
from edgeslim.stages._base import Stage, offered

if TYPE_CHECKING:
    import optuna

    from edgeslim.search.records import TrialRecord
    from edgeslim.spaces import Candidate, StagedSpace

QUANT_PARAM = "quantize/mode"
_MODE_LABELS = {"int8_static": "int8s", "int8_dynamic": "int8d", "fp16": "fp16"}


class QuantizeStage(Stage):
    """Quantizes the exported file; a candidate whose order lacks it keeps mode ``none``."""

    name = "quantize"
    short = "Q"  # in tables, the mode's own label instead (``label``)
    trained = False

    def check(self, space: StagedSpace) -> None:
        modes = [m for m in space.quant_modes if m not in QUANT_MODES or m == "none"]
        if modes or not space.quant_modes:
            raise ConfigError(f"--quantize: must be among "
                              f"{', '.join(m for m in QUANT_MODES if m != 'none')}, "
                              f"got {', '.join(modes) or 'none'}")

    def suggest(self, space: StagedSpace, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        return {"quantize": str(trial.suggest_categorical(QUANT_PARAM, list(space.quant_modes)))}

    def params_for(self, space: StagedSpace, candidate: Candidate) -> dict[str, Any]:
        return {QUANT_PARAM: offered(candidate.quantize, space.quant_modes,
                                     "quantization mode")}

    def key(self, space: StagedSpace, candidate: Candidate, runs: bool) -> dict[str, Any]:
        return {"quantize": candidate.quantize}

    def card(self, record: TrialRecord, candidate: Candidate, space: dict[str, Any],
             runs: bool) -> dict[str, Any]:
        return {"quantize": candidate.quantize}

    def label(self, mode: str) -> str:
        return _MODE_LABELS.get(mode, mode)

    def legend(self) -> str:
        return f"{'/'.join(_MODE_LABELS.values())} {self.name}"
