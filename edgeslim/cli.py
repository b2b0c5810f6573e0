"""The ``optimize`` command.

    optimize --budget budgets/pi4.yaml [options]          search (the default command)
    optimize plan --budget budgets/pi4.yaml [options]     what the search can reach, untrained
    optimize export --study NAME --out DIR [--trial N]    write the deployable files and card
                    [--budget OTHER.yaml]                 (for another device's budget)
    optimize show --study NAME [--budget OTHER.yaml]      print a study's Pareto table, or
                                                          which trials fit another budget
    optimize profile --out profiles/NAME.json [--model M]  make a device's latency table
    optimize dashboard [--study NAME] [--host H --port P] serve the study in optuna-dashboard
    optimize report --study NAME --out DIR [--trial N]    write an HTML report with figures

Errors the user can fix print one line and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeslim._parser import COMMANDS, DEFAULT_WORKDIR, build_parser
from edgeslim.errors import BudgetError, ConfigError, EdgeslimError
from edgeslim.interrupts import exit_status, interruption, restore_signals, stop_on_signals
from edgeslim.logs import quiet_libraries, show_libraries

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

    from edgeslim.budget import Budget
    from edgeslim.search.retarget import Verdict

def _storage_url(args: argparse.Namespace) -> str:
    from edgeslim.search.storage import default_storage

    return args.storage or default_storage(args.workdir)


def _where(args: argparse.Namespace) -> str:
    """The options that name the search's storage, for the commands the run suggests."""
    return (("" if args.workdir == DEFAULT_WORKDIR else f" --workdir {args.workdir}")
            + (f" --storage {args.storage}" if args.storage else ""))


def _check_out(out: Path) -> None:
    """``--out`` must be a directory or a path where one can be created."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError(f"--out {out}: {path} is a file, not a directory; give a "
                                  "directory (it is created when missing)")
            return


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if args.command in ("search", "plan"):
        return _search(args, console)
    if args.command == "profile":
        return _profile(args, console)
    from edgeslim.search.storage import load_study

    if args.command in ("export", "report"):
        _check_out(args.out)
    # show or export for another device's budget
    other = _budget(args, console) if getattr(args, "budget", None) is not None else None
    study = load_study(args.study, _storage_url(args))
    if args.command == "show":
        if other is not None:
            return _show_for(study, other, args, console)
        from edgeslim.present.report import print_report

        print_report(study, console)
        return 0
    if args.command == "dashboard":
        from edgeslim.present.dashboard import serve
        from edgeslim.search.storage import open_storage

        url = _storage_url(args)
        return serve(study, open_storage(url), url, args.host, args.port, console)
    if args.command == "report":
        from edgeslim.present.html_report import write_report

        page = write_report(study, args.out, args.trial, _storage_url(args))
        console.print(f"report of {study.study_name} written to {page}", soft_wrap=True)
        return 0
    return _export(study, other, args, console)


def _profile(args: argparse.Namespace, console: Console) -> int:
    """``profile``: build a device's latency profile and write it (atomically)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from edgeslim._options import profile_options
    from edgeslim.evaluators.profile_build import build_profile
    from edgeslim.fsutil import atomic_write_json

    opts = profile_options(args)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        tasks: dict[str, int] = {}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(f"timing {phase}", total=total)
            progress.update(tasks[phase], completed=done)

        profile = build_profile(opts, report)
    atomic_write_json(profile, args.out)
    console.print(f"wrote {args.out}: {opts.model} {'x'.join(map(str, opts.input_shape))}, "
                  f"{len(next(iter(profile['layers'].values())))} layer configurations, "
                  f"{opts.threads} threads, {opts.runtime} {profile['runtime_version']}")
    for mode, err in profile["error"].items():
        console.print(f"  {mode}: held-out error median {100 * err['median_abs_error']:.1f}%, "
                      f"max {100 * err['max_abs_error']:.1f}%, Spearman {err['spearman']:.2f} "
                      f"({err['held_out_models']} models)")
    return 0


def _budget(args: argparse.Namespace, console: Console) -> Budget:
    """``--budget``, read and checked in a fraction of a second, before PyTorch loads: a
    malformed file, or a runtime whose packages (an optional extra) are missing, is refused
    at once."""
    from edgeslim.budget import load_budget
    from edgeslim.runtimes import check_installed

    budget = load_budget(args.budget)
    check_installed(budget.runtime.name)
    for note in budget.notes:  # how the file was read, where it is not what it says
        console.print(f"note: {note}", soft_wrap=True)
    return budget


def _search(args: argparse.Namespace, console: Console) -> int:
    """``search`` and ``plan``."""
    budget = _budget(args, console)
    from edgeslim._options import search_config
    from edgeslim.search.study import run_search

    config = search_config(args, budget)
    if args.command == "plan":
        from edgeslim.search.study import run_plan

        plan = run_plan(config, console)
        if plan.unreachable:
            raise ConfigError(plan.explanation())
        return 0
    from edgeslim.search.objective import is_feasible
    from edgeslim.search.records import TrialRecord

    study = run_search(config, console)
    command = f"optimize export --study {study.study_name} --out best/{_where(args)}"
    if any(is_feasible(t) and TrialRecord.of(t).finetuned for t in study.trials):
        console.print(f"export the best feasible model with: {command}")
    else:
        console.print("no trial fits the budget yet: run more trials, loosen the budget, "
                      f"or export one trial anyway with: {command} --trial N")
    return 0


def _export(study: optuna.Study, other: Budget | None, args: argparse.Namespace,
            console: Console) -> int:
    from edgeslim.search.picking import choose_trial

    # A trial with nothing to export is refused in seconds, before the model code loads.
    if args.trial is not None or other is None:
        choose_trial(study, args.trial)
    from edgeslim.ship.exporter import export_trial, parse_formats

    formats = parse_formats(args.format)
    card = export_trial(study, args.out, args.trial, args.data_dir, formats, budget=other,
                        on_judged=None if other is None else _judged_line(console))
    m, check = card["measures"], card.get("litert_vs_pytorch", card["onnx_vs_pytorch"])
    kind = "LiteRT" if "litert_vs_pytorch" in card else "ONNX"
    agreement = (f"{kind} matches PyTorch within {check['tolerance']:g}: "
                 f"{'yes' if check['pass'] else 'NO'}" if check["tolerance"] is not None else
                 f"quantized file agrees with the float model on "
                 f"{100 * check['argmax_agree']:.0f}% of {check['images']} images")
    console.print(f"exported trial {card['trial']} of {card['study']} to {args.out}: "
                  f"{' > '.join(card['compression']['stage_order'])}, "
                  f"val_acc {100 * m['val_acc']['value']:.2f}%, "
                  f"{m['size_bytes']['value'] / 1e3:.1f} kB, "
                  f"{m['latency_ms']['value']:.3f} ms; "
                  f"fits the budget: {'yes' if card['fits_budget'] else 'NO'}; {agreement}")
    return 0


def _judged_line(console: Console) -> Callable[[Verdict], None]:
    def show(verdict: Verdict) -> None:
        why = verdict.reason or ("fits" if verdict.fits else
                                 f"breaks {', '.join(verdict.broken)}")
        console.print(f"trial {verdict.trial.number}: {why}", soft_wrap=True, highlight=False)
    return show


def _show_for(study: optuna.Study, budget: Budget, args: argparse.Namespace,
              console: Console) -> int:
    """``show --budget``: every fine-tuned trial of ``study`` judged against ``budget``."""
    import tempfile

    from edgeslim.present._progress import _Progress
    from edgeslim.present.report import print_judged
    from edgeslim.search.records import StudyRecord
    from edgeslim.search.retarget import Retarget, judged_trials

    workdir = Path(StudyRecord.of(study).path("workdir"))
    workdir.mkdir(parents=True, exist_ok=True)
    trials = judged_trials(study)
    with tempfile.TemporaryDirectory(prefix="judged-", dir=workdir) as scratch:
        retarget = Retarget.open(study, budget, Path(scratch), args.data_dir)
        with _Progress(console) as progress:
            update = progress.task(f"judging against {budget.name}", len(trials))
            verdicts = []
            for verdict in retarget.judge_all(trials):
                verdicts.append(verdict)
                update(completed=len(verdicts))
        print_judged(retarget, verdicts, console)
    if any(v.fits for v in verdicts):
        where = _where(args)
        console.print(f"export the best of them with: optimize export --study "
                      f"{study.study_name} --budget {args.budget} --out best-{budget.name}/"
                      f"{where}", soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "search")
    args = build_parser().parse_args(argv)
    if args.debug:
        show_libraries()
    else:
        quiet_libraries()
    previous = stop_on_signals()
    try:
        return run(args)
    except EdgeslimError as exc:
        if args.debug:
            raise
        # Every mistake in a budget file is reported at once, one line each.
        for line in exc.lines if isinstance(exc, BudgetError) else [str(exc)]:
            print(f"optimize: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl+C or SIGTERM (edgeslim.interrupts)
        print(f"optimize: stopped by {interruption(exc)}; rerun the same command to resume",
              file=sys.stderr)
        return exit_status(exc)
    finally:
        restore_signals(previous)


if __name__ == "__main__":
    sys.exit(main())
