"""What a search aims at: a model and its checkpoint, its data, a device and a budget there, in one value.

It lives in ``envs`` because :func:`~envs.factory.make_env` is the first thing that needs it, and every layer that
uses it (``agents``, ``scripts``) sits above.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hardware_models.registry import check_device
from pruning_core.data import DATASETS, ImageDataset, load_dataset
from pruning_core.errors import CheckpointError, PruneGymError
from pruning_core.models import USER_CODE_PREFIX, is_user_code

REPO_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
"""The checkpoints committed with the source (present in a source checkout, not in an installed wheel)."""
CHECKPOINTS_ENV = "PRUNEGYM_CHECKPOINTS"
BUDGET_METRICS = ("latency", "macs", "params")


def checkpoint_dirs() -> list[Path]:
    """Where default checkpoints are looked for, in order: ``$PRUNEGYM_CHECKPOINTS``, ``./checkpoints``, and the
    source checkout's ``checkpoints/``."""
    dirs = [Path(os.environ[CHECKPOINTS_ENV])] if os.environ.get(CHECKPOINTS_ENV) else []
    dirs += [Path.cwd() / "checkpoints", REPO_CHECKPOINTS]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def find_checkpoint(model: str, data: str) -> Path | None:
    """The first ``<model>_<data>.pt`` in :func:`checkpoint_dirs`, or None."""
    return next((d / f"{model}_{data}.pt" for d in checkpoint_dirs() if (d / f"{model}_{data}.pt").is_file()), None)


def default_checkpoint(model: str, data: str) -> Path:
    """The default checkpoint of ``model`` on ``data``: ``<model>_<data>.pt`` in :func:`checkpoint_dirs`.

    Raises:
        CheckpointError: None of them holds one.
    """
    if is_user_code(model):
        code = model.removeprefix(USER_CODE_PREFIX)
        raise CheckpointError(
            f"expected a checkpoint of the user's model {code}: train one with `prunegym pretrain --model-py {code} "
            "--out MODEL.pt` (--epochs 0 keeps random weights) and pass --checkpoint MODEL.pt"
        )
    path = find_checkpoint(model, data)
    if path is None:
        looked = ", ".join(str(d) for d in checkpoint_dirs())
        raise CheckpointError(
            f"expected a checkpoint: none given, and no {model}_{data}.pt in {looked} (pass one, or set "
            f"${CHECKPOINTS_ENV})"
        )
    return path


@dataclass(frozen=True)
class Target:
    """A model to prune and the budget it must meet on a device; checked when built, so that a typo fails at once.

    >>> target = Target(device="pixel-a76", budget=0.6)
    >>> target.model, target.checkpoint_path.name, target.budget_metric
    ('small_cnn', 'small_cnn_digits.pt', 'latency')
    """

    model: str = "small_cnn"
    """Model name (the checkpoint's); ``py:<file>:<function>`` runs that file (a user's own model)."""
    checkpoint: str | None = None
    """Dense checkpoint (None: ``<model>_<data>.pt`` from :func:`checkpoint_dirs`)."""
    data: str = "digits"
    """Dataset name (``digits``, ``cifar10``, ``imagefolder``)."""
    data_root: str | None = None
    """Dataset folder (ImageFolder datasets; CIFAR-10 defaults to ``$PRUNEGYM_CIFAR10``)."""
    device: str = "host-cpu"
    """Target device (see ``prunegym devices``; ``lut:PATH`` for a lookup table)."""
    budget: float = 0.5
    """Fraction of the dense model's cost to reach, in (0, 1]."""
    budget_metric: str = "latency"
    """What the budget is a fraction of: ``latency`` on the device, ``macs`` or ``params``."""
    input_size: tuple[int, int, int] | None = None
    """``(C, H, W)`` the model takes, checked against the data (ImageFolder images are resized to it); None: the
    data's."""

    def __post_init__(self) -> None:
        for name in ("checkpoint", "data_root"):  # a Path given for a path is kept as its text
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, os.fspath(value))
        if self.input_size is not None:  # a list when read back from JSON
            size = tuple(self.input_size)
            if len(size) != 3 or not all(isinstance(x, int) and x >= 1 for x in size):
                raise PruneGymError(f"input_size must be three positive integers (C, H, W); got {self.input_size!r}")
            object.__setattr__(self, "input_size", size)
        if self.data not in DATASETS:
            raise PruneGymError(f"data must be one of {', '.join(DATASETS)}; got {self.data!r}")
        check_device(self.device)
        if self.budget_metric not in BUDGET_METRICS:
            raise PruneGymError(f"budget_metric must be one of {', '.join(BUDGET_METRICS)}; got {self.budget_metric!r}")
        if not 0 < self.budget <= 1:
            raise PruneGymError(f"budget must be in (0, 1]; got {self.budget:g}")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise CheckpointError(f"expected a checkpoint file; got {self.checkpoint} (no such file)")
        if self.checkpoint is None:
            default_checkpoint(self.model, self.data)  # the committed one must exist

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint file: the one given, else the default one."""
        return Path(self.checkpoint) if self.checkpoint is not None else default_checkpoint(self.model, self.data)

    def load_dataset(self, *, progress: bool = True) -> ImageDataset:
        """The target's data, checked against (and for ImageFolder data resized to) ``input_size``."""
        return load_dataset(self.data, self.data_root, input_size=self.input_size, progress=progress)

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (of :func:`~envs.factory.make_env` and ``agents.TrainRunConfig``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
