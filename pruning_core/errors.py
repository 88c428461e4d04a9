"""Exceptions raised for bad input, in one place (as Gymnasium's ``error.py``).

The command line prints any :class:`PruneGymError` as one line and exits non-zero; every other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class PruneGymError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class DataError(PruneGymError):
    """A dataset is missing, malformed or unreadable."""


class UnsupportedModelError(PruneGymError):
    """A model name is unknown or a model cannot be handled."""


class CheckpointError(PruneGymError):
    """A checkpoint or saved model cannot be loaded."""


class PlanError(PruneGymError):
    """A pruning plan is invalid for the model it is applied to."""


class BudgetInfeasibleError(PruneGymError):
    """A budget cannot be reached within the allowed sparsity."""


class IncompatiblePolicyError(PruneGymError):
    """A saved policy does not match the environment it is applied to."""
