"""The recovery steps a candidate gets between a stage and its fine-tune, as options: light on
imports, so that the command line reads them without loading PyTorch
(``edgeslim.evaluators.recovery`` runs them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgeslim.errors import ConfigError


@dataclass(frozen=True)
class Recovery:
    reconstruct: bool = False
    recalibrate_bn: bool = False
    images: int = 256  # training images the reconstruction fits on (no augmentation)
    bn_images: int = 2048  # training images the batch-norm statistics are averaged over

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """The steps on, as ``--recovery`` names them."""
        return ",".join(s for s in STEPS if getattr(self, s)) or "none"

    @classmethod
    def parse(cls, text: str) -> Recovery:
        """``--recovery``: step names separated by commas, or ``none``.

        Raises:
            ConfigError: for an unknown step.
        """
        names = {n.strip() for n in text.split(",") if n.strip()}
        unknown = sorted(names - set(STEPS) - {"none"})
        if unknown or not names or ("none" in names and len(names) > 1):
            raise ConfigError(f"--recovery: must be none or among {', '.join(STEPS)}, "
                              f"got {text!r}")
        return cls(**{s: s in names for s in STEPS})


STEPS = ("reconstruct", "recalibrate_bn")
