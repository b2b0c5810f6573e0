"""Datasets: deterministic validation split, tensor augmentation, image folders, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from edgeslim.data import Augment, augment_batch, load_dataset
from edgeslim.errors import DataError


def test_digits_split_is_deterministic_and_stratified(digits):
    again = load_dataset("digits", Path("unused"))
    assert again.fingerprint == digits.fingerprint
    assert torch.equal(again.val.y, digits.val.y) and torch.equal(again.val.x, digits.val.x)
    assert (len(digits.train), len(digits.val), digits.test) == (1438, 359, None)
    assert digits.train.x.dtype == torch.uint8 and digits.input_shape == (1, 8, 8)
    per_class = torch.bincount(digits.val.y, minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37  # 20% of 174 to 183 per class


def test_another_seed_gives_another_split(digits):
    other = load_dataset("digits", Path("unused"), seed=1)
    assert other.fingerprint != digits.fingerprint
    assert len(other.val) == len(digits.val)


def test_normalisation_uses_training_statistics(digits):
    x = digits.normalize(digits.train.x)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3


def test_augmentation_is_batched_and_shape_preserving():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    assert torch.equal(augment_batch(x, Augment()), x)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, Augment(crop_padding=1, hflip=True), gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    flipped = augment_batch(x, Augment(crop_padding=0, hflip=True),
                            torch.Generator().manual_seed(3))
    for a, b in zip(flipped, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))


def _image_tree(root: Path, classes=("cat", "dog"), per_class=6, size=10) -> None:
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("test", 2)):
        for label, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 20, (size, size, 3), generator=gen, dtype=torch.uint8)
                img += (20 * label) % 200
                Image.fromarray(img.numpy()).save(root / split / cls / f"{i}.png")


def test_imagefolder(tmp_path):
    _image_tree(tmp_path / "pics")
    data = load_dataset(f"imagefolder:{tmp_path / 'pics'}", Path("unused"), tmp_path / "cache")
    assert data.class_names == ("cat", "dog")
    assert data.input_shape == (3, 10, 10)
    assert len(data.train) + len(data.val) == 12 and len(data.test) == 4
    assert sorted(data.test.y.tolist()) == [0, 0, 1, 1]
    assert any((tmp_path / "cache").iterdir())  # decoded once, cached
    cached = load_dataset(f"imagefolder:{tmp_path / 'pics'}", Path("unused"), tmp_path / "cache")
    assert cached.fingerprint == data.fingerprint


def test_cache_writes_held_until_the_block_ends_without_an_error(tmp_path, monkeypatch):
    """Inside ``cache_writes_held`` an existing cache file is read (nothing decoded) and a new
    one is written only once the block ends without an error."""
    from edgeslim.data import cache_writes_held, imagefolder

    _image_tree(tmp_path / "pics")
    spec, cache = f"imagefolder:{tmp_path / 'pics'}", tmp_path / "cache"
    with pytest.raises(RuntimeError), cache_writes_held():
        load_dataset(spec, Path("unused"), cache)
        raise RuntimeError("the checkpoint does not fit")
    assert not cache.exists()
    with cache_writes_held():
        data = load_dataset(spec, Path("unused"), cache)
        assert not cache.exists()
    assert len(list(cache.iterdir())) == 2  # train and test
    decoded = []
    monkeypatch.setattr(imagefolder.Image, "open", lambda *a: decoded.append(a))
    with cache_writes_held():
        again = load_dataset(spec, Path("unused"), cache)
    assert decoded == [] and again.fingerprint == data.fingerprint


def test_cifar10_from_an_imagefolder_tree(tmp_path):
    _image_tree(tmp_path, classes=tuple("abcdefghij"), per_class=2, size=32)
    data = load_dataset("cifar10", tmp_path)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10


@pytest.mark.parametrize("spec, message", [
    ("imagenet", "unknown dataset 'imagenet'; registered: digits, cifar10, mnist, fashion-mnist"),
    ("imagefolder:/does/not/exist", "/does/not/exist"),
])
def test_bad_datasets(spec, message):
    with pytest.raises(DataError, match=message):
        load_dataset(spec, Path("unused"))


def test_missing_cifar10_says_where_to_put_the_files(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self, *args, **kwargs):  # what download() does without a network
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path / "data")
    text = str(info.value)
    assert text.startswith(f"cifar10: no data in {tmp_path / 'data'} and downloading failed")
    assert f"{tmp_path / 'data'}/train/<class>/" in text and "\n" not in text


def test_undecodable_image_is_named(tmp_path):
    _image_tree(tmp_path / "pics")
    bad = tmp_path / "pics" / "train" / "cat" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: cannot be decoded as an image"):
        load_dataset(f"imagefolder:{tmp_path / 'pics'}", Path("unused"))
