"""Terminal reports: the Pareto table and the end-of-run summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from rich import box
from rich.console import Console
from rich.table import Table

from edgeslim.search.picking import is_feasible
from edgeslim.search.records import ACCURACY, StudyRecord, TrialRecord
from edgeslim.stages import STAGES, parse_order

if TYPE_CHECKING:
    from edgeslim.search.retarget import Retarget, Verdict

# (measure, column header, format)
COLUMNS = (
    ("val_acc", "val acc", lambda v: f"{100 * v:.2f}%"),
    ("params", "params", lambda v: f"{v / 1e3:,.1f}K"),
    ("macs", "MACs", lambda v: f"{v / 1e6:,.2f}M"),
    ("size_bytes", "size", lambda v: f"{v / 1e3:.1f}kB"),
    ("peak_memory_bytes", "peak mem", lambda v: f"{v / 1e6:,.2f}MB"),
    ("latency_ms", "latency", lambda v: f"{v:.3f}ms"),
)
# A budget that limits activation memory (a microcontroller) sees it instead of peak memory.
ACTIVATION_COLUMN = ("activation_bytes", "act mem", lambda v: f"{v / 1e3:,.1f}kB")
FORMATS = {key: fmt for key, _, fmt in (*COLUMNS, ACTIVATION_COLUMN)}


def columns(study: optuna.Study) -> tuple:
    """The table's measure columns for ``study``'s budget."""
    record = StudyRecord.of(study)
    if "activation_bytes" in record.limits or "activation_bytes" in (record.objectives or []):
        return tuple(ACTIVATION_COLUMN if c[0] == "peak_memory_bytes" else c for c in COLUMNS)
    return COLUMNS


STAGES_LEGEND = (f"stages: {', '.join(s.legend() for s in STAGES.values())}; * reference "
                 "preset,\n+ finalist (long fine-tune); lift: accuracy points over the best "
                 "reference\nof equal or higher cost in every objective")


def stage_label(order: str, quantize: str, reference: bool, finalist: bool = False) -> str:
    """A compact stage order for narrow tables: ``prune>cluster>quantize`` with int8 static
    quantization reads ``P>C>int8s``; ``*`` marks a preset, ``+`` a finalist."""
    parts = [STAGES[name].label(quantize) if name in STAGES else name
             for name in parse_order(order)]
    return ">".join(parts) + ("*" if reference else "") + ("+" if finalist else "")


def trial_label(trial: optuna.trial.FrozenTrial) -> str:
    record = TrialRecord.of(trial)
    return stage_label(record.measure("stage_order", trial.params.get("stages/order", "")),
                       record.measure("quantize", "none"), record.reference is not None,
                       record.finalist_of is not None)


def cost_measures(study: optuna.Study) -> list[str]:
    """What "cost" means when a trial is compared with the references: the budget's
    objectives, or the measures it limits when it has none."""
    record = StudyRecord.of(study)
    return list((record.objectives or [])[1:]) or list(record.limits)


def _source(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """The search trial a finalist re-ran (the trial itself otherwise)."""
    number = TrialRecord.of(trial).finalist_of
    return trial if number is None else study.trials[number]


def reference_lift(study: optuna.Study, trial: optuna.trial.FrozenTrial,
                   ) -> tuple[float, str] | None:
    """``trial``'s validation accuracy minus that of the most accurate reference trial whose
    cost is equal or higher in every cost measure (``cost_measures``), and that reference's
    preset; None when no reference costs as much. Trials are compared at the same fidelity: a
    finalist with the finalists of references, a search trial with the reference trials."""
    measures = cost_measures(study)
    record = TrialRecord.of(trial)
    finalist = record.finalist_of is not None
    best: tuple[float, str] | None = None
    for ref in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        other = TrialRecord.of(ref)
        if (other.finalist_of is not None) != finalist or ref.number == trial.number:
            continue
        name = TrialRecord.of(_source(study, ref)).reference
        if name is None or not other.finetuned:
            continue
        if all(other.measure(m, 0.0) >= record.measure(m, 0.0) * (1 - 1e-9)
               for m in measures):
            if best is None or other.accuracy > best[0]:
                best = (other.accuracy, name)
    if best is None:
        return None
    return record.accuracy - best[0], best[1]


def lift_text(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """The lift over the references as table text: ``+1.20`` points, or ``-``."""
    if TrialRecord.of(_source(study, trial)).reference is not None:
        return ""
    lift = reference_lift(study, trial)
    return "-" if lift is None else f"{100 * lift[0]:+.2f}"


def pareto_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front of the feasible trials; when none is feasible, of all complete trials
    (so a table still shows how close the search came)."""
    # Optuna returns feasible trials only when constraints are set; a repeat of a model
    # already built (``duplicate_of``) is its first trial's row.
    front = [t for t in study.best_trials if TrialRecord.of(t).duplicate_of is None]
    if not front:
        done = [t for t in study.get_trials(deepcopy=False,
                                             states=(optuna.trial.TrialState.COMPLETE,))
                if TrialRecord.of(t).duplicate_of is None]
        signs = [1 if d == optuna.study.StudyDirection.MINIMIZE else -1
                 for d in study.directions]

        def dominates(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
            pa = [s * v for s, v in zip(signs, a.values)]
            pb = [s * v for s, v in zip(signs, b.values)]
            return all(x <= y for x, y in zip(pa, pb)) and pa != pb

        front = [t for t in done if not any(dominates(o, t) for o in done)]
    return sorted(front, key=lambda t: -t.values[0])


def pareto_table(study: optuna.Study) -> Table:
    base = StudyRecord.of(study).base or {}
    table = Table(title=f"Pareto front of {study.study_name}", title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    table.add_column("trial", justify="right")
    cols = columns(study)
    for _, header, _ in cols:
        table.add_column(header, justify="right")
    table.add_column("fits")
    table.add_column("lift", justify="right")
    table.add_column("stages")
    if base:
        table.add_row("base", *(fmt(base[k]) if k in base else "-" for k, _, fmt in cols),
                      "", "", "", style="dim")
    for t in pareto_trials(study):
        measures = TrialRecord.of(t).measures
        table.add_row(str(t.number), *(fmt(measures[k]) if k in measures else "-"
                                       for k, _, fmt in cols),
                      "yes" if is_feasible(t) else "no", lift_text(study, t), trial_label(t))
    return table


def summary_line(study: optuna.Study) -> str:
    states = [t.state for t in study.trials]
    complete = sum(s == optuna.trial.TrialState.COMPLETE for s in states)
    failed = sum(s == optuna.trial.TrialState.FAIL for s in states)
    feasible = sum(is_feasible(t) for t in study.trials)
    records = {t.number: TrialRecord.of(t) for t in study.trials}
    again = {r.retry_of for r in records.values()} - {None}
    rerun = sum(t.number in again and bool(records[t.number].interrupted)
                for t in study.trials)
    return (f"{len(states)} trials: {complete} complete ({feasible} feasible), {failed} failed"
            + (f" ({rerun} interrupted and run again)" if rerun else ""))


def print_report(study: optuna.Study, console: Console) -> None:
    console.print(pareto_table(study))
    console.print(STAGES_LEGEND, style="dim")
    console.print(summary_line(study))


def judged_table(retarget: Retarget, verdicts: list[Verdict]) -> Table:
    """The study's trials against another budget: each limited measure there (``!`` marks one
    over its limit), whether the trial fits, or why it cannot be judged."""
    budget = retarget.budget
    limited = [(k, h, f) for k, h, f in (*COLUMNS, ACTIVATION_COLUMN)
               if k == ACCURACY or k in retarget.caps.limits or k in budget.objectives]
    table = Table(title=f"{retarget.study.study_name} against {budget.source} "
                        f"({budget.device.name}, {budget.runtime.name})",
                  title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0),
                  pad_edge=False)
    table.add_column("trial", justify="right")
    for _, header, _ in limited:
        table.add_column(header, justify="right")
    table.add_column("fits")
    table.add_column("stages")
    base = retarget.base_values
    table.add_row("base", *(fmt(base[k]) if k in base else "-" for k, _, fmt in limited),
                  "", "", style="dim")
    for v in verdicts:
        if v.reason is not None:
            table.add_row(str(v.trial.number), *("" for _ in limited), "-",
                          f"{trial_label(v.trial)}: {v.reason}", style="dim")
            continue
        cells = []
        for key, _, fmt in limited:
            value = v.values.get(key)
            over = not v.limits.get("accuracy_drop" if key == ACCURACY else key,
                                    {"pass": True})["pass"]
            cells.append("-" if value is None else fmt(value) + ("!" if over else ""))
        table.add_row(str(v.trial.number), *cells, "yes" if v.fits else "no",
                      trial_label(v.trial))
    return table


def print_judged(retarget: Retarget, verdicts: list[Verdict], console: Console) -> None:
    console.print(judged_table(retarget, verdicts))
    fit = [v for v in verdicts if v.fits]
    unjudged = sum(v.reason is not None for v in verdicts)
    same = ("the trials' files, latency timed again for this budget" if retarget.same_files
            else f"files made again from the trials' float weights for "
                 f"{retarget.budget.runtime.name}, every measure taken on them")
    legend = STAGES_LEGEND.splitlines()[0].rstrip(",")
    console.print(f"{legend}; ! over the limit. Measured on {same}.", style="dim",
                  soft_wrap=True)
    console.print(f"{len(fit)} of {len(verdicts)} trials fit {retarget.budget.source}"
                  + (f"; {unjudged} cannot be judged" if unjudged else ""), soft_wrap=True)
