"""A study's setup: what defines a search (``setup_identity``), which a resumed run must
match, and the creation of the study with the records every later reader needs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import torch

from edgeslim import __version__
from edgeslim.data import DataBundle
from edgeslim.errors import StudyError
from edgeslim.search._prepare import Prepared
from edgeslim.search.config import SearchConfig
from edgeslim.search.objective import directions
from edgeslim.search.records import ACCURACY, SETUP_ATTR, StudyRecord
from edgeslim.search.references import enqueue_references
from edgeslim.search.repair import StaticCheck
from edgeslim.search.samplers import make_sampler
from edgeslim.search.storage import open_storage

__all__ = ["open_or_create_study", "refuse_other_setup", "setup_identity"]


def setup_identity(config: SearchConfig, data: DataBundle) -> dict[str, Any]:
    """What must not change when a study is resumed."""
    return {
        "model": config.model,
        "dataset": config.dataset,
        "data_fingerprint": data.fingerprint,
        "checkpoint": str(config.checkpoint) if config.checkpoint else None,
        "budget": config.budget.to_dict(),
        "base_recipe": config.base_recipe.to_dict(),
        "finetune": config.finetune.to_dict(),
        "recovery": config.recovery.to_dict(),
        "space": json.loads(json.dumps(asdict(config.space))),
        "seed": config.seed,
        "preset": config.preset,
    }


def refuse_other_setup(config: SearchConfig, data: DataBundle) -> None:
    """Refuses to resume a stored study that was created with other options, before anything
    is trained (and creates no storage file to find out)."""
    url = config.storage_url
    if url.startswith("journal:") and not Path(url.removeprefix("journal:")).is_file():
        return
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return
    storage = open_storage(url)
    if config.name not in {s.study_name for s in optuna.get_all_study_summaries(
            storage, include_best_trial=False)}:
        return
    stored = StudyRecord.of(optuna.load_study(study_name=config.name, storage=storage)).setup
    if stored is not None:
        _same_setup(config, stored, setup_identity(config, data))


def _same_setup(config: SearchConfig, stored: dict[str, Any], identity: dict[str, Any]) -> None:
    if json.dumps(stored, sort_keys=True) != json.dumps(identity, sort_keys=True):
        changed = sorted(k for k in identity if stored.get(k) != identity[k])
        raise StudyError(f"study {config.name!r} in {config.storage_url} was created with a "
                         f"different {', '.join(changed)}; resume it with the same options "
                         "or pick a new --study-name")


def open_or_create_study(config: SearchConfig, prepared: Prepared,
                         check: StaticCheck | None = None) -> optuna.Study:
    """Creates the study, or resumes it when one of the same name exists with the same setup.
    A new study gets its reference trials (``check`` decides what fits the budget)."""
    storage = open_storage(config.storage_url)
    identity = setup_identity(config, prepared.data)
    study = optuna.create_study(storage=storage, study_name=config.name,
                                directions=directions(config.budget.objectives),
                                sampler=make_sampler(config.sampler, config.seed),
                                load_if_exists=True)
    stored = StudyRecord.of(study).setup
    if stored is not None:
        _same_setup(config, stored, identity)
        return study
    data = prepared.data
    references = None
    if config.references or config.preset:
        example = torch.zeros(1, *data.input_shape)
        names = [config.preset] if config.preset else None
        references = enqueue_references(study, prepared.space, prepared.base.model, example,
                                        prepared.caps.limits, names, model_name=config.model,
                                        check=check, limit=config.trials)
    record = StudyRecord(
        budget=config.budget.to_dict(),
        caps={"limits": prepared.caps.limits, "min_val_acc": prepared.caps.min_val_acc},
        base=prepared.base_values,
        data={"name": data.name, "input_shape": list(data.input_shape),
              "mean": list(data.mean), "std": list(data.std),
              "class_names": list(data.class_names)},
        space=prepared.space.describe(),
        objectives=[ACCURACY, *config.budget.objectives],
        paths={"workdir": str(config.workdir.resolve()),
               "artifacts": str((config.workdir / "artifacts").resolve()),
               "data_dir": str(Path(config.data_dir).resolve()),
               "base_weights": str(prepared.base.weights_path.resolve())},
        edgeslim_version=__version__, references=references)
    for key, value in record.to_attrs().items():
        study.set_user_attr(key, value)
    # Written last: a study without it was interrupted while being set up, and is set up again.
    study.set_user_attr(SETUP_ATTR, identity)
    return study
