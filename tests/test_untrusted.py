"""Files and services that others can reach: a budget or data file from elsewhere runs
nothing, the dashboard serves this machine only unless told otherwise, and the documentation
says which inputs are code."""

from __future__ import annotations

import os
import re
import socket

import numpy as np
import pytest
import yaml
from test_browse import toy_study

from edgeslim.cli import build_parser, main
from edgeslim.present import dashboard
from edgeslim.search.config import default_storage
from toys import PI4, REPO


class RunsCode:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("optimize: error: ")
    return err.strip().removeprefix("optimize: error: ")


@pytest.mark.parametrize("tag, node", [
    ("python/object/apply:os.system", "['touch MARKER']"),
    ("python/object/new:subprocess.Popen", "[['touch', 'MARKER']]"),
    ("python/name:os.system", "''"),
    ("python/module:os", "''"),
])
def test_budget_with_a_python_tag_is_refused_and_runs_nothing(tmp_path, capsys, tag, node):
    marker = tmp_path / "MARKER"
    budget = tmp_path / "board.yaml"
    budget.write_text(f"device:\n  name: !!{tag} {node.replace('MARKER', str(marker))}\n")
    code = main(["--budget", str(budget), "--workdir", str(tmp_path / "w")])
    assert code == 2
    assert one_error_line(capsys) == (
        f"{budget}: not valid YAML at line 2: tag 'tag:yaml.org,2002:{tag}' is not allowed (a "
        "budget holds plain mappings, lists, strings and numbers)")
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.yaml"]


def test_the_python_tag_would_run_with_an_unsafe_loader(tmp_path):
    """The test above means something: PyYAML's unsafe loader runs the same document."""
    marker = tmp_path / "MARKER"
    yaml.unsafe_load(f"device:\n  name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert marker.exists()


def test_npz_with_pickled_objects_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    path = tmp_path / "data.npz"
    x = np.empty(4, dtype=object)
    x[:] = [RunsCode(marker)] * 4
    np.savez(path, x_train=x, y_train=np.array([0, 1, 0, 1]))
    code = main(["--budget", str(PI4), "--workdir", str(tmp_path / "w"),
                 "--dataset", f"npz:{path}"])
    assert code == 2
    assert one_error_line(capsys) == (
        f"npz:{path}: array 'x_train' holds Python objects, which are not loaded (unpickling "
        "them could run code); save numeric or string arrays")
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz"]


def test_dashboard_listens_on_this_machine_only_by_default(tmp_path, capsys, monkeypatch):
    assert build_parser().parse_args(["dashboard"]).host == "127.0.0.1"
    workdir = tmp_path / "runs"
    toy_study(workdir, default_storage(workdir))
    bound: list[tuple[str, int]] = []
    make_server = dashboard.make_server

    def recording(host, port, app, **kwargs):
        server = make_server(host, port, app, **kwargs)

        def serve_forever() -> None:
            address = server.socket.getsockname()
            with socket.create_connection(address, timeout=5):  # it listens there
                bound.append(address)
            raise KeyboardInterrupt  # what Ctrl+C does to the real one

        server.serve_forever = serve_forever
        return server

    monkeypatch.setattr(dashboard, "make_server", recording)
    assert main(["dashboard", "--workdir", str(workdir), "--port", "0"]) == 0
    [(host, port)] = bound
    assert host == "127.0.0.1" and port > 0
    out = capsys.readouterr().out
    assert f"optuna-dashboard for 'toy-digits-board': http://127.0.0.1:{port}/dashboard/" \
           "studies/0\n" in out
    assert "no login" not in out  # the warning printed for any other address


def test_the_docs_say_a_model_file_is_run_as_code():
    readme = (REPO / "docs" / "search.md").read_text()
    section = readme.split("\n## Models and data\n", 1)[1].split("\n## ", 1)[0]
    text = re.sub(r"\s+", " ", section).replace("**", "")
    assert ("A model given as a file path is imported and run as Python code: only use files "
            "you trust.") in text
