"""Saving a learned policy without pickles: weights as tensors, architecture and spaces as JSON.

``policy.pt`` holds the policy network's state dict (``torch.load(weights_only=True)``); ``policy.json`` holds the
algorithm, the policy class, its keyword arguments, the observation and action spaces, and the environment settings
it was trained for. Loading rebuilds the network from the JSON and loads the weights. SB3's own ``model.zip`` is
kept beside it for resuming training only: it is a pickle and is opened only for runs the user made.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy

from envs.layer_prune import DEFAULT_LEVELS
from pruning_core.checkpoint import load_torch, save_torch
from pruning_core.data import atomic_write_bytes
from pruning_core.errors import CheckpointError, IncompatiblePolicyError

POLICY_CLASSES: dict[str, type[BasePolicy]] = {
    "ActorCriticPolicy": ActorCriticPolicy,
    "DQNPolicy": DQNPolicy,
    "SACPolicy": SACPolicy,
    "TD3Policy": TD3Policy,
}
POLICY_FORMAT = "prunegym-policy"


def space_to_json(space: spaces.Space[Any]) -> dict[str, Any]:
    """A JSON description of a Box or Discrete space.

    >>> space_to_json(spaces.Discrete(3))
    {'type': 'Discrete', 'n': 3}
    """
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "low": space.low.tolist(), "high": space.high.tolist()}
    raise IncompatiblePolicyError(f"expected a Box or Discrete space; got {type(space).__name__}")


def space_from_json(data: dict[str, Any]) -> spaces.Space[Any]:
    if data["type"] == "Discrete":
        return spaces.Discrete(int(data["n"]))
    return spaces.Box(
        np.array(data["low"], np.float32), np.array(data["high"], np.float32), tuple(data["shape"]), np.float32
    )


def describe_space(data: dict[str, Any]) -> str:
    return f"Discrete({data['n']})" if data["type"] == "Discrete" else f"Box(shape={tuple(data['shape'])})"


@dataclass(frozen=True)
class SavedPolicy:
    """A policy network rebuilt from ``policy.json`` and ``policy.pt``."""

    policy: BasePolicy
    description: dict[str, Any]

    @property
    def env_settings(self) -> dict[str, Any]:
        return dict(self.description.get("env", {}))

    def action_settings(self) -> dict[str, Any]:
        """Environment settings that give the policy's actions the meaning they had in training.

        Pass them to ``make_env`` when the policy is applied to another model, budget or device.
        """
        trained = self.env_settings
        return {
            "action_mode": trained.get("action_mode", "continuous"),
            "max_sparsity": trained.get("max_sparsity", 0.9),
            "criterion": trained.get("criterion", "l1"),
            "dynamic_skip": trained.get("dynamic_skip", False),
            "centre_on_uniform": trained.get("centre_on_uniform", False),
            "levels": trained.get("levels", DEFAULT_LEVELS),
            "sensitivity": trained.get("sensitivity", False),
            "action_mapping": trained.get("action_mapping", "clip"),
        }

    def check_compatible(self, observation_space: spaces.Space[Any], action_space: spaces.Space[Any]) -> None:
        """Refuse an environment whose spaces differ from the ones the policy was trained on."""
        for what, saved, actual in (
            ("observation space", self.description["observation_space"], space_to_json(observation_space)),
            ("action space", self.description["action_space"], space_to_json(action_space)),
        ):
            same_kind = saved["type"] == actual["type"]
            same_size = saved.get("n") == actual.get("n") and saved.get("shape") == actual.get("shape")
            if not (same_kind and same_size):
                raise IncompatiblePolicyError(
                    f"{what} differs: the policy expects {describe_space(saved)}, got {describe_space(actual)}"
                )

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The deterministic action for one observation."""
        action, _ = self.policy.predict(observation, deterministic=True)
        return np.asarray(action)


def save_policy(folder: str | os.PathLike[str], sb3_model: Any, *, algo: str, env_settings: dict[str, Any]) -> None:
    """Write ``policy.json`` and ``policy.pt`` for a trained stable-baselines3 model."""
    folder = Path(folder)
    policy = sb3_model.policy
    name = type(policy).__name__
    if name not in POLICY_CLASSES:
        name = next(k for k, v in POLICY_CLASSES.items() if isinstance(policy, v))
    kwargs = {k: v for k, v in sb3_model.policy_kwargs.items() if isinstance(v, int | float | str | list | dict | bool)}
    description = {
        "format": POLICY_FORMAT,
        "version": 1,
        "algo": algo,
        "policy_class": name,
        "policy_kwargs": kwargs,
        "observation_space": space_to_json(policy.observation_space),
        "action_space": space_to_json(policy.action_space),
        "env": env_settings,
    }
    save_torch(folder / "policy.pt", {k: v.detach().cpu() for k, v in policy.state_dict().items()})
    atomic_write_bytes(folder / "policy.json", lambda tmp: tmp.write_text(json.dumps(description, indent=2)))


def load_policy(folder: str | os.PathLike[str]) -> SavedPolicy:
    """Rebuild a saved policy (no unpickling).

    Raises:
        CheckpointError: Files are missing or damaged.
    """
    folder = Path(folder)
    path = folder / "policy.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} holds no policy.json (expected a run folder of `prunegym train`)")
    description = json.loads(path.read_text())
    if description.get("format") != POLICY_FORMAT or description.get("policy_class") not in POLICY_CLASSES:
        raise CheckpointError(f"{path} is not a PruneGym policy description")
    policy_class = POLICY_CLASSES[description["policy_class"]]
    policy = policy_class(
        space_from_json(description["observation_space"]),
        space_from_json(description["action_space"]),
        lambda _progress: 0.0,
        **description["policy_kwargs"],
    )
    state = load_torch(folder / "policy.pt")
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"policy weights in {folder} do not fit {description['policy_class']}: {str(exc).splitlines()[0]}"
        ) from None
    policy.set_training_mode(False)
    return SavedPolicy(policy=policy.to(torch.device("cpu")), description=description)
