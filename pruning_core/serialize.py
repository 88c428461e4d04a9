"""Saving and loading pruned models as folders, without pickled Python objects.

A pruned-model folder holds:

- ``plan.json``: the plan that produced it;
- ``structure.json``: base model name, classes, input shape, removed blocks, the kept channel indices of each
  group and the dynamic-skip gates with their thresholds (what is needed to rebuild the pruned architecture from
  the base model);
- ``weights.pt``: the state dict, a mapping of tensors that loads with ``torch.load(weights_only=True)``;
- ``meta.json``: costs, accuracies and anything else worth reporting.

Loading rebuilds the base model by name, replays the structure and loads the weights: a stranger's folder cannot run
code. A folder pruned from a user's own model file (``py:<file>:<function>``) records that file's path; it is
rebuilt only when the caller names that code (``run_code``, ``--model-py``), as that runs the file.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning_core.checkpoint import load_torch, save_torch
from pruning_core.data import atomic_write_bytes
from pruning_core.dynamic import add_gates, gated_blocks, set_thresholds
from pruning_core.engine import PrunedModel, folded_state_dict, prune_channels, remove_blocks
from pruning_core.errors import CheckpointError, PlanError, PruneGymError
from pruning_core.metrics import ModelCost
from pruning_core.models import build_model, check_code_named
from pruning_core.plan import PruningPlan

PRUNED_FORMAT = "prunegym-pruned"
PRUNED_VERSION = 1


@dataclass(frozen=True)
class LoadedPruned:
    """A pruned model read back from its folder."""

    model: nn.Module
    plan: PruningPlan
    structure: dict[str, Any]
    meta: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.structure["input_shape"])

    @property
    def classes(self) -> list[str]:
        return list(self.structure["classes"])

    def as_pruned(self) -> PrunedModel:
        """The :class:`~pruning_core.engine.PrunedModel` that was saved: its model, plan, kept channels, costs and
        accuracies."""
        meta = self.meta
        return PrunedModel(
            model=self.model,
            plan=self.plan,
            kept_channels={name: [int(i) for i in idxs] for name, idxs in self.structure["kept_channels"].items()},
            cost=ModelCost(int(meta["macs"]), int(meta["params"])),
            base_cost=ModelCost(int(meta["base_macs"]), int(meta["base_params"])),
            weight_sparsity=float(meta["weight_sparsity"]),
            input_shape=self.input_shape,
            accuracy={name: float(value) for name, value in meta["accuracy"].items()},
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=float) + "\n"))


def save_pruned(
    folder: str | os.PathLike[str],
    pruned: PrunedModel,
    *,
    base_model: str,
    classes: list[str],
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``pruned`` to ``folder`` (masks of unstructured sparsity are folded into the weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    structure = {
        "format": PRUNED_FORMAT,
        "version": PRUNED_VERSION,
        "base_model": base_model,
        "classes": list(classes),
        "input_shape": list(pruned.input_shape),
        "removed_blocks": list(pruned.plan.removed_blocks),
        "kept_channels": pruned.kept_channels,
        # Dynamic-skip gates (added after channel pruning) and their thresholds, when the model has them.
        "gates": {name: block.threshold for name, block in gated_blocks(pruned.model)},
    }
    meta = {
        "macs": pruned.cost.macs,
        "params": pruned.cost.params,
        "base_macs": pruned.base_cost.macs,
        "base_params": pruned.base_cost.params,
        "weight_sparsity": pruned.weight_sparsity,
        "accuracy": pruned.accuracy,
        **(extra_meta or {}),
    }
    save_torch(folder / "weights.pt", folded_state_dict(pruned.model))
    pruned.plan.save(folder / "plan.json")
    _write_json(folder / "structure.json", structure)
    _write_json(folder / "meta.json", meta)
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"pruned-model folder lacks {path.name}: {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"cannot read {path}: expected a JSON object")
    return data


def build_pruned_architecture(structure: dict[str, Any], *, run_code: bool | str = False) -> nn.Module:
    """The base model with the recorded blocks removed and channels pruned (weights not loaded).

    Raises:
        CheckpointError: The base model is a user's model file that ``run_code`` does not allow (see
            :func:`load_pruned`).
    """
    check_code_named(structure["base_model"], run_code, "the pruned-model folder")
    shape = tuple(structure["input_shape"])
    model = build_model(
        structure["base_model"],
        num_classes=len(structure["classes"]),
        in_channels=int(shape[0]),
        image_size=int(shape[1]) if len(shape) == 3 and shape[1] == shape[2] else None,
    )
    remove_blocks(model, tuple(structure.get("removed_blocks", ())))
    kept = {name: [int(i) for i in idxs] for name, idxs in structure["kept_channels"].items()}
    try:
        prune_channels(model, shape, kept)
    except AttributeError as exc:
        raise CheckpointError(f"structure names a layer {structure['base_model']} does not have: {exc}") from None
    gates = structure.get("gates") or {}
    if gates:
        model = add_gates(model, list(gates))
        set_thresholds(model, {name: float(t) for name, t in gates.items()})
    return model


def load_pruned(folder: str | os.PathLike[str], *, run_code: bool | str = False) -> LoadedPruned:
    """Rebuild a pruned model from its folder.

    Args:
        folder: The pruned-model folder.
        run_code: Rebuild a base model that is a user's model file (``py:`` names), which runs that file: True for
            any, a model name for that one only (what ``--model-py`` named). A folder alone never runs code.

    Raises:
        CheckpointError: A file is missing or damaged, the weights hold pickled objects, they do not fit, or the base
            model is user code that ``run_code`` does not allow.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"pruned-model folder {folder} does not exist")
    structure = _read_json(folder / "structure.json")
    if structure.get("format") != PRUNED_FORMAT:
        raise CheckpointError(f"{folder} is not a PruneGym pruned model (expected format {PRUNED_FORMAT!r})")
    if int(structure.get("version", 0)) > PRUNED_VERSION:
        raise CheckpointError(f"{folder} has format version {structure['version']}; this PruneGym reads up to 1")
    try:
        plan = PruningPlan.load(folder / "plan.json")
    except PlanError as exc:
        raise CheckpointError(f"{folder}: {exc}") from None
    check_code_named(str(structure.get("base_model")), run_code, str(folder))
    meta = _read_json(folder / "meta.json")
    state = load_torch(folder / "weights.pt")
    try:
        model = build_pruned_architecture(structure, run_code=run_code)
    except PruneGymError as exc:
        raise CheckpointError(f"cannot rebuild {folder}: {exc}") from None
    try:
        model.load_state_dict(_with_versions(state, model))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"weights in {folder} do not fit the recorded structure: {first}") from None
    return LoadedPruned(model=model.eval(), plan=plan, structure=structure, meta=meta)


def _with_versions(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``state`` with the module versions of ``model``'s own state dict: the saved weights are a plain mapping,
    which drops them, and some modules (torchvision's MNASNet) refuse to load without their version."""
    versioned: Any = OrderedDict(state)
    versioned._metadata = getattr(model.state_dict(), "_metadata", None)
    return versioned


def max_abs_difference(a: nn.Module, b: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between two models' outputs on the same inputs."""
    with torch.inference_mode():
        return float((a.eval()(inputs) - b.eval()(inputs)).abs().max())
