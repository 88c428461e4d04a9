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


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _private_cache(_session_cache: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Caches (decoded images, lookup tables) go to one temporary folder per test session, except CIFAR-10's
    decoded arrays, which are shared with the user cache because they take half a minute to build."""
    if "cifar10_root" not in request.fixturenames:
        monkeypatch.setenv("PRUNEGYM_CACHE", str(_session_cache))
