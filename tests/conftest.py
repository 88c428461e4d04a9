"""Shared fixtures: small real data and the CIFAR-10 location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pruning_core.data import CIFAR10_ENV, ImageDataset, load_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    root = os.environ.get(CIFAR10_ENV)
    if not root or not Path(root, "train").is_dir():
        pytest.skip(f"CIFAR-10 not found: set {CIFAR10_ENV} to a folder with train/ and test/ (.ci/run does)")
    return Path(root)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, request) -> None:
    """Image-folder tests write their decode cache to a temporary folder, except CIFAR-10 (shared, slow to build)."""
    if "cifar10_root" not in request.fixturenames:
        monkeypatch.setenv("PRUNEGYM_CACHE", str(tmp_path_factory.mktemp("cache")))
