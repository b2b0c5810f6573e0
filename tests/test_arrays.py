"""The npz:PATH dataset format and the synthetic sensor generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim.data import load_dataset
from edgeslim.data.synthetic_har import ACTIVITIES, main, synthetic_har, write_npz
from edgeslim.errors import DataError


def test_synthetic_windows_are_balanced_and_repeatable():
    x, y = synthetic_har(60, seed=3)
    assert x.shape == (60, 9, 128) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [10] * 6
    again, _ = synthetic_har(60, seed=3)
    assert np.array_equal(x, again)
    assert not np.array_equal(x, synthetic_har(60, seed=4)[0])
    # standing: gravity along x of the total acceleration (channel 6), about 1 g
    standing = x[y == ACTIVITIES.index("standing"), 6]
    assert 0.9 < float(standing.mean()) < 1.01


def test_synthetic_classes_are_learnable():
    """Per-channel mean and spread already separate most windows with a linear model."""
    from sklearn.linear_model import LogisticRegression

    def features(x):
        return np.concatenate([x.mean(2), x.std(2)], 1)

    x, y = synthetic_har(600, seed=0)
    xt, yt = synthetic_har(300, seed=1)
    score = LogisticRegression(max_iter=2000).fit(features(x), y).score(features(xt), yt)
    assert score >= 0.85


def test_npz_round_trip(tmp_path):
    path = write_npz(tmp_path / "har.npz", 120, 30)
    data = load_dataset(f"npz:{path}", Path("unused"))
    assert data.input_shape == (9, 128) and data.num_classes == 6
    assert data.class_names == ACTIVITIES
    assert (len(data.train), len(data.val), len(data.test)) == (108, 12, 30)
    assert data.train.x.dtype == torch.float32
    before = data.val.x.clone()
    x = data.normalize(data.val.x)
    assert torch.equal(data.val.x, before)  # normalising float data leaves it as it was
    assert x.shape == (12, 9, 128)
    assert abs(float(data.normalize(data.train.x).mean())) < 1e-4


def test_npz_images_and_default_class_names(tmp_path):
    x = np.arange(4 * 3 * 4 * 4, dtype=np.uint8).reshape(4, 3, 4, 4).repeat(3, axis=0)
    np.savez(tmp_path / "img.npz", x_train=x, y_train=np.array([0, 1, 2] * 4))
    data = load_dataset(f"npz:{tmp_path / 'img.npz'}", Path("unused"))
    assert data.input_shape == (3, 4, 4) and data.class_names == ("0", "1", "2")
    assert data.test is None and data.train.x.dtype == torch.uint8


def _write(path: Path, **arrays) -> str:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return f"npz:{path}"


X = np.zeros((6, 2, 8), dtype=np.float32)
Y = np.array([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": X}, "missing array 'y_train'; found x_train (expected x_train, y_train and "
     "optionally x_test, y_test, class_names)"),
    ({"x_train": X.astype(np.int32), "y_train": Y},
     "x_train has dtype int32; expected uint8 or a float type"),
    ({"x_train": X[:, 0], "y_train": Y}, "x_train has shape (6, 8); expected N x C x L or "
     "N x C x H x W"),
    ({"x_train": X, "y_train": Y[:5]}, "y_train has shape (5,) for 6 samples in x_train; "
     "expected one label per sample"),
    ({"x_train": X, "y_train": Y.astype(np.float32)},
     "y_train has dtype float32; expected integer class labels"),
    ({"x_train": X, "y_train": Y - 1}, "y_train labels must be 0 to K-1, got -1"),
    ({"x_train": X, "y_train": Y, "x_test": X}, "x_test is given without y_test"),
    ({"x_train": X, "y_train": Y, "x_test": X[:, :1], "y_test": Y},
     "x_test samples have shape (1, 8), x_train samples (2, 8)"),
    ({"x_train": X + np.nan, "y_train": Y}, "x_train holds NaN or infinite values"),
    ({"x_train": X, "y_train": Y, "class_names": np.array(["a"])},
     "class_names must be 2 or more strings, got <U1 of shape (1,)"),
])
def test_npz_errors_are_one_line(tmp_path, arrays, message):
    spec = _write(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_dataset(spec, Path("unused"))
    assert str(info.value) == f"{spec}: {message}"


def test_npz_file_errors(tmp_path):
    with pytest.raises(DataError, match=f"^npz:{tmp_path}/none.npz: no such file$"):
        load_dataset(f"npz:{tmp_path}/none.npz", Path("unused"))
    (tmp_path / "bad.npz").write_text("not an archive")
    with pytest.raises(DataError, match="bad.npz: cannot be read as an .npz file"):
        load_dataset(f"npz:{tmp_path}/bad.npz", Path("unused"))


def test_generator_command(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "s.npz"), "--train", "24", "--test", "6"]) == 0
    assert capsys.readouterr().out == (f"wrote 24 training and 6 test windows of 9 x 128 to "
                                       f"{tmp_path / 's.npz'}\n")
    with np.load(tmp_path / "s.npz") as f:
        assert sorted(f.files) == ["class_names", "x_test", "x_train", "y_test", "y_train"]
        assert f["x_test"].shape == (6, 9, 128)
