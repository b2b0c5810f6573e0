"""One study, another device: a digits study searched under the Pi 4 budget, judged against the
Pi 5 budget (show), exported for it (export) and used to warm-start a Pi 5 search, without
training its trials again."""

from __future__ import annotations

import json
import re
import shutil

import onnxruntime as ort
import pytest

from edgeslim.cli import main
from edgeslim.data import load_dataset
from edgeslim.export import INPUT_NAME
from edgeslim.search.config import default_storage
from edgeslim.search.storage import load_study
from edgeslim.search.workers import counted
from toys import PI4, REPO

PI5 = REPO / "budgets" / "pi5.yaml"
SOURCE = "resnet20-digits-pi4"


def pi5_fits(attrs: dict, base: dict) -> bool:
    """budgets/pi5.yaml worked out by hand on a trial's recorded measures (the same runtime,
    so the same files; latency on this host is far below 10 ms)."""
    return (attrs["params"] <= 0.5 * base["params"] and attrs["macs"] <= 0.5 * base["macs"]
            and attrs["peak_memory_bytes"] <= 128e6 and attrs["size_bytes"] <= 16e6
            and attrs["latency_ms"] <= 10.0 and attrs["val_acc"] >= base["val_acc"] - 0.015)


def finetuned(study) -> list:
    return [t for t in study.trials if t.user_attrs.get("finetuned")
            and "duplicate_of" not in t.user_attrs]


def test_show_judges_every_finetuned_trial_against_another_budget(searched, capsys):
    assert main(["show", "--budget", str(PI5), "--workdir", str(searched)]) == 0
    out = capsys.readouterr().out
    study = load_study(None, default_storage(searched))
    base = study.user_attrs["base"]
    rows = {int(m[1]): line.split() for line in out.splitlines()
            if (m := re.match(r"\s*(\d+)\s+\d+\.\d+%", line))}
    trials = finetuned(study)
    assert sorted(rows) == sorted(t.number for t in trials)
    for t in trials:
        expected = "yes" if pi5_fits(t.user_attrs, base) else "no"
        assert expected in rows[t.number], (t.number, rows[t.number])
    fit = sum(pi5_fits(t.user_attrs, base) for t in trials)
    assert f"{fit} of {len(trials)} trials fit {PI5}" in out


def test_export_for_another_budget_picks_the_best_that_fits_it(searched, tmp_path, capsys):
    study = load_study(None, default_storage(searched))
    base = study.user_attrs["base"]
    fitting = [t for t in finetuned(study) if pi5_fits(t.user_attrs, base)]
    assert fitting, "no trial of the digits search fits budgets/pi5.yaml: nothing to export"
    finalists = [t for t in fitting if "finalist_of" in t.user_attrs]
    best = max(t.user_attrs["val_acc"] for t in finalists or fitting)
    out = tmp_path / "pi5"
    assert main(["export", "--budget", str(PI5), "--workdir", str(searched),
                 "--out", str(out)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert (card["chosen_for"], card["searched_for"], card["budget"]["name"]) == \
        ("pi5", "pi4", "pi5")
    assert card["measures"]["val_acc"]["value"] == best
    # Judged against the Pi 5's limits, not the Pi 4's: its 1.5-point accuracy floor.
    floor = card["limits"]["accuracy_drop"]
    assert floor["limit"] == pytest.approx(card["base"]["val_acc"] - 0.015)
    assert card["limits"]["latency_ms"]["limit"] == 10.0
    assert card["fits_budget"] is True
    assert "Chosen for `pi5` from a study searched for `pi4`" in \
        (out / "model_card.md").read_text()
    # The exported file has the accuracy the card states.
    data = load_dataset("digits", searched / "data")
    session = ort.InferenceSession(str(out / "model.onnx"))
    logits = session.run(None, {INPUT_NAME: data.normalize(data.val.x).numpy()})[0]
    accuracy = float((logits.argmax(1) == data.val.y.numpy()).mean())
    assert accuracy == pytest.approx(card["measures"]["val_acc"]["value"])


def test_export_for_a_budget_nothing_fits_says_why(searched, tmp_path, capsys):
    budget = tmp_path / "tiny.yaml"
    budget.write_text("device: a very small board\nlimits: {params: 1K}\n")
    code = main(["export", "--budget", str(budget), "--workdir", str(searched),
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert "no trial of 'resnet20-digits-pi4' fits" in err and "params" in err
    assert "--resume-from" in err


@pytest.fixture
def warm(searched, tmp_path):
    """A copy of the Pi 4 study's work directory, and a Pi 5 search warm-started from it."""
    workdir = tmp_path / "w"
    shutil.copytree(searched, workdir)
    argv = ["--budget", str(PI5), "--resume-from", SOURCE, "--trials", "1",
            "--finalists", "0", "--workdir", str(workdir)]
    assert main(argv) == 0
    return workdir, argv


def test_a_warm_start_imports_the_trials_judged_for_the_new_budget(warm, tmp_path):
    workdir, argv = warm
    storage = default_storage(workdir)
    source = load_study(SOURCE, storage)
    study = load_study("resnet20-digits-pi5", storage)
    imported = [t for t in study.trials if "imported_from" in t.user_attrs]
    searched = [t for t in finetuned(source) if "finalist_of" not in t.user_attrs]
    assert sorted(t.user_attrs["imported_from"]["trial"] for t in imported) == \
        sorted(t.number for t in searched)
    caps = study.user_attrs["caps"]
    assert caps["min_val_acc"] == pytest.approx(study.user_attrs["base"]["val_acc"] - 0.015)
    for t in imported:
        old = source.trials[t.user_attrs["imported_from"]["trial"]]
        assert t.params == old.params
        assert t.user_attrs["candidate"] == old.user_attrs["candidate"]
        acc = t.user_attrs["val_acc"]
        assert acc == old.user_attrs["val_acc"]  # the same file in the same runtime
        assert t.values == [acc, t.user_attrs["macs"], t.user_attrs["latency_ms"]]
        assert t.constraints["val_acc"] == pytest.approx(
            (caps["min_val_acc"] - acc) / caps["min_val_acc"])
        assert set(t.constraints) == {"val_acc", *caps["limits"]}
    # Imported trials do not count: --trials 1 trained one new candidate.
    assert counted(study.trials) == 1
    assert study.user_attrs["warm_start"]["imported"] == len(imported)
    # The references of the new study built the models imported trials had built: they
    # took those trials' results without training.
    numbers = {t.number for t in imported}
    assert any(t.user_attrs.get("duplicate_of") in numbers for t in study.trials)
    # Resumed, the study imports nothing again.
    assert main([*argv[:-4], "--trials", "1", "--finalists", "0", "--workdir",
                 str(workdir)]) == 0
    again = load_study("resnet20-digits-pi5", storage)
    assert sum("imported_from" in t.user_attrs for t in again.trials) == len(imported)
    # An imported trial exports like any other, from the new study's own files.
    out = tmp_path / "imported"
    assert main(["export", "--study", "resnet20-digits-pi5", "--trial",
                 str(imported[0].number), "--workdir", str(workdir), "--out", str(out)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["measures"]["val_acc"]["value"] == imported[0].user_attrs["val_acc"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--resume-from", "no-such-study"], "no study 'no-such-study'"),
    (["--resume-from", SOURCE, "--finetune-epochs", "1"], "a different finetune"),
    (["--resume-from", SOURCE, "--seed", "1"], "a different seed, data_fingerprint"),
])
def test_a_warm_start_from_a_study_that_does_not_compare_is_refused(
        searched, tmp_path, capsys, extra, message):
    workdir = tmp_path / "w"
    shutil.copytree(searched, workdir)
    before = (workdir / "studies.journal").read_bytes()
    code = main(["--budget", str(PI5), "--trials", "1", "--workdir", str(workdir), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert (workdir / "studies.journal").read_bytes() == before


def test_a_warm_start_from_the_study_it_would_resume_is_refused(searched, tmp_path, capsys):
    workdir = tmp_path / "w"
    shutil.copytree(searched, workdir)
    code = main(["--budget", str(PI4), "--resume-from", SOURCE, "--trials", "1",
                 "--workdir", str(workdir)])
    assert code == 2
    assert "that is the study this search resumes" in capsys.readouterr().err
