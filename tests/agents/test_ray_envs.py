"""An agent's environments on Ray actors (``RayVecEnv``): the same SB3 training, the same episodes as in processes."""

from __future__ import annotations

import json

import pytest
import torch

from agents.train import TrainRunConfig, train_agent
from envs.target import Target
from pruning_core.errors import PruneGymError
from pruning_core.executor import RayExecutor

RUN = {"val_images": 150, "bn_batches": 2, "target": Target(device="pixel-a76"), "n_envs": 2, "seed": 3}


@pytest.fixture
def one_thread():
    """Torch threads of this process (and so of ``SubprocVecEnv``'s environments) set to the Ray actors' one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_remote_environments_train_the_same_agent_as_environments_in_processes(
    algo, ray_instance, one_thread, tmp_path
):
    config = TrainRunConfig(algo=algo, episodes=6, warmup_episodes=2, episodes_per_update=2, **RUN)
    in_processes = train_agent(config, tmp_path / "subproc", progress=False)
    with RayExecutor(threads=1) as executor:
        remote = train_agent(config, tmp_path / "ray", progress=False, executor=executor)
        assert executor.actors == []  # no scoring workers: the environments are the actors
    assert remote.state.episodes == in_processes.state.episodes == 6
    keys = ("reward", "top1", "cost_ratio", "budget_met")
    assert [[row[k] for k in keys] for row in remote.state.history] == [
        [row[k] for k in keys] for row in in_processes.state.history
    ]
    assert remote.state.best_plan == in_processes.state.best_plan
    assert json.loads((tmp_path / "ray" / "best_plan.json").read_text()) == json.loads(remote.state.best_plan)
    assert ray_instance.is_initialized()  # Ray started by the caller is left running


def test_more_environments_than_ray_cpus_are_refused_in_one_line(ray_instance, tmp_path):
    config = TrainRunConfig(algo="ppo", episodes=2, **{**RUN, "n_envs": 3})
    with (
        RayExecutor(threads=1) as executor,
        pytest.raises(
            PruneGymError,
            match=r"^expected a Ray cluster with at least 3 CPUs for 3 environments of 1 thread\(s\); got 2$",
        ),
    ):
        train_agent(config, tmp_path / "run", progress=False, executor=executor)


@pytest.mark.slow  # times plans on this host
def test_a_latency_correction_is_made_here_once_and_read_by_the_remote_environments(ray_instance, tmp_path):
    config = TrainRunConfig(
        algo="ppo",
        episodes=2,
        val_images=100,
        bn_batches=2,
        n_envs=2,
        target=Target(budget=0.6),
        calibrate_latency=True,
    )
    assert config.target.device == "host-cpu"  # measured here
    with RayExecutor(threads=1) as executor:
        train_agent(config, tmp_path / "run", progress=False, executor=executor)
    shared = json.loads((tmp_path / "run" / "latency_correction.shared.json").read_text())
    kept = json.loads((tmp_path / "run" / "latency_correction.json").read_text())
    # the environments read the correction made before them: one timing, the same for both
    assert kept["measured_at"] == shared["measured_at"] and kept["points"] == shared["points"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["calibrate_latency"] is True
