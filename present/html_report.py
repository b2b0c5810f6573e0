"""An HTML report of a study with its figures as PNG files beside it.

The page needs no network: no scripts, styles inline, figures referenced by relative path, so
the folder can be copied, zipped or served as it is. Every file is written atomically.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import optuna

from edgeslim import __version__
from edgeslim.errors import StudyError
from edgeslim.fsutil import atomic_write
from edgeslim.present.figures import AXES, layers_figure, pareto_figure, save_png
from edgeslim.present.notes import limit_text, location_flags
from edgeslim.present.report import (
    columns,
    lift_text,
    pareto_trials,
    summary_line,
    trial_label,
)
from edgeslim.search.picking import is_feasible
from edgeslim.search.records import StudyRecord, TrialRecord
from edgeslim.ship.exporter import choose_trial

REPORT_HTML = "report.html"
LAYERS_PNG = "layers.png"
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.25em .7em;text-align:right;
border-bottom:1px solid #ddd}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:1em 0}code,pre{background:#f6f6f6}
pre{padding:.6em}.muted{color:#777}"""


def report_trial(study: optuna.Study, number: int | None) -> tuple[optuna.trial.FrozenTrial, str]:
    """The trial whose layers the report draws, and why: ``number``, else the trial export
    picks, else (nothing fits yet) the most accurate complete trial."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if number is not None:
        found = [t for t in complete if t.number == number]
        if not found:
            raise StudyError(f"study {study.study_name!r} has no complete trial {number} "
                             f"(complete: {', '.join(str(t.number) for t in complete) or 'none'})")
        return found[0], "chosen with --trial"
    try:
        return choose_trial(study), "the trial optimize export picks (best feasible)"
    except StudyError:
        if not complete:
            raise StudyError(f"study {study.study_name!r} has no complete trial yet; run the "
                             "search first") from None
    best = max(complete, key=lambda t: (TrialRecord.of(t).accuracy or 0.0, -t.number))
    return best, "no trial fits the budget yet: the most accurate complete trial"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _row(measures: dict, cols: tuple) -> list[str]:
    return [fmt(measures[k]) if k in measures else "-" for k, _, fmt in cols]


def pareto_rows(study: optuna.Study, front: list[optuna.trial.FrozenTrial]) -> list[list[str]]:
    """The Pareto table's rows (the base model first), as in ``optimize show``."""
    cols = columns(study)
    rows = [["base", *_row(StudyRecord.of(study).base or {}, cols), "", "", "", ""]]
    for t in front:
        record = TrialRecord.of(t)
        rows.append([str(t.number), *_row(record.measures, cols),
                     "yes" if is_feasible(t) else "no", lift_text(study, t), trial_label(t),
                     record.reference or ""])
    return rows


def _figures(study: optuna.Study, measures: list[str], front: list[optuna.trial.FrozenTrial],
             trial: optuna.trial.FrozenTrial, out: Path) -> list[tuple[str, str]]:
    """Writes one Pareto figure per measure and the trial's layers; returns the Pareto
    figures' file names and alt texts."""
    figures = []
    for m in measures:
        name = f"pareto_{m}.png"
        save_png(pareto_figure(study, m, front, trial), out / name)
        figures.append((name, f"validation accuracy against {m}"))
    save_png(layers_figure(study, trial), out / LAYERS_PNG)
    return figures


def _trial_line(trial: optuna.trial.FrozenTrial, why: str, summary: str) -> str:
    chosen = TrialRecord.of(trial)
    return (f"<p>{html.escape(why)}: {html.escape(chosen.measure('stage_order', ''))}"
            + (f" ({html.escape(chosen.measure('quantize'))})"
               if chosen.measure("quantize", "none") != "none" else "")
            + f"; {html.escape(summary)}; fits the budget: "
            f"{'yes' if is_feasible(trial) else 'no'}"
            + (f"; reference preset {html.escape(chosen.reference)}"
               if chosen.reference is not None else "") + ".</p>")


def write_report(study: optuna.Study, out: Path, number: int | None = None,
                 storage_url: str | None = None) -> Path:
    """Writes ``report.html`` and its figures into ``out``: one Pareto figure per objective
    (per limited measure when the budget has no objective), the chosen trial's layers, the
    Pareto table and the base model against the budget. Returns the page's path."""
    record = StudyRecord.of(study)
    if record.space is None:
        raise StudyError(f"study {study.study_name!r} was not created by optimize")
    trial, why = report_trial(study, number)
    front = pareto_trials(study)
    measures = [m for m in (record.objectives or [])[1:] if m in AXES] or \
        [m for m in record.limits if m in AXES] or ["size_bytes"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(study, measures, front, trial, out)
    budget, caps, base = record.budget, record.caps, record.base
    feasible_front = any(is_feasible(t) for t in front)
    where = f" {location_flags(study, storage_url)}" if storage_url else ""
    name = html.escape(study.study_name)
    measured = TrialRecord.of(trial).measures
    cols = columns(study)  # the measures the budget limits, as optimize show has them
    summary = ", ".join(f"{h} {fmt(measured[k])}" for k, h, fmt in cols if k in measured)
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{name}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{name}</h1>",
        f"<p>{html.escape(record.setup['model'])} on {html.escape(record.setup['dataset'])}"
        f", budget <b>{html.escape(budget['name'])}</b> "
        f"({html.escape(budget['device']['name'])}, {html.escape(budget['runtime']['name'])}"
        f" with {budget['runtime']['threads']} threads). {html.escape(summary_line(study))}."
        "</p>",
        "<h2>Base model and budget</h2>",
        _table(["measure", "base model", "limit"],
               [[k, fmt(base[k]), limit_text(k, caps, budget)]
                for k, _, fmt in cols if k in base]),
        "<h2>Pareto front</h2>",
        "<p>" + ("Feasible trials only." if feasible_front else
                 "No trial fits the budget yet: the front of all complete trials.")
        + " Dashed red lines are the budget's limits; diamonds are reference trials "
        "(presets).</p>",
        *(f"<img src='{f}' alt='{html.escape(alt)}'>" for f, alt in figures),
        _table(["trial", *(h for _, h, _ in cols), "fits", "lift", "stages", "reference"],
               pareto_rows(study, front)),
        "<p class='muted'>stages: P prune, S sparsify, C cluster, int8s/int8d/fp16 quantize, "
        "* preset, + finalist (fine-tuned again with the long recipe). lift: validation "
        "accuracy points over the most accurate reference trial of equal or higher cost in "
        "every objective (finalists against the references' finalists).</p>",
        f"<h2>Trial {trial.number}</h2>",
        _trial_line(trial, why, summary),
        f"<img src='{LAYERS_PNG}' alt='layers of trial {trial.number}'>",
        "<p>Export it:</p>",
        f"<pre>optimize export --study {name} --trial {trial.number} --out best/"
        f"{html.escape(where)}</pre>",
        f"<p class='muted'>edgeslim {__version__}, "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}</p></body></html>",
    ]
    text = "\n".join(parts) + "\n"
    return atomic_write(out / REPORT_HTML, lambda tmp: tmp.write_text(text))
