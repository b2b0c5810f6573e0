"""From a finished search to what a user browses and ships: the dashboard and the report in
headless Chromium, the PyTorch file in a fresh Python process, and the example of
docs/deployment.md."""

from __future__ import annotations

import html
import json
import os
import re
import select
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from edgeslim.cli import main
from edgeslim.data import load_dataset
from edgeslim.export import ONNX_ATOL
from edgeslim.search.config import default_storage
from edgeslim.search.storage import load_study
from toys import REPO

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 1600)


def chromium() -> str:
    """The headless browser: $CHROMIUM, else the first of ``BROWSERS`` on the PATH."""
    found = os.environ.get("CHROMIUM") or next(
        (path for path in map(shutil.which, BROWSERS) if path), None)
    if not found:
        pytest.fail("no Chromium found (looked for $CHROMIUM, then "
                    f"{', '.join(BROWSERS)} on the PATH): install Debian's `chromium` package "
                    "(bash .ci/run does) or set CHROMIUM to the browser's path")
    return found


def browse(url: str, *options: str) -> str:
    """Loads ``url`` in headless Chromium (scripts run for up to 10 s of virtual time) and
    returns its standard output: the rendered DOM with ``--dump-dom``."""
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--virtual-time-budget=10000", f"--window-size={WINDOW[0]},{WINDOW[1]}", *options,
         url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def visible_text(dom: str) -> str:
    """The DOM's text, tags replaced by spaces, runs of white space collapsed."""
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


@pytest.mark.slow
def test_dashboard_shows_the_study_its_notes_and_serves_the_artifacts(searched, tmp_path):
    study = load_study(None, default_storage(searched))
    proc = subprocess.Popen([sys.executable, "-m", "edgeslim.cli", "dashboard", "--workdir",
                             str(searched), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        match = re.fullmatch(r"optuna-dashboard for 'resnet20-digits-pi4': "
                             r"(http://127\.0\.0\.1:(\d+))/dashboard/studies/(\d+)\n", line)
        assert match, (line, proc.poll())
        root, study_id = match[1], int(match[3])
        page = f"{root}/dashboard/studies/{study_id}"
        text = visible_text(browse(f"{page}/trials", "--dump-dom"))
        assert f"resnet20-digits-pi4 (id={study_id})" in text
        assert f"{len(study.trials)} Trials" in text
        assert all(f"Trial {t.number} Complete" in text for t in study.trials)
        # Trial 0 is shown first: the reference, its note, its unit-suffixed measures, files.
        first = study.trials[0]
        assert first.user_attrs["reference"] == "prune-cluster-int8"
        assert "Reference trial : preset prune-cluster-int8 (filter pruning," in text
        for key in ("latency_ms", "macs", "params", "peak_memory_bytes", "size_bytes", "val_acc"):
            assert f" {key} {json.dumps(first.user_attrs[key])} " in text
        assert "Artifacts model.eslim model_state.pt" in text
        note = visible_text(browse(f"{page}/note", "--dump-dom"))
        base, source = study.user_attrs["base"], study.user_attrs["budget"]["source"]
        assert (f"Budget pi4 ({source}): Raspberry Pi 4 Model B (4 GB), onnxruntime with 4 "
                "threads. Objectives: maximise val_acc, minimise macs, minimise latency_ms."
                in note)
        assert f" latency_ms {base['latency_ms']:.3f}ms <= 20.000ms " in note
        assert (f"optimize export --study resnet20-digits-pi4 --out best/ --workdir {searched}"
                in note)
        shot = tmp_path / "dashboard.png"
        browse(f"{page}/trials", f"--screenshot={shot}")
        assert Image.open(shot).size == WINDOW
        # Every fine-tuned trial's files download as stored.
        artifacts = Path(study.user_attrs["paths"]["artifacts"])
        fetched = 0
        for t in study.trials:
            for key, artifact_id in t.user_attrs.items():
                if key.startswith("artifact:"):
                    url = f"{root}/artifacts/{study_id}/{t._trial_id}/{artifact_id}"
                    with urllib.request.urlopen(url, timeout=30) as response:
                        assert response.read() == (artifacts / artifact_id).read_bytes()
                    fetched += 1
        assert fetched == 2 * sum(bool(t.user_attrs["finetuned"]) for t in study.trials)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# Appended to a copy of the report: writes each image's decoded and laid-out size into the DOM.
PROBE = """<script>window.addEventListener("load", () => {
  const pre = document.createElement("pre"); pre.id = "sizes";
  pre.textContent = JSON.stringify([...document.images].map(i => [i.getAttribute("src"),
      i.naturalWidth, i.naturalHeight, i.width > 0 && i.height > 0]));
  document.body.appendChild(pre);
});</script>"""


@pytest.mark.slow
def test_report_renders_its_figures_in_chromium(searched, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--workdir", str(searched), "--out", str(out)]) == 0
    assert capsys.readouterr().out == (f"report of resnet20-digits-pi4 written to "
                                       f"{out / 'report.html'}\n")
    page = (out / "report.html").read_text()
    probe = out / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = browse(probe.as_uri(), "--dump-dom")
    sizes = json.loads(re.search(r'<pre id="sizes">(.*?)</pre>', dom, re.S)[1])
    names = ["pareto_macs.png", "pareto_latency_ms.png", "layers.png"]
    assert sizes == [[n, *Image.open(out / n).size, True] for n in names]
    text = visible_text(dom)
    assert "resnet20-digits-pi4" in text and "Pareto front" in text
    shot = tmp_path / "report.png"
    browse((out / "report.html").as_uri(), f"--screenshot={shot}")
    assert Image.open(shot).size == WINDOW


@pytest.fixture(scope="module")
def exported(searched, tmp_path_factory):
    """A float32 fine-tuned trial of the search (the `uniform` reference is one) exported into
    ``<dir>/best``; returns ``<dir>``."""
    study = load_study(None, default_storage(searched))
    trial = next(t for t in study.trials
                 if t.user_attrs["finetuned"] and t.user_attrs["quantize"] == "none")
    root = tmp_path_factory.mktemp("ship")
    assert main(["export", "--workdir", str(searched), "--out", str(root / "best"),
                 "--trial", str(trial.number)]) == 0
    return root


FRESH = """
import json, sys
import numpy as np, onnxruntime as ort, torch
x = np.load(sys.argv[3])
with torch.no_grad():
    t = torch.export.load(sys.argv[1]).module()(torch.from_numpy(x)).numpy()
session = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
o = session.run(None, {"input": x})[0]
print(json.dumps({"shape": list(t.shape), "max_abs_diff": float(np.abs(t - o).max()),
                  "same_class": bool((t.argmax(1) == o.argmax(1)).all()),
                  "edgeslim": sorted(m for m in sys.modules if m.split(".")[0] == "edgeslim")}))
"""


def test_pytorch_file_runs_without_edgeslim_and_matches_the_onnx_file(exported, tmp_path):
    best = exported / "best"
    card = json.loads((best / "model_card.json").read_text())
    assert card["files"]["pytorch"] == "model.pt2"
    assert card["files"]["pytorch_format"] == "torch.export"
    data = load_dataset("digits", REPO)
    np.save(tmp_path / "x.npy", data.normalize(data.val.x[:32]).numpy())
    proc = subprocess.run([sys.executable, "-I", "-c", FRESH, str(best / "model.pt2"),
                           str(best / "model.onnx"), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["shape"] == [32, 10] and result["edgeslim"] == []
    assert result["same_class"] is True
    assert result["max_abs_diff"] <= ONNX_ATOL  # 1e-3 on logits: float32 kernels only differ


def readme_predict_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "deployment.md").read_text(),
                        re.S)
    found = [b for b in blocks if "ort.InferenceSession" in b]
    assert len(found) == 1
    return found[0]


def test_readme_predict_example_classifies_an_image_with_the_exported_file(exported):
    data = load_dataset("digits", REPO)
    pixels = data.val.x[7]  # uint8, 1 x 8 x 8
    Image.fromarray(pixels[0].numpy(), mode="L").save(exported / "digit.png")
    session = ort.InferenceSession(str(exported / "best" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": data.normalize(pixels[None]).numpy()})[0]
    expected = data.class_names[int(logits.argmax())]
    proc = subprocess.run([sys.executable, "-I", "-c", readme_predict_code()],
                          capture_output=True, text=True, cwd=exported, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == f"{expected}\n"
