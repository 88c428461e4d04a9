"""Shared fixtures: small real data and the CIFAR-10 location."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from pruning_core.data import CIFAR10_ENV, ImageDataset, load_dataset

torch.set_num_threads(1)

RAY_START_SECONDS = 60


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


@pytest.fixture(scope="session")
def ray_instance():
    """A local Ray instance of 2 CPUs for the session (skipped with the reason where Ray cannot start)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed")

    def too_long(*_: object) -> None:
        raise TimeoutError(f"not started within {RAY_START_SECONDS} s")

    # Ray must start in the main thread: the alarm bounds its start
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(RAY_START_SECONDS)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # any reason Ray cannot start here
        ray.shutdown()
        pytest.skip(f"a local Ray instance cannot start here: {exc!r}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    yield ray
    ray.shutdown()
