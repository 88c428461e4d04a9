"""The Gymnasium pruning environment; ``import envs`` registers ``PruneGym/LayerPrune-v0``."""

from __future__ import annotations

import gymnasium

from envs.factory import make_env
from envs.layer_prune import ACTION_MAPPINGS, DEFAULT_LEVELS, OBS_FEATURES, REWARDS, LayerPruneEnv
from envs.target import BUDGET_METRICS, Target

ENV_ID = "PruneGym/LayerPrune-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.factory:make_env")

__all__ = [
    "ACTION_MAPPINGS",
    "BUDGET_METRICS",
    "DEFAULT_LEVELS",
    "ENV_ID",
    "OBS_FEATURES",
    "REWARDS",
    "LayerPruneEnv",
    "Target",
    "make_env",
]
