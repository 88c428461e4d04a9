from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pruning_core.data import load_dataset
from pruning_core.errors import DataError


def _make_tree(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def test_digits_splits_are_disjoint_deterministic_and_stratified(digits):
    again = load_dataset("digits")
    assert torch.equal(digits.val.labels, again.val.labels)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    rows = {tuple(img.flatten().tolist()) for img in digits.test.images}
    overlap = sum(tuple(img.flatten().tolist()) in rows for img in digits.val.images)
    assert overlap <= 2  # a few digits are pixel-identical across the set; a leak would be hundreds
    counts = torch.bincount(digits.val.labels, minlength=10)
    assert counts.min() >= 25 and counts.max() <= 32


def test_batches_are_normalised_and_cover_the_split(digits):
    images = torch.cat([x for x, _ in digits.batches("train", 100)])
    assert images.shape == (len(digits.train), 1, 8, 8)
    assert abs(float(images.mean())) < 0.05 and abs(float(images.std()) - 1) < 0.05
    limited = list(digits.batches("val", 64, limit=70))
    assert [len(y) for _, y in limited] == [64, 6]


def test_augmentation_keeps_shape_and_changes_pixels():
    from pruning_core.data import Augment, _augment

    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    out = _augment(images, Augment(pad=2, flip=True), torch.Generator().manual_seed(1))
    assert out.shape == images.shape and not torch.equal(out, images)


def test_imagefolder_loads_and_caches(tmp_path):
    root = _make_tree(tmp_path / "data")
    first = load_dataset("imagefolder", root, progress=False)
    assert first.classes == ("cat", "dog") and first.input_shape == (3, 12, 12)
    assert len(first.train) + len(first.val) == 12 and len(first.test) == 12
    assert first.test.labels[:6].tolist() != [0] * 6  # stored mixed, not class by class as the folder is read
    (root / "train" / "cat" / "000.png").unlink()  # a changed tree is decoded again, not read from a stale cache
    second = load_dataset("imagefolder", root, progress=False)
    assert len(second.train) + len(second.val) == 11


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing_root", "does not exist"),
        ("missing_test", "expected a 'test' folder"),
        ("empty_class", "holds no images"),
        ("bad_image", "cannot read image .*001.png"),
        ("class_mismatch", "class folders differ between train and test"),
    ],
)
def test_imagefolder_bad_input_is_one_clear_error(tmp_path, breakage, message):
    root = _make_tree(tmp_path / "data")
    if breakage == "missing_root":
        root = tmp_path / "nowhere"
    elif breakage == "missing_test":
        for f in (root / "test").rglob("*.png"):
            f.unlink()
        for d in (root / "test").iterdir():
            d.rmdir()
        (root / "test").rmdir()
    elif breakage == "empty_class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    elif breakage == "bad_image":
        (root / "train" / "cat" / "001.png").write_bytes(b"not an image")
    elif breakage == "class_mismatch":
        (root / "test" / "dog").rename(root / "test" / "bird")
    with pytest.raises(DataError, match=message):
        load_dataset("imagefolder", root, progress=False)


def test_unknown_dataset_and_split_are_refused(digits):
    with pytest.raises(DataError, match="dataset must be one of digits, cifar10, imagefolder; got 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="split must be one of train, val, test; got 'dev'"):
        digits.split("dev")


@pytest.mark.cifar
def test_cifar10_shared_copy(cifar10_root):
    data = load_dataset("cifar10", cifar10_root, progress=False)
    assert (len(data.train), len(data.val), len(data.test)) == (45000, 5000, 5000)
    assert torch.bincount(data.val.labels).tolist() == [500] * 10
    for split in (data.val, data.test):  # stored mixed: the first 1,000 images (a search's val sample) hold every class
        assert torch.bincount(split.labels[:1000], minlength=10).min() >= 60
    x, _ = next(data.batches("train", 256, augment=True, shuffle=True))
    assert x.shape == (256, 3, 32, 32) and abs(float(x.mean())) < 0.3
