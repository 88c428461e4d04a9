"""Pickle-free checkpoints: tensors and JSON-able metadata, loaded with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning_core.data import atomic_write_bytes
from pruning_core.errors import CheckpointError
from pruning_core.models import build_model, check_code_named

FORMAT = "prunegym-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """Weights of a dense model and the metadata that says how to rebuild it."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def build(self, *, run_code: bool | str = False) -> nn.Module:
        """Rebuild the model named in the metadata (for its input size, where it is built for one) and load the
        weights into it.

        Args:
            run_code: Rebuild a model that is a user's model file (``py:`` names), which runs that file: True for any,
                a model name for that one only (what ``--model-py`` named). A checkpoint alone never runs code.

        Raises:
            CheckpointError: The model is user code that ``run_code`` does not allow, or the weights do not fit.
        """
        name = self.meta["model"]
        check_code_named(name, run_code, "the checkpoint")
        shape: list[int] = list(self.meta.get("input_shape") or ())
        model = build_model(
            name,
            num_classes=len(self.meta["classes"]),
            in_channels=int(self.meta["in_channels"]),
            image_size=int(shape[1]) if len(shape) == 3 and shape[1] == shape[2] else None,
        )
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"weights do not fit model {self.meta['model']!r}: {first}") from None
        return model.eval()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers."""
    import numpy
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": str(numpy.__version__),
    }


def save_torch(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """``torch.save`` through a temporary file and a rename, so a crash never leaves half a file."""
    atomic_write_bytes(Path(path), lambda tmp: torch.save(dict(payload), tmp))


def load_torch(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one-line errors for missing, corrupt or pickled files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it holds pickled Python objects, which are refused (only tensors and plain data load)"
        raise CheckpointError(f"cannot load {path}: {reason}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"cannot load {path}: expected a mapping at the top level; got {type(payload).__name__}")
    return payload


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Save a dense model's weights with its metadata (model name, classes, in_channels, ...)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_torch(path, {"format": FORMAT, "version": FORMAT_VERSION, "state_dict": state, "meta": dict(meta)})


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: The file is missing, not a PruneGym checkpoint, or holds pickled objects.
    """
    payload = load_torch(path)
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a PruneGym checkpoint (expected format {FORMAT!r})")
    if payload.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload['version']}; this PruneGym reads up to {FORMAT_VERSION}"
        )
    meta = payload["meta"]
    for key in ("model", "classes", "in_channels"):
        if key not in meta:
            raise CheckpointError(f"{path} metadata lacks {key!r}")
    return Checkpoint(state_dict=payload["state_dict"], meta=meta)


def sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's state (names, shapes and values): tells a resume file which starting model it
    continues."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_resume(path: Path | None, settings: str, what: str) -> dict[str, Any]:
    """The state an interrupted run saved at ``path`` (empty when there is none), refused when it was made with other
    ``settings`` (a JSON string the run saves under ``settings``); ``what`` names the run in the error.

    Raises:
        CheckpointError: The file holds a run with other settings (or is not a checkpoint).
    """
    if path is None or not path.exists():
        return {}
    saved = load_torch(path)
    if saved.get("settings") != settings:
        raise CheckpointError(
            f"{path} holds {what} with other settings: expected {settings}, got {saved.get('settings')}"
        )
    return saved
