"""Datasets held in memory as uint8 tensors, with train / val / test splits.

Every dataset gives three splits: ``train`` (fine-tuning), ``val`` (a fixed, seeded, stratified slice of the
training images that the pruning search scores candidates on) and ``test`` (final reporting only). ``val`` is
disjoint from ``train``.

Images are decoded once and cached as uint8 arrays in a user cache directory (``$PRUNEGYM_CACHE`` or
``~/.cache/prunegym``), so later runs start in a second. Batches are produced directly from the in-memory tensors
(normalisation and augmentation vectorised over the batch), which is several times faster than a ``DataLoader``
over PIL images on a two-core machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pruning_core.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_ENV = "PRUNEGYM_CIFAR10"


@dataclass(frozen=True)
class Split:
    """One split of a dataset: uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random crop after zero padding, optional horizontal flip."""

    pad: int = 0
    flip: bool = False


@dataclass(frozen=True)
class ImageDataset:
    """An in-memory image classification dataset with its three splits.

    Attributes:
        name: Dataset name (``digits``, ``cifar10``, ``imagefolder``).
        classes: Class names, index = label.
        train: Split used for training and fine-tuning.
        val: Seeded slice of the training images used to score pruning candidates.
        test: Split used for final reporting only.
        scale: Value that maps a raw pixel to [0, 1] (255 for photos, 16 for digits).
        mean: Per-channel mean after scaling.
        std: Per-channel standard deviation after scaling.
        augment: Augmentation applied to training batches when asked for.
    """

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        """Return the split called ``name`` (one of ``train``, ``val``, ``test``)."""
        if name not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}; got {name!r}")
        return getattr(self, name)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map raw uint8 images to normalised float32."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1) * self.scale
        std = torch.tensor(self.std).view(1, -1, 1, 1) * self.scale
        return (images.float() - mean) / std

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        limit: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield normalised ``(images, labels)`` batches of one split.

        Args:
            split: ``train``, ``val`` or ``test``.
            batch_size: Images per batch (the last batch may be smaller).
            shuffle: Visit the images in a random order.
            augment: Apply the dataset's training augmentation.
            limit: Use only the first ``limit`` images (after shuffling).
            generator: Random generator for shuffling and augmentation.
        """
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1; got {batch_size}")
        data = self.split(split)
        n = len(data) if limit is None else min(limit, len(data))
        order = torch.randperm(len(data), generator=generator)[:n] if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            images = data.images[idx]
            if augment:
                images = _augment(images, self.augment, generator)
            yield self.normalize(images), data.labels[idx]


def _augment(images: torch.Tensor, aug: Augment, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, vectorised over the batch."""
    b, _, h, w = images.shape
    if aug.pad > 0:
        padded = torch.nn.functional.pad(images, (aug.pad,) * 4)
        oy = torch.randint(0, 2 * aug.pad + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * aug.pad + 1, (b,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        batch = torch.arange(b)[:, None, None, None]
        chans = torch.arange(images.shape[1])[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if aug.flip:
        flip = torch.rand(b, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def _stratified_split(labels: np.ndarray, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, holdout)`` with ``holdout`` items drawn per class in proportion, seeded."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = holdout / len(labels)
    held: list[np.ndarray] = []
    for cls, count in zip(classes, counts, strict=True):
        members = np.flatnonzero(labels == cls)
        take = round(count * share)
        held.append(rng.permutation(members)[:take])
    held_idx = np.sort(np.concatenate(held))
    keep_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    return keep_idx, held_idx


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)))


def load_digits_dataset(*, val_size: int = 287, test_size: int = 360, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1,797 handwritten 8x8 digits, split deterministically.

    Args:
        val_size: Images held out of training for the search's validation split.
        test_size: Images held out for the test split.
        seed: Seed of the stratified splits.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)[:, None, :, :]  # values 0..16
    labels = digits.target.astype(np.int64)
    rest, test = _stratified_split(labels, test_size, seed)
    train_rel, val_rel = _stratified_split(labels[rest], val_size, seed + 1)
    train, val = rest[train_rel], rest[val_rel]
    pixels = images[train].astype(np.float64) / 16.0
    return ImageDataset(
        name="digits",
        classes=tuple(str(i) for i in range(10)),
        train=_to_split(images[train], labels[train]),
        val=_to_split(images[val], labels[val]),
        test=_to_split(images[test], labels[test]),
        scale=16.0,
        mean=(float(pixels.mean()),),
        std=(float(pixels.std()),),
        augment=Augment(pad=1, flip=False),
    )


def cache_dir() -> Path:
    """Directory for decoded-image caches (``$PRUNEGYM_CACHE`` or ``~/.cache/prunegym``)."""
    return Path(os.environ.get("PRUNEGYM_CACHE", Path.home() / ".cache" / "prunegym"))


def atomic_write_bytes(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _scan_split(root: Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"expected a '{split}' folder with one sub-folder per class in {root}; none found")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"expected class folders in {split_dir}; got none")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        members = sorted(p for p in (split_dir / cls).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not members:
            raise DataError(f"class folder {split_dir / cls} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files.extend((p, label) for p in members)
    return classes, files


def _decode(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _decode_split(root: Path, split: str, size: int | None, progress: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Decode one ImageFolder split, through the cache."""
    classes, files = _scan_split(root, split)
    fingerprint = hashlib.sha1(
        json.dumps(
            [str(root.resolve()), split, size]
            + [(str(p.relative_to(root)), p.stat().st_size, int(p.stat().st_mtime)) for p, _ in files]
        ).encode()
    ).hexdigest()[:16]
    cache = cache_dir() / f"imagefolder-{split}-{fingerprint}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return classes, stored["images"], stored["labels"]
    from tqdm import tqdm

    if size is None:
        first = _decode(files[0][0], None)
        size = first.shape[1] if first.shape[1] == first.shape[2] else None
        if size is None:
            raise DataError(f"images in {root} are not square; pass an image size to resize them")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = list(
            tqdm(
                pool.map(lambda item: _decode(item[0], size), files, chunksize=256),
                total=len(files),
                desc=f"decoding {split} ({root.name})",
                disable=not progress,
                unit="img",
            )
        )
    shapes = {img.shape for img in decoded}
    if len(shapes) != 1:
        raise DataError(f"images in {root / split} differ in size {sorted(shapes)[:3]}; pass an image size")
    images = np.stack(decoded)
    labels = np.array([label for _, label in files], dtype=np.int64)
    atomic_write_bytes(cache, lambda tmp: np.savez(tmp.open("wb"), images=images, labels=labels))
    return classes, images, labels


def load_imagefolder_dataset(
    root: str | os.PathLike[str] | None,
    *,
    name: str = "imagefolder",
    image_size: int | None = None,
    val_size: int = 5000,
    seed: int = 0,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    progress: bool = True,
) -> ImageDataset:
    """An ImageFolder tree with ``train/<class>/*`` and ``test/<class>/*``.

    Args:
        root: Folder holding ``train/`` and ``test/``.
        name: Name recorded on the dataset.
        image_size: Resize every image to this square size; ``None`` keeps the (square, uniform) size.
        val_size: Training images held out, stratified, as the validation split (at most a fifth of them).
        seed: Seed of the validation slice.
        mean: Per-channel mean; computed from the training split when ``None``.
        std: Per-channel standard deviation; computed from the training split when ``None``.
        progress: Show a progress bar while decoding.

    Raises:
        DataError: The tree is missing, empty, unreadable or its splits disagree on the classes.
    """
    if root is None:
        raise DataError(f"dataset {name!r} needs --data-root (a folder with train/ and test/)")
    root_path = Path(root)
    if not root_path.is_dir():
        raise DataError(f"data root {root_path} does not exist or is not a folder")
    train_classes, train_x, train_y = _decode_split(root_path, "train", image_size, progress)
    test_classes, test_x, test_y = _decode_split(root_path, "test", image_size, progress)
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(
            f"class folders differ between train and test in {root_path}: "
            f"only in train {only_train}, only in test {only_test}"
        )
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"train images are {train_x.shape[1:]} but test images are {test_x.shape[1:]}")
    val_size = min(val_size, len(train_y) // 5)
    keep, val = _stratified_split(train_y, val_size, seed)
    # An image folder is read class by class; val and test are stored in a seeded mixed order, so that their first
    # N images (the search scores plans on the first val_images of val) are a sample of every class.
    mix = np.random.default_rng(seed + 2)
    val = mix.permutation(val)
    test_order = mix.permutation(len(test_y))
    test_x, test_y = test_x[test_order], test_y[test_order]
    if mean is None or std is None:
        sample = train_x[keep[:: max(1, len(keep) // 5000)]].astype(np.float64) / 255.0
        mean = tuple(float(m) for m in sample.mean(axis=(0, 2, 3)))
        std = tuple(float(s) for s in sample.std(axis=(0, 2, 3)))
    return ImageDataset(
        name=name,
        classes=tuple(train_classes),
        train=_to_split(train_x[keep], train_y[keep]),
        val=_to_split(train_x[val], train_y[val]),
        test=_to_split(test_x, test_y),
        scale=255.0,
        mean=mean,
        std=std,
        augment=Augment(pad=max(1, train_x.shape[2] // 8), flip=True),
    )


def load_cifar10_dataset(root: str | os.PathLike[str] | None, *, seed: int = 0, progress: bool = True) -> ImageDataset:
    """CIFAR-10 from an ImageFolder tree (``$PRUNEGYM_CIFAR10`` when ``root`` is None).

    The validation split is 5,000 training images (500 per class), disjoint from ``train``.
    """
    root = root if root is not None else os.environ.get(CIFAR10_ENV)
    dataset = load_imagefolder_dataset(
        root,
        name="cifar10",
        image_size=32,
        val_size=5000,
        seed=seed,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        progress=progress,
    )
    if dataset.classes != CIFAR10_CLASSES:
        raise DataError(f"expected the CIFAR-10 class folders {list(CIFAR10_CLASSES)}; got {list(dataset.classes)}")
    return dataset


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "digits": lambda root=None, progress=True, **kw: load_digits_dataset(**kw),
    "cifar10": load_cifar10_dataset,
    "imagefolder": load_imagefolder_dataset,
}


def load_dataset(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    input_size: tuple[int, ...] | None = None,
    **kwargs: object,
) -> ImageDataset:
    """Load a dataset by name (``digits``, ``cifar10`` or ``imagefolder``).

    Args:
        name: The dataset.
        data_root: Its folder (ImageFolder datasets; CIFAR-10 defaults to ``$PRUNEGYM_CIFAR10``).
        input_size: ``(C, H, W)`` the model takes: ImageFolder images are resized to it (unless ``image_size`` is
            given), and the images must have it.
        **kwargs: Passed to the dataset's loader (``progress``, ``image_size``, ...).

    Raises:
        DataError: Unknown name, unreadable data, or images of another shape than ``input_size``.

    >>> load_dataset("digits").input_shape
    (1, 8, 8)
    """
    if name not in DATASETS:
        raise DataError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    if input_size is not None and name == "imagefolder":
        kwargs.setdefault("image_size", int(input_size[1]))
    dataset = DATASETS[name](data_root, **kwargs)
    if input_size is not None and tuple(input_size) != tuple(dataset.input_shape):
        resize = "" if name == "imagefolder" else " (only imagefolder data is resized to it)"
        raise DataError(
            f"input size must be the {','.join(map(str, dataset.input_shape))} of the {name} images{resize}; "
            f"got {','.join(map(str, input_size))}"
        )
    return dataset
