from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.factory import make_env
from envs.layer_prune import SENSITIVITY_FEATURES, SKIP_FEATURES, LayerPruneEnv
from pruning_core.engine import width_step
from pruning_core.errors import BudgetInfeasibleError, PruneGymError

# An analytic device keeps the budget arithmetic deterministic; one test below uses the measured host table.
FAST = {"val_images": 200, "bn_batches": 2, "device": "pixel-a76"}


@pytest.fixture(scope="module")
def digits_env(digits):
    return make_env(dataset=digits, **FAST)


@pytest.mark.parametrize("action_mode", ["continuous", "discrete"])
def test_env_checkers_pass(action_mode, digits):
    env = gym.make(envs.ENV_ID, action_mode=action_mode, dataset=digits, **FAST).unwrapped
    gym_check_env(env)
    sb3_check_env(env)


def test_registered_and_default_construction_on_the_host_table():
    assert envs.ENV_ID in gym.registry
    env = gym.make(envs.ENV_ID, budget=0.8, val_images=200, bn_batches=2)  # host-cpu: a lookup table built here
    obs, info = env.reset(seed=0)
    assert obs.shape == (len(envs.OBS_FEATURES),) and info["group"] == "stem.0"
    for _ in env.unwrapped.groups:
        obs, reward, terminated, _, info = env.step(env.action_space.sample())
        # the host table profiles widths in steps of 8 (a quarter of narrow groups); every kept width is one of them
        group = env.unwrapped.groups[[g.name for g in env.unwrapped.groups].index(info["group"])]
        assert info["kept"] % width_step(group.channels, 8) == 0 or info["kept"] == group.channels
    assert terminated and info["budget_met"] and 0 <= reward <= 1
    # the build picks its channel block from timings (8 or 16 here), so only the profiling step is fixed
    granule = env.unwrapped.granule
    assert granule % 8 == 0 and json.loads(info["plan"])["round_to"] == granule


def _run_episode(env, actions):
    env.reset(seed=0)
    for action in actions:
        obs, reward, terminated, _truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        if terminated:
            return reward, info
    raise AssertionError("episode did not end")


@pytest.mark.parametrize("budget", [0.4, 0.6, 0.9])
def test_random_episodes_always_meet_the_budget(budget, digits):
    env = make_env(budget=budget, dataset=digits, **FAST)
    rng = np.random.default_rng(0)
    for _ in range(5):
        reward, info = _run_episode(env, [rng.uniform(-1, 1, 1).astype(np.float32) for _ in env.groups])
        assert info["budget_met"] and info["cost"] <= env.target * (1 + 1e-9)
        assert reward == info["top1"] and 0 <= reward <= 1


def test_budget_range_draws_each_episode_budget_and_options_set_it(digits):
    env = make_env(budget=0.5, budget_range=(0.4, 0.9), dataset=digits, **FAST)
    budgets, rng = [], np.random.default_rng(0)
    for episode in range(6):
        obs, start = env.reset(seed=episode)
        # budget_left is what the policy is told about the budget: with nothing pruned yet, 1 - budget
        assert obs[envs.OBS_FEATURES.index("budget_left")] == pytest.approx(1 - start["budget"], abs=1e-6)
        for _ in env.groups:
            _, _, terminated, _, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
        assert terminated and info["budget"] == start["budget"] and info["budget_met"]
        budgets.append(start["budget"])
    assert all(0.4 <= b <= 0.9 for b in budgets) and len(set(budgets)) == 6
    _, start = env.reset(seed=0, options={"budget": 0.75})
    assert start["budget"] == 0.75 and env.target == pytest.approx(0.75 * env.dense_cost)
    fixed = make_env(budget=0.6, dataset=digits, **FAST)
    assert {fixed.reset(seed=s)[1]["budget"] for s in range(3)} == {0.6}


@pytest.mark.parametrize("budget", [0.45, 0.7])
def test_centred_actions_put_uniform_in_the_middle(budget, digits):
    from pruning_core.baselines import uniform_plan

    env = make_env(budget=budget, centre_on_uniform=True, dataset=digits, **FAST)
    _, info = _run_episode(env, [np.array([0.0], np.float32)] * len(env.groups))
    uniform = uniform_plan(env.budget_problem())
    assert json.loads(info["plan"])["sparsity"] == pytest.approx(uniform.sparsity, abs=1e-9)
    assert info["budget_met"] and 0 < env.centre_sparsity < env.max_sparsity
    assert env.decode_action(np.array([-1.0]))[0] == 0.0
    assert env.decode_action(np.array([1.0]))[0] == pytest.approx(env.max_sparsity)
    assert env.decode_action(np.array([-0.5]))[0] == pytest.approx(env.centre_sparsity / 2)
    discrete = make_env(budget=budget, centre_on_uniform=True, action_mode="discrete", dataset=digits, **FAST)
    assert discrete.decode_action(4)[0] == pytest.approx(discrete.centre_sparsity)  # the middle of 9 levels
    env.reset(seed=0, options={"budget": 0.9})
    assert env.centre_sparsity < discrete.centre_sparsity  # a looser budget (0.9), a lower centre


def test_no_pruning_is_clipped_to_meet_the_budget(digits_env):
    _, info = _run_episode(digits_env, [np.array([-1.0], np.float32)] * len(digits_env.groups))
    assert info["budget_met"] and info["cost_ratio"] <= 1.0
    plan = json.loads(info["plan"])
    assert any(v > 0 for v in plan["sparsity"].values())  # clipping forced some pruning


def test_episodes_are_reproducible_and_scores_cached(digits_env):
    actions = [np.array([0.2], np.float32)] * len(digits_env.groups)
    first = _run_episode(digits_env, actions)
    evaluations = digits_env.scorer.evaluations
    second = _run_episode(digits_env, actions)
    assert first[0] == second[0] and first[1]["plan"] == second[1]["plan"]
    assert digits_env.scorer.evaluations == evaluations  # identical plan: cached


def test_lagrangian_does_not_clip_and_penalises(digits):
    env = make_env(reward="lagrangian", budget=0.4, dataset=digits, **FAST)
    reward, info = _run_episode(env, [np.array([-1.0], np.float32)] * len(env.groups))
    assert not info["budget_met"] and reward < info["top1"]


def test_macs_budget(digits):
    env = make_env(budget_metric="macs", budget=0.3, dataset=digits, **FAST)
    _, info = _run_episode(env, [np.array([0.0], np.float32)] * len(env.groups))
    assert info["macs"] <= 0.3 * env.dense_cost * 1.0001 and info["budget_met"]


def test_analytic_device(digits):
    env = make_env(**{**FAST, "device": "stm32h747"}, budget=0.5, dataset=digits)
    _, info = _run_episode(env, [np.array([1.0], np.float32)] * len(env.groups))
    assert info["budget_met"]


def test_render_modes(digits):
    env = make_env(render_mode="ansi", dataset=digits, **FAST)
    env.reset()
    env.step(np.array([0.5], np.float32))
    assert "stem.0" in env.render()
    picture = make_env(render_mode="rgb_array", dataset=digits, **FAST)
    picture.reset()
    frame = picture.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"budget": 1.7}, PruneGymError, r"budget must be in \(0, 1\]; got 1.7"),
        ({"budget": 0.01}, BudgetInfeasibleError, "below what max_sparsity"),
        ({"reward": "speed"}, PruneGymError, "reward must be one of accuracy, lagrangian, amc-flops"),
        ({"device": "tpu"}, PruneGymError, "device must be one of"),
        ({"model": "resnet20"}, PruneGymError, "checkpoint holds small_cnn"),
        ({"action_mode": "binary"}, PruneGymError, "action_mode must be continuous or discrete"),
        ({"action_mapping": "bend"}, PruneGymError, "action_mapping must be one of clip, scaled; got 'bend'"),
        (
            {"action_mapping": "scaled", "centre_on_uniform": True},
            PruneGymError,
            "centre_on_uniform applies to action_mapping 'clip'",
        ),
        ({"budget_range": (0.8, 0.6)}, PruneGymError, r"budget_range must be \(low, high\)"),
        ({"budget_range": (0.01, 0.6)}, BudgetInfeasibleError, "budget 0.01 is below what max_sparsity"),
        ({"aim": 1.02}, PruneGymError, r"aim must be a fraction of the budget in \[0.5, 1\]; got 1.02"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, message, digits):
    args = {**FAST, "dataset": digits, **kwargs}
    if "model" in kwargs:
        args["checkpoint"] = "checkpoints/small_cnn_digits.pt"
    with pytest.raises(error, match=message):
        make_env(**args)


@pytest.mark.parametrize("budget", [0.4, 0.7])
@pytest.mark.parametrize("sensitivity", [False, True])
def test_scaled_episodes_land_on_the_budget_and_start_from_the_prior(budget, sensitivity, digits):
    env = make_env(budget=budget, dataset=digits, action_mapping="scaled", sensitivity=sensitivity, **FAST)
    features = len(envs.OBS_FEATURES) + (len(SENSITIVITY_FEATURES) if sensitivity else 0)
    assert env.observation_space.shape == (features,)
    # the zero action is the prior plan (the sensitivity plan with probes, else uniform), already on the budget
    _, info = _run_episode(env, [np.zeros(1, np.float32) for _ in env.groups])
    assert json.loads(info["plan"])["sparsity"] == dict(env.prior_plan.sparsity)
    rng = np.random.default_rng(0)
    for _ in range(5):
        actions = [rng.uniform(-1, 1, 1).astype(np.float32) for _ in env.groups]
        _, info = _run_episode(env, actions)
        assert info["budget_met"] and info["cost"] > 0.99 * env.target  # within 1% of the budget
        asked = [env.decode_action(a)[0] for a in actions]
        assert any(abs(s - env.prior_plan.sparsity[g.name]) > 0.01 for s, g in zip(asked, env.groups, strict=True))


def test_an_aim_below_the_budget_lands_every_plan_there_and_keeps_the_budget(digits):
    env = make_env(budget=0.7, aim=0.95, dataset=digits, action_mapping="scaled", **FAST)
    assert env.target == pytest.approx(0.7 * 0.95 * env.dense_cost)
    assert env.budget_problem().target == env.target  # the baselines and searches aim there too
    rng = np.random.default_rng(1)
    for _ in range(3):
        _, info = _run_episode(env, [rng.uniform(-1, 1, 1).astype(np.float32) for _ in env.groups])
        assert info["budget"] == 0.7 and info["budget_met"]
        assert 0.99 * 0.665 < info["cost"] / env.dense_cost <= 0.665 * (1 + 1e-9)


def test_residual_reward_is_the_gain_over_the_prior_plan(digits):
    env = make_env(budget=0.5, dataset=digits, action_mapping="scaled", reward="residual", **FAST)
    reward, info = _run_episode(env, [np.full(1, 0.5, np.float32) for _ in env.groups])
    assert info["prior_top1"] == env.scorer.score(env.prior_plan).top1
    assert reward == pytest.approx(info["top1"] - info["prior_top1"])
    reward, _ = _run_episode(env, [np.zeros(1, np.float32) for _ in env.groups])
    assert reward == 0.0


@pytest.mark.parametrize("action_mode", ["continuous", "discrete"])
def test_dynamic_skip(action_mode, digits):
    env = gym.make(
        envs.ENV_ID, dynamic_skip=True, action_mode=action_mode, gate_epochs=1, dataset=digits, **FAST
    ).unwrapped
    assert env.action_space.shape == (2,) if action_mode == "continuous" else env.action_space.n == 9 * 4
    gym_check_env(env)
    sb3_check_env(env)
    always_skip = np.array([0.0, 1.0], np.float32) if action_mode == "continuous" else 4 * 4 + 3
    _, info = _run_episode(env, [always_skip] * len(env.groups))
    plan = json.loads(info["plan"])
    assert set(plan["skip_thresholds"]) == {"block1", "block2"} and info["budget_met"]
    assert set(info["exec_rate"]) == {"block1", "block2"} and info["cost"] <= info["cost_static"]
    never_skip = np.array([0.0, -1.0], np.float32) if action_mode == "continuous" else 4 * 4
    _, info = _run_episode(env, [never_skip] * len(env.groups))
    assert info["exec_rate"] == {"block1": 1.0, "block2": 1.0} and info["cost"] == pytest.approx(info["cost_static"])


def test_dynamic_skip_with_probes_observes_each_blocks_skip_probe(digits):
    env = make_env(dynamic_skip=True, sensitivity=True, gate_epochs=1, dataset=digits, **FAST)
    skip = env.skip_sensitivity.features()
    assert env.observation_space.shape == (len(envs.OBS_FEATURES) + len(SENSITIVITY_FEATURES) + len(SKIP_FEATURES),)
    sb3_check_env(env)
    obs, _ = env.reset()
    for group in env.groups:
        expected = skip[group.block] if group.block is not None else (0.0,) * len(SKIP_FEATURES)
        np.testing.assert_allclose(obs[-len(SKIP_FEATURES) :], np.clip(expected, 0, 1), atol=1e-6)
        obs, *_ = env.step(np.zeros(2, np.float32))
    assert {g.block for g in env.groups} >= {"block1", "block2"}
    with pytest.raises(PruneGymError, match=r"^skip_sensitivity needs dynamic_skip=True"):
        LayerPruneEnv(env.scorer, env.budget_model, skip_sensitivity=env.skip_sensitivity)


def test_dynamic_skip_needs_residual_blocks(digits):
    with pytest.raises(PruneGymError, match="dynamic_skip needs"):
        from envs.layer_prune import LayerPruneEnv

        env = make_env(dataset=digits, **FAST)
        LayerPruneEnv(env.scorer, env.budget_model, dynamic_skip=True)


def test_bf16_scoring_option_reaches_the_scorer(digits):
    env = make_env(dataset=digits, score_bf16=True, **FAST)
    assert env.scorer.config.bf16
    _, info = _run_episode(env, [np.array([0.0], np.float32)] * len(env.groups))
    assert info["budget_met"] and 0 < info["top1"] <= 1
