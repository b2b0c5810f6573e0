"""A study's and its trials' records: every attribute a search writes reads back typed, and
writes back the same."""

from __future__ import annotations

import pytest

from edgeslim.search.records import StudyRecord, TrialRecord
from edgeslim.search.storage import load_study


@pytest.fixture(scope="module")
def study(searched):
    return load_study(None, f"journal:{searched / 'studies.journal'}")


def test_every_trial_attribute_round_trips(study):
    for trial in study.trials:
        record = TrialRecord.of(trial)
        assert record.to_attrs() == trial.user_attrs


def test_the_typed_fields_are_the_trial_attributes(study):
    done = [t for t in study.trials if t.state.name == "COMPLETE" and TrialRecord.of(t).finetuned]
    assert done
    for trial in done:
        record = TrialRecord.of(trial)
        assert record.candidate == trial.user_attrs["candidate"]
        assert record.accuracy == trial.user_attrs["val_acc"]
        assert record.channels == {k.removeprefix("channels/"): v
                                   for k, v in trial.user_attrs.items()
                                   if k.startswith("channels/")}
        assert set(record.artifacts) == {k.removeprefix("artifact:") for k in trial.user_attrs
                                         if k.startswith("artifact:")}
        # No attribute of the trial is read as a measure by mistake.
        assert not set(record.measures) & {"candidate", "built_as", "finetuned", "worker"}
    references = [t for t in study.trials if "reference" in t.user_attrs]
    assert references and all(TrialRecord.of(t).reference == t.user_attrs["reference"]
                              for t in references)


def test_the_study_attributes_round_trip(study):
    record = StudyRecord.of(study)
    assert record.to_attrs() == study.user_attrs
    assert record.other == {}  # every key this version writes has a field
    assert record.limits == study.user_attrs["caps"]["limits"]
    assert record.path("workdir") == study.user_attrs["paths"]["workdir"]
    assert record.runtime_name == study.user_attrs["budget"]["runtime"]["name"]


def test_an_unknown_key_survives_a_round_trip():
    attrs = {"candidate": {"order": ["prune"]}, "from_a_later_version": [1, 2]}
    assert TrialRecord.from_attrs(attrs).to_attrs() == attrs
    study = {"setup": {"seed": 0}, "from_a_later_version": True}
    assert StudyRecord.from_attrs(study).to_attrs() == study


def test_only_the_records_module_names_attribute_keys():
    """Readers and writers go through ``edgeslim.search.records``: no other module of the
    package indexes or writes a user attribute by a literal name."""
    import re

    from toys import REPO

    literal = re.compile(r"""(user_attrs\s*(\[|\.get\()|set_user_attr\(|"""
                         r"""set_trial_user_attr\([^,]+,)\s*f?["']""")
    found = []
    for folder in ("edgeslim", "search", "present", "ship", "evaluators", "spaces", "stages",
                   "budgets"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "records.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if literal.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []
