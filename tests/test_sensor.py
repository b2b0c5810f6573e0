"""The whole pipeline on 1-D sensor data: a Conv1d model on synthetic UCI-HAR-shaped windows
from an .npz file is searched (prune, cluster, int8), measured and exported."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from edgeslim.cli import main
from edgeslim.data import load_dataset
from edgeslim.data.synthetic_har import write_npz
from edgeslim.search.config import default_storage
from edgeslim.search.storage import load_study
from toys import PI4


@pytest.fixture(scope="module")
def sensor_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("sensor")
    path = write_npz(root / "har.npz", 1200, 120)
    workdir = root / "w"
    code = main(["--budget", str(PI4), "--model", "cnn1d", "--dataset", f"npz:{path}",
                 "--trials", "3", "--base-epochs", "15", "--finetune-epochs", "2",
                 "--order", "prune,cluster,quantize", "--quantize", "int8_static,int8_dynamic",
                 "--cluster-counts", "16,32", "--finalists", "0", "--workdir", str(workdir)])
    assert code == 0
    return path, workdir


def test_sensor_search_measures_every_trial(sensor_search):
    path, workdir = sensor_search
    study = load_study(None, default_storage(workdir))
    assert study.study_name == "cnn1d-npz_" + str(path).replace("/", "_") + "-pi4"
    assert study.user_attrs["data"]["input_shape"] == [9, 128]
    assert study.user_attrs["references"] == ["prune-cluster-int8"]
    base = study.user_attrs["base"]
    # cnn1d: 9*64*7 + 64*64*5 + 64*128*5 + 128*128*3 convs, 2*(64+64+128+128) norms, 128*6+6 fc
    assert base["params"] == 4032 + 20480 + 40960 + 49152 + 768 + 774
    # MACs: each conv's weights once per output step (128, 128, 64, 32), fvcore's 2 per
    # element of each affine batch norm's output, and the fc
    assert base["macs"] == (4032 * 128 + 20480 * 128 + 40960 * 64 + 49152 * 32
                            + 2 * (64 * 128 + 64 * 128 + 128 * 64 + 128 * 32) + 768)
    assert base["val_acc"] > 0.9
    assert "test_acc" not in base  # no limit or objective reads it: the card takes it
    for t in study.trials:
        attrs = t.user_attrs
        assert t.params["stages/order"] == "prune>cluster>quantize"
        assert attrs["macs"] < base["macs"] or t.params["prune/features.0"] == 0
        assert attrs["peak_memory_bytes"] > 0 and attrs["latency_ms"] > 0
        assert attrs["size_bytes"] < base["size_bytes"]


def test_sensor_export_runs_on_windows(sensor_search, tmp_path):
    path, workdir = sensor_search
    out = tmp_path / "best"
    assert main(["export", "--workdir", str(workdir), "--out", str(out), "--trial", "0"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    pre = card["preprocessing"]
    assert pre["input_shape"] == [1, 9, 128] and pre["layout"] == "NCL"
    assert card["compression"]["stage_order"] == ["prune", "cluster", "quantize"]
    data = load_dataset(f"npz:{path}", workdir)
    x = (data.val.x.numpy() / 255.0 - np.array(pre["mean"]).reshape(1, -1, 1)) / \
        np.array(pre["std"]).reshape(1, -1, 1)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {pre["input_name"]: x.astype(np.float32)})[0]
    assert logits.shape == (len(data.val), 6)
    acc = float((logits.argmax(1) == data.val.y.numpy()).mean())
    assert acc == pytest.approx(card["measures"]["val_acc"]["value"], abs=1 / len(data.val))
    # The base model's test accuracy, measured for the card on the file the search exported.
    x = (data.test.x.numpy() / 255.0 - np.array(pre["mean"]).reshape(1, -1, 1)) / \
        np.array(pre["std"]).reshape(1, -1, 1)
    base = ort.InferenceSession(str(workdir / "base" / "base.onnx"),
                                providers=["CPUExecutionProvider"])
    logits = base.run(None, {pre["input_name"]: x.astype(np.float32)})[0]
    base_acc = float((logits.argmax(1) == data.test.y.numpy()).mean())
    assert card["base"]["test_acc"] == pytest.approx(base_acc, abs=1 / len(data.test))
    assert "test_acc" in card["measures"]
