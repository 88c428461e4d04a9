"""A pruning plan is data: per-group sparsity keyed by group name, saved as JSON, replayable on a fresh model."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pruning_core.errors import PlanError

PLAN_SCHEMA_VERSION = 1
MAX_SPARSITY = 0.95


class Granularity(str, enum.Enum):
    """What a sparsity ratio removes."""

    CHANNEL = "channel"
    """Whole channels (filters) of a group, physically: smaller tensors."""
    UNSTRUCTURED = "unstructured"
    """Single weights of the group's producer layers (masks, zeros after export)."""
    NM = "nm"
    """N:M sparsity (e.g. 2:4) in the producer layers of every group with a sparsity above zero."""


@dataclass(frozen=True)
class PruningPlan:
    """Which channels, weights or blocks to remove.

    Attributes:
        sparsity: Fraction of each group to remove, keyed by group name; absent groups are kept whole.
        criterion: Importance criterion that ranks channels or weights (``l1``, ``l2``, ``taylor``, ...).
        granularity: ``channel``, ``unstructured`` or ``nm``.
        nm: ``(N, M)`` for N:M sparsity: keep N of every M consecutive input weights.
        removed_blocks: Residual blocks with an identity shortcut to remove entirely (layer pruning).
        skip_thresholds: Dynamic skipping: gate threshold per residual block (0 never skips; see
            ``pruning_core.dynamic``). Empty for a static plan.
        round_to: Round each group's kept channels to a multiple of this, or of a quarter of the group when that is
            smaller (never below one multiple, never above the group; see ``engine.width_step``).
        schema_version: Version of the JSON layout.
    """

    sparsity: Mapping[str, float] = field(default_factory=dict)
    criterion: str = "l1"
    granularity: Granularity = Granularity.CHANNEL
    nm: tuple[int, int] = (2, 4)
    removed_blocks: tuple[str, ...] = ()
    skip_thresholds: Mapping[str, float] = field(default_factory=dict)
    round_to: int = 1
    schema_version: int = PLAN_SCHEMA_VERSION

    def __post_init__(self) -> None:
        try:
            granularity = Granularity(self.granularity)
        except ValueError:
            options = ", ".join(g.value for g in Granularity)
            raise PlanError(f"granularity must be one of {options}; got {self.granularity!r}") from None
        object.__setattr__(self, "granularity", granularity)
        object.__setattr__(self, "sparsity", MappingProxyType({str(k): float(v) for k, v in self.sparsity.items()}))
        object.__setattr__(self, "removed_blocks", tuple(self.removed_blocks))
        thresholds = MappingProxyType({str(k): float(v) for k, v in self.skip_thresholds.items()})
        object.__setattr__(self, "skip_thresholds", thresholds)
        for name, value in thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise PlanError(f"skip threshold for {name} must be in [0, 1]; got {value:g}")
        object.__setattr__(self, "nm", tuple(int(x) for x in self.nm))
        for name, ratio in self.sparsity.items():
            if not 0.0 <= ratio <= MAX_SPARSITY:
                raise PlanError(f"sparsity for {name} must be in [0, {MAX_SPARSITY}]; got {ratio:g}")
        n, m = self.nm
        if not 0 < n < m:
            raise PlanError(f"N:M sparsity needs 0 < N < M; got {n}:{m}")
        if self.round_to < 1:
            raise PlanError(f"round_to must be >= 1; got {self.round_to}")
        if self.schema_version > PLAN_SCHEMA_VERSION:
            raise PlanError(
                f"plan schema version must be <= {PLAN_SCHEMA_VERSION} for this PruneGym; got {self.schema_version}"
            )

    @classmethod
    def uniform(cls, groups: Iterable[str], ratio: float, **kwargs: Any) -> PruningPlan:
        """The same sparsity in every group (Li et al., ICLR 2017).

        >>> PruningPlan.uniform(["conv1", "layer1.0.conv1"], 0.5).sparsity["conv1"]
        0.5
        """
        return cls(sparsity={g: ratio for g in groups}, **kwargs)

    def validate_for(self, group_names: Iterable[str], block_names: Iterable[str]) -> None:
        """Check that every group and block the plan names exists in the model.

        Raises:
            PlanError: A name is unknown.
        """
        groups = list(group_names)
        unknown = sorted(set(self.sparsity) - set(groups))
        if unknown:
            raise PlanError(
                f"plan names groups the model does not have: {unknown[:5]}; expected names like {groups[:3]}"
            )
        blocks = list(block_names)
        bad_blocks = sorted((set(self.removed_blocks) | set(self.skip_thresholds)) - set(blocks))
        if bad_blocks:
            raise PlanError(
                f"removed or gated blocks must be skippable residual blocks {blocks[:4]}...; got {bad_blocks[:5]}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "criterion": self.criterion,
            "granularity": self.granularity.value,
            "nm": list(self.nm),
            "round_to": self.round_to,
            "removed_blocks": list(self.removed_blocks),
            "skip_thresholds": dict(self.skip_thresholds),
            "sparsity": dict(self.sparsity),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal plans give equal strings, usable as a cache key."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        if not isinstance(data, Mapping) or "sparsity" not in data:
            raise PlanError("expected a plan object with a 'sparsity' mapping")
        known = {
            "schema_version",
            "criterion",
            "granularity",
            "nm",
            "round_to",
            "removed_blocks",
            "sparsity",
            "skip_thresholds",
        }
        extra = sorted(set(data) - known)
        if extra:
            raise PlanError(f"plan has unknown keys {extra}; expected some of {sorted(known)}")
        kwargs: dict[str, Any] = {k: (tuple(v) if k in ("nm", "removed_blocks") else v) for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON, atomically."""
        from pruning_core.data import atomic_write_bytes

        atomic_write_bytes(Path(path), lambda tmp: tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist")
        return cls.from_json(path.read_text())
