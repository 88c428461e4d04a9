"""The one pruning engine shared by the agent and every heuristic baseline."""

from __future__ import annotations

from pruning_core.errors import (
    BudgetInfeasibleError,
    CheckpointError,
    DataError,
    IncompatiblePolicyError,
    PlanError,
    PruneGymError,
    UnsupportedModelError,
)

__all__ = [
    "BudgetInfeasibleError",
    "CheckpointError",
    "DataError",
    "IncompatiblePolicyError",
    "PlanError",
    "PruneGymError",
    "UnsupportedModelError",
]
