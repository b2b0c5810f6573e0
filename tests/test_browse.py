"""The study's note, the HTML report and its figures, the dashboard's errors and the search's
progress line, on a study built by hand (no training)."""

from __future__ import annotations

import socket
from html.parser import HTMLParser

import optuna
import pytest
from optuna_dashboard import get_note
from PIL import Image

from edgeslim.cli import main
from edgeslim.errors import ConfigError, StudyError
from edgeslim.present._progress import _progress_callback
from edgeslim.present.dashboard import serve
from edgeslim.present.html_report import pareto_rows, report_trial, write_report
from edgeslim.present.notes import annotate, study_note
from edgeslim.present.report import lift_text, pareto_trials, reference_lift
from edgeslim.search.config import default_storage
from edgeslim.search.storage import open_storage

BASE = {"val_acc": 0.9, "params": 20000.0, "macs": 1e6, "size_bytes": 80000.0,
        "peak_memory_bytes": 100000.0, "latency_ms": 1.0}
CAPS = {"limits": {"macs": 500000.0, "latency_ms": 2.0}, "min_val_acc": 0.88}
# (val_acc, macs, latency_ms, extra user attributes); None fails the trial
TRIALS = [
    (0.89, 4e5, 0.5, {"reference": "uniform", "stage_order": "prune",
                      "channels/conv1": 8, "channels/conv2": 16}),
    (0.91, 6e5, 0.4, {"stage_order": "prune", "channels/conv1": 16, "channels/conv2": 24}),
    (0.885, 3e5, 0.6, {"stage_order": "prune>cluster>quantize", "quantize": "int8_static",
                       "channels/conv1": 8, "channels/conv2": 24, "clusters/conv1": 16,
                       "clusters/conv2": 32, "clusters/fc": 16}),
    None,
]


def toy_study(workdir, storage: str | None = None) -> optuna.Study:
    """Four trials of a two-group model: a feasible reference, one over the MAC limit, a
    feasible clustered int8 trial, and a failure; in memory unless ``storage`` is given."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                study_name="toy-digits-board",
                                storage=storage and open_storage(storage))
    attrs = {
        "setup": {"model": "toy", "dataset": "digits"},
        "budget": {"name": "board", "source": "board.yaml", "device": {"name": "A board"},
                   "runtime": {"name": "onnxruntime", "threads": 1},
                   "limits": {"macs": {"value": 0.5, "relative": True},
                              "latency_ms": {"value": 2.0, "relative": False}},
                   "accuracy_drop_points": 2.0, "objectives": ["macs", "latency_ms"]},
        "caps": CAPS, "base": BASE, "objectives": ["val_acc", "macs", "latency_ms"],
        "space": {"groups": [{"name": "conv1", "channels": 16}, {"name": "conv2", "channels": 32}],
                  "layers": [{"name": "conv1", "weights": 144}, {"name": "conv2", "weights": 4608},
                             {"name": "fc", "weights": 320}]},
        "paths": {"workdir": str(workdir), "artifacts": str(workdir / "artifacts")},
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for spec in TRIALS:
        trial = study.ask()
        if spec is None:
            trial.set_user_attr("fail_reason", "loss diverged")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        acc, macs, latency, extra = spec
        values = {**BASE, "val_acc": acc, "macs": macs, "latency_ms": latency}
        for key, value in {**values, "quantize": "none", **extra, "finetuned": True,
                           "artifact:model.onnx": f"id-{trial.number}"}.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("macs", macs / CAPS["limits"]["macs"] - 1)
        study.tell(trial, [acc, macs, latency])
    return study


def test_study_note_gives_budget_base_references_and_commands(tmp_path):
    study = toy_study(tmp_path)
    assert study_note(study, default_storage(tmp_path)) == f"""## toy-digits-board

Budget **board** (board.yaml): A board, onnxruntime with 1 threads. Objectives: maximise \
val_acc, minimise macs, minimise latency_ms.

| measure | base model | limit |
|---|---|---|
| `val_acc` | 90.00% | >= 88.00% (2 points below) |
| `params` | 20.0K | - |
| `macs` | 1.00M | <= 0.50M (50% of base) |
| `size_bytes` | 80.0kB | - |
| `peak_memory_bytes` | 0.10MB | - |
| `latency_ms` | 1.000ms | <= 2.000ms |

4 trials: 3 complete (2 feasible), 1 failed. Trial user attributes carry every measure under \
its unit-suffixed name; `infeasible_reason` and `fail_reason` say why a trial missed.

Reference trials (user attribute `reference`): trial 0 `uniform`.

Export the best feasible trial (or `--trial N`), and write an HTML report:

```
optimize export --study toy-digits-board --out best/ --workdir {tmp_path}
optimize report --study toy-digits-board --out report/ --workdir {tmp_path}
```
"""
    # Any other storage is named by its URL.
    assert "--storage sqlite:///other.db\n" in study_note(study, "sqlite:///other.db")


def test_annotate_saves_the_note_once_and_names_the_objectives(tmp_path):
    study = toy_study(tmp_path)
    annotate(study, "sqlite:///x.db")
    annotate(study, "sqlite:///x.db")
    assert get_note(study) == study_note(study, "sqlite:///x.db")
    system = study._storage.get_study_system_attrs(study._study_id)
    assert system["dashboard:note_ver"] == 1  # the second call changed nothing
    assert study.metric_names == ["val_acc", "macs", "latency_ms"]


def test_report_trial_is_exports_pick_unless_named(tmp_path):
    study = toy_study(tmp_path)
    assert [t.number for t in pareto_trials(study)] == [0, 2]
    trial, why = report_trial(study, None)
    assert (trial.number, why) == (0, "the trial optimize export picks (best feasible)")
    assert report_trial(study, 1)[0].number == 1
    with pytest.raises(StudyError, match=r"^study 'toy-digits-board' has no complete trial 3 "
                       r"\(complete: 0, 1, 2\)$"):
        report_trial(study, 3)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.other: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        elif tag in ("script", "link", "iframe"):
            self.other.append(tag)


def test_report_writes_a_page_and_its_figures(tmp_path):
    study = toy_study(tmp_path / "w")
    out = tmp_path / "report"
    assert write_report(study, out, 2, default_storage(tmp_path / "w")) == out / "report.html"
    assert sorted(p.name for p in out.iterdir()) == [
        "layers.png", "pareto_latency_ms.png", "pareto_macs.png", "report.html"]
    page = (out / "report.html").read_text()
    images = _Images()
    images.feed(page)
    # Relative paths to files beside the page, and nothing fetched from elsewhere.
    assert images.srcs == ["pareto_macs.png", "pareto_latency_ms.png", "layers.png"]
    assert images.other == [] and "http" not in page
    sizes = {name: Image.open(out / name).size for name in images.srcs}
    # figsize x dpi 100; trial 2 clustered, so its layer figure has a second panel.
    assert sizes == {"pareto_macs.png": (860, 460), "pareto_latency_ms.png": (860, 460),
                     "layers.png": (1200, 250)}
    assert "<h2>Trial 2</h2>" in page
    assert (f"optimize export --study toy-digits-board --trial 2 --out best/ --workdir "
            f"{tmp_path / 'w'}</pre>") in page
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_report_command_writes_the_page_or_one_line_error(tmp_path, capsys):
    toy_study(tmp_path, default_storage(tmp_path))
    out = tmp_path / "report"
    assert main(["report", "--workdir", str(tmp_path), "--out", str(out), "--trial", "3"]) == 2
    assert capsys.readouterr().err == ("optimize: error: study 'toy-digits-board' has no "
                                       "complete trial 3 (complete: 0, 1, 2)\n")
    assert not out.exists()
    assert main(["report", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    assert capsys.readouterr().out == (f"report of toy-digits-board written to "
                                       f"{out / 'report.html'}\n")


def test_report_without_clustering_draws_one_panel(tmp_path):
    study = toy_study(tmp_path)
    write_report(study, tmp_path / "r")
    assert Image.open(tmp_path / "r" / "layers.png").size == (700, 220)


def test_pareto_rows_are_the_terminal_tables(tmp_path):
    study = toy_study(tmp_path)
    assert pareto_rows(study, pareto_trials(study)) == [
        ["base", "90.00%", "20.0K", "1.00M", "80.0kB", "0.10MB", "1.000ms", "", "", "", ""],
        ["0", "89.00%", "20.0K", "0.40M", "80.0kB", "0.10MB", "0.500ms", "yes", "", "P*",
         "uniform"],
        # no reference is as slow (0.5 ms < 0.6 ms): no lift to give
        ["2", "88.50%", "20.0K", "0.30M", "80.0kB", "0.10MB", "0.600ms", "yes", "-",
         "P>C>int8s", ""],
    ]


def test_report_shows_activation_memory_where_the_budget_limits_it(tmp_path):
    """A microcontroller budget limits activation memory: the HTML report's tables show that
    column, as optimize show does, and not peak memory."""
    study = toy_study(tmp_path)
    study.set_user_attr("caps", {**CAPS, "limits": {**CAPS["limits"],
                                                    "activation_bytes": 50000.0}})
    budget = study.user_attrs["budget"]
    study.set_user_attr("budget", {**budget, "limits": {
        **budget["limits"], "activation_bytes": {"value": 50000.0, "relative": False}}})
    study.set_user_attr("base", {**BASE, "activation_bytes": 60000.0})
    best = _add(study, 0.95, 3e5, 0.3, activation_bytes=40000.0)  # dominates every trial
    rows = pareto_rows(study, pareto_trials(study))
    assert [r[0] for r in rows] == ["base", str(best)]
    assert rows[0][5] == "60.0kB" and rows[1][5] == "40.0kB"
    page = write_report(study, tmp_path / "r").read_text()
    assert "<th>act mem</th>" in page and "peak mem" not in page
    assert "<td>activation_bytes</td><td>60.0kB</td><td>&lt;= 50.0kB</td>" in page


def _add(study: optuna.Study, acc: float, macs: float, latency: float, **attrs) -> int:
    trial = study.ask()
    for key, value in {**BASE, "val_acc": acc, "macs": macs, "latency_ms": latency,
                       "finetuned": True, "stage_order": "prune", **attrs}.items():
        trial.set_user_attr(key, value)
    trial.set_constraint("macs", macs / CAPS["limits"]["macs"] - 1)
    study.tell(trial, [acc, macs, latency])
    return trial.number


def test_lift_is_over_the_best_reference_of_equal_or_higher_cost(tmp_path):
    study = toy_study(tmp_path)
    cheaper = _add(study, 0.9, 3.5e5, 0.45)  # reference 0 costs more in MACs and latency
    ref2 = _add(study, 0.895, 3.5e5, 0.45, reference="complexity-pa")  # costs the same
    assert reference_lift(study, study.trials[cheaper]) == (pytest.approx(0.005),
                                                            "complexity-pa")
    assert lift_text(study, study.trials[cheaper]) == "+0.50"
    assert lift_text(study, study.trials[ref2]) == ""  # references get none
    # A finalist is compared with the references' finalists only.
    final = _add(study, 0.93, 3.5e5, 0.45, finalist_of=cheaper)
    assert reference_lift(study, study.trials[final]) is None
    _add(study, 0.92, 4e5, 0.5, finalist_of=0)
    assert reference_lift(study, study.trials[final]) == (pytest.approx(0.01), "uniform")


def test_progress_line_shows_best_feasible_accuracy_and_failures(tmp_path):
    seen: list[dict] = []
    _progress_callback(lambda **fields: seen.append(fields))(toy_study(tmp_path), None)
    assert seen == [{"completed": 4, "status": "best feasible 89.00%, 1 failed"}]


def test_dashboard_on_a_busy_port_is_a_one_line_error(tmp_path):
    study = toy_study(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^--host 127.0.0.1 --port {port}: cannot listen "
                           r"there \(Address already in use\)$"):
            serve(study, study._storage, "sqlite:///x.db", "127.0.0.1", port)
    with pytest.raises(ConfigError, match=r"^--port: must be 0 to 65535, got 70000$"):
        serve(study, study._storage, "sqlite:///x.db", "127.0.0.1", 70000)
