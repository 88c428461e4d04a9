"""The agents' environments as Ray actors behind stable-baselines3's ``VecEnv`` interface (``--executor ray``).

:class:`RayVecEnv` is what ``SubprocVecEnv`` is on one machine, on a Ray cluster: one actor per environment, each
built once from its factory (the dense model, its data and its latency table loaded there), stepped in parallel. The
SB3 algorithms train against it unchanged. Seeds, resets and automatic resets follow SB3's vectorised conventions
(``terminal_observation`` in the last step's info, ``reset_infos``), so a run with the same seed and the same torch
threads per environment gives the same episodes as with ``SubprocVecEnv``.

Latency is not measured in an actor: an episode's cost comes from the environment's cost model (a lookup table or a
count); only the budget checks after a search measure, on the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from pruning_core.errors import PruneGymError

if TYPE_CHECKING:
    from pruning_core.executor import RayExecutor


class EnvWorker:
    """A Ray actor's state: one environment, stepped one call at a time (the actor's class; Ray's decorator is
    applied by :class:`RayVecEnv`, so that importing this module does not import Ray).

    Args:
        build: Makes the environment (called once, in the actor).
        threads: Torch threads of the actor.
    """

    def __init__(self, build: Callable[[], gym.Env], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.env = build()

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        return self.env.observation_space, self.env.action_space

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, dict[str, Any], dict[str, Any]]:
        """One step in SB3's convention: an episode that ends is reset at once, its last observation in the info."""
        observation, reward, terminated, truncated, info = self.env.step(action)
        done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        reset_info: dict[str, Any] = {}
        if done:
            info["terminal_observation"] = observation
            observation, reset_info = self.env.reset()
        return observation, float(reward), done, info, reset_info

    def reset(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        return self.env.reset(seed=seed, **({"options": options} if options else {}))

    def get_attr(self, name: str) -> Any:
        return self.env.get_wrapper_attr(name)

    def has_attr(self, name: str) -> bool:
        try:
            self.env.get_wrapper_attr(name)
        except AttributeError:
            return False
        return True

    def set_attr(self, name: str, value: Any) -> None:
        setattr(self.env, name, value)

    def env_method(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper: type[gym.Wrapper]) -> bool:
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(self.env, wrapper)

    def close(self) -> None:
        self.env.close()


class RayVecEnv(VecEnv):
    """Environments on Ray actors, stepped in parallel (see the module's docstring).

    Args:
        env_fns: One factory per environment (sent to its actor: picklable by cloudpickle, as ``SubprocVecEnv``'s).
        executor: Where Ray runs (its address, or a local instance it starts) and the torch threads, and Ray CPUs,
            of each environment (``executor.threads``).

    Raises:
        PruneGymError: The Ray cluster has fewer CPUs than the environments ask for (they would wait for ever).
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], executor: RayExecutor) -> None:
        ray = executor.connect()
        need, have = len(env_fns) * executor.threads, ray.cluster_resources().get("CPU", 0)
        if need > have:
            raise PruneGymError(
                f"expected a Ray cluster with at least {need} CPUs for {len(env_fns)} environments of "
                f"{executor.threads} thread(s); got {have:g}"
            )
        executor.check_fits()
        actor = ray.remote(EnvWorker).options(num_cpus=executor.threads)
        self.actors = [actor.remote(build, executor.threads) for build in env_fns]
        self.executor = executor
        self._pending: list[Any] = []
        self.closed = False
        observation_space, action_space = ray.get(self.actors[0].spaces.remote())
        super().__init__(len(env_fns), observation_space, action_space)

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = [actor.step.remote(action) for actor, action in zip(self.actors, actions, strict=True)]

    def step_wait(self) -> VecEnvStepReturn:
        import ray

        pending, self._pending = self._pending, []
        results = ray.get(pending)
        observations, rewards, dones, infos, self.reset_infos = zip(*results, strict=True)  # type: ignore[assignment]
        return np.stack(observations), np.array(rewards, dtype=np.float32), np.array(dones), list(infos)

    def reset(self) -> VecEnvObs:
        import ray

        calls = [actor.reset.remote(self._seeds[i], self._options[i]) for i, actor in enumerate(self.actors)]
        observations, self.reset_infos = zip(*ray.get(calls), strict=True)  # type: ignore[assignment]
        self._reset_seeds()
        self._reset_options()
        return np.stack(observations)

    def _call(self, method: str, indices: VecEnvIndices, *args: Any) -> list[Any]:
        import ray

        return ray.get([getattr(self.actors[i], method).remote(*args) for i in self._get_indices(indices)])

    def has_attr(self, attr_name: str) -> bool:
        return all(self._call("has_attr", None, attr_name))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._call("get_attr", indices, attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._call("set_attr", indices, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        return self._call("env_method", indices, method_name, method_args, method_kwargs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return self._call("is_wrapped", indices, wrapper_class)

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in self.actors]  # the pruning environments render nothing

    def close(self) -> None:
        """Close the environments and release their actors (Ray itself is the executor's to stop)."""
        if self.closed:
            return
        import ray

        pending, self._pending, self.closed = self._pending, [], True
        try:
            ray.get(pending)  # a step in flight ends before the environments close
            ray.get([actor.close.remote() for actor in self.actors])
        finally:  # the actors go even where a step or a close failed
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
