"""The uncompressed base model: loaded from the user's checkpoint, or trained once and cached.

The cache key covers the model specification (and a user model file's contents), the dataset's
fingerprint (pixels, labels, split), the training recipe and the seed, so a later study with the
same inputs reuses the file and any change retrains.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeslim.data import DataBundle
from edgeslim.errors import ModelError
from edgeslim.fsutil import atomic_torch_save
from edgeslim.models import build_model, load_checkpoint
from edgeslim.training import TrainRecipe, train


@dataclass(frozen=True)
class BaseModel:
    model: nn.Module
    spec: str
    weights_path: Path  # the checkpoint given, or the cache file
    trained_here: bool  # trained by this call (False: loaded from a checkpoint or the cache)


def cache_key(spec: str, data: DataBundle, recipe: TrainRecipe) -> str:
    # Whole epochs as an int: ``--base-epochs 15`` (15.0) is the same recipe as the default 15.
    recipe_dict = recipe.to_dict()
    if float(recipe_dict["epochs"]).is_integer():
        recipe_dict["epochs"] = int(recipe_dict["epochs"])
    identity = {"model": spec, "data": data.fingerprint, "recipe": recipe_dict,
                "file": _spec_file_digest(spec)}
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=10).hexdigest()


def obtain_base_model(spec: str, data: DataBundle, recipe: TrainRecipe, cache_dir: Path,
                      checkpoint: Path | None = None,
                      on_step: Callable[[int, int], None] | None = None) -> BaseModel:
    """Returns the base model in eval mode on the CPU.

    With ``checkpoint``, its weights are loaded (``weights_only=True``). Otherwise the cached
    weights for (spec, data, recipe) are loaded, or the model is trained with ``recipe`` (seeded
    by ``recipe.seed``) and cached with an atomic write.
    """
    torch.manual_seed(recipe.seed)
    model = build_model(spec, data.in_channels, data.num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, spec)
        return BaseModel(model.eval(), spec, Path(checkpoint), trained_here=False)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)[-40:]
    path = Path(cache_dir) / f"{safe}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', data.name)[-30:]}-" \
        f"{cache_key(spec, data, recipe)}.pt"
    if path.is_file():
        try:
            load_checkpoint(model, path, spec)
            return BaseModel(model.eval(), spec, path, trained_here=False)
        except ModelError:  # a damaged cache file: trained again from scratch and replaced
            torch.manual_seed(recipe.seed)
            model = build_model(spec, data.in_channels, data.num_classes)
    train(model, data, recipe, on_step=on_step)
    model = model.cpu().eval()
    atomic_torch_save(model.state_dict(), path)
    return BaseModel(model, spec, path, trained_here=True)


def _spec_file_digest(spec: str) -> str | None:
    target = spec.rpartition(":")[0]
    if target.endswith(".py") and Path(target).is_file():
        return hashlib.blake2b(Path(target).read_bytes(), digest_size=10).hexdigest()
    return None
