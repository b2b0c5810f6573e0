"""Notes that optuna-dashboard shows with a study: what it searched and what to do with it.

The study's note gives the budget, the base model's measures against each limit, the reference
trials and the commands that export and report the study; each reference trial carries a note
naming its preset. Notes are Markdown, saved with ``optuna_dashboard.save_note``.
"""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path

import optuna
from optuna_dashboard import get_note, save_note

from edgeslim.present.report import FORMATS as _FORMAT
from edgeslim.present.report import columns, summary_line
from edgeslim.search.config import default_storage
from edgeslim.search.records import ACCURACY, StudyRecord, TrialRecord


def location_flags(study: optuna.Study, storage_url: str) -> str:
    """The flags that point a command at this study's storage: ``--workdir DIR`` when the
    storage is the work directory's default database, else ``--storage URL``."""
    workdir = StudyRecord.of(study).path("workdir")
    if workdir and storage_url == default_storage(Path(workdir)):
        return f"--workdir {shlex.quote(workdir)}"
    return f"--storage {shlex.quote(storage_url)}"


def limit_text(measure: str, caps: dict, budget: dict) -> str:
    """A measure's limit as the budget declares it, resolved: ``<= 1.28M (50% of base)``."""
    if measure == ACCURACY:
        floor = caps.get("min_val_acc")
        return "-" if floor is None else (f">= {_FORMAT[ACCURACY](floor)} "
                                          f"({budget['accuracy_drop_points']:g} points below)")
    cap = caps.get("limits", {}).get(measure)
    if cap is None:
        return "-"
    rule = budget["limits"][measure]
    return f"<= {_FORMAT[measure](cap)}" + (f" ({rule['value']:.0%} of base)"
                                            if rule["relative"] else "")


def study_note(study: optuna.Study, storage_url: str) -> str:
    """The study's note (Markdown): the budget, the base model's measures against the limits,
    the reference trials, and the commands that export and report the study."""
    record = StudyRecord.of(study)
    budget, caps, base = record.budget, record.caps, record.base
    device, runtime = budget["device"], budget["runtime"]
    where = location_flags(study, storage_url)
    name = shlex.quote(study.study_name)
    lines = [
        f"## {study.study_name}",
        "",
        f"Budget **{budget['name']}** ({budget['source'] or 'no file'}): {device['name']}, "
        f"{runtime['name']} with {runtime['threads']} threads. Objectives: maximise "
        f"{', minimise '.join(record.objectives)}.",
        "",
        "| measure | base model | limit |",
        "|---|---|---|",
    ]
    for key, _, fmt in columns(study):
        if key in base:
            lines.append(f"| `{key}` | {fmt(base[key])} | {limit_text(key, caps, budget)} |")
    refs = [(t.number, TrialRecord.of(t).reference) for t in study.get_trials(deepcopy=False)
            if TrialRecord.of(t).reference is not None]
    lines += [
        "",
        f"{summary_line(study)}. Trial user attributes carry every measure under its "
        "unit-suffixed name; `infeasible_reason` and `fail_reason` say why a trial missed.",
    ]
    if refs:
        lines += ["", "Reference trials (user attribute `reference`): "
                  + ", ".join(f"trial {n} `{r}`" for n, r in refs) + "."]
    lines += [
        "",
        "Export the best feasible trial (or `--trial N`), and write an HTML report:",
        "",
        "```",
        f"optimize export --study {name} --out best/ {where}",
        f"optimize report --study {name} --out report/ {where}",
        "```",
    ]
    return "\n".join(lines) + "\n"


def annotate(study: optuna.Study, storage_url: str) -> None:
    """Writes the study's note and the objectives' names; a note already up to date is left as
    it is (each save adds a version)."""
    objectives = StudyRecord.of(study).objectives
    if study.metric_names is None and objectives is not None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(objectives))
    note = study_note(study, storage_url)
    if get_note(study) != note:
        save_note(study, note)
