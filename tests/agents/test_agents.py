from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from agents.apply import (
    LATENCY_ROUNDS,
    finish_plan,
    measured_ratios,
    meet_measured_budget,
    meet_measured_budgets,
    plan_from_policy,
    replay_check,
)
from agents.policy_io import load_policy
from agents.train import ALGOS, TrainRunConfig, _keep_progress_log, _save_via_file, train_agent
from envs.factory import make_env
from envs.target import Target
from pruning_core.errors import CheckpointError, IncompatiblePolicyError, PruneGymError
from pruning_core.finetune import finetune_recipe
from pruning_core.plan import PruningPlan
from pruning_core.serialize import load_pruned
from pruning_core.training import TrainConfig

FAST = {"val_images": 150, "bn_batches": 2, "device": "pixel-a76"}
RUN_FAST = {"val_images": 150, "bn_batches": 2, "target": Target(device="pixel-a76")}
"""The same for an agent's run configuration."""


def _config(algo: str, episodes: int = 6) -> TrainRunConfig:
    return TrainRunConfig(algo=algo, episodes=episodes, warmup_episodes=2, **RUN_FAST)


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_every_algorithm_searches_and_saves_a_loadable_policy(algo, tmp_path):
    result = train_agent(_config(algo), tmp_path / "run", progress=False)
    assert result.state.episodes == 6 and 1 <= result.state.best_episode <= 6
    assert 0 < result.state.best_top1 <= 1
    best = json.loads((tmp_path / "run" / "best_plan.json").read_text())
    assert json.loads(result.state.best_plan)["sparsity"] == best["sparsity"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["algo"] == algo
    policy = load_policy(tmp_path / "run")  # rebuilt from JSON and tensors, no unpickling
    env = make_env(action_mode=ALGOS[algo].action_mode, **FAST)
    plan, info = plan_from_policy(policy, env)
    assert info["budget_met"] and set(plan.sparsity) == set(env.engine.group_names)
    assert (tmp_path / "run" / "tb").is_dir()


def test_resume_continues_where_the_run_stopped(tmp_path):
    first = train_agent(_config("dqn", episodes=4), tmp_path / "run", progress=False)
    tb = tmp_path / "run" / "tb"
    log = (tb / "progress.csv").read_text()
    resumed = train_agent(None, tmp_path / "run", resume=True, episodes=7, progress=False)
    # SB3 truncates the CSV log it opens: the first run's log is kept beside the resumed one
    assert log.count("\n") > 1 and (tb / "progress.upto-episode-4.csv").read_text() == log
    assert (tb / "progress.csv").read_text().count("\n") > 1
    assert resumed.state.episodes == 7 and len(resumed.state.history) == 7
    # the search's time is summed over both processes, not restarted by the resume
    assert 0 < first.state.seconds < resumed.state.seconds and first.state.cpu_seconds < resumed.state.cpu_seconds
    assert [row["seconds"] for row in resumed.state.history] == sorted(row["seconds"] for row in resumed.state.history)
    # the replay buffer holds the whole search, sized to it (saved after every episode, so kept small); SB3 stores a
    # step's transition after the callback that saves it, so each run's save misses its last one
    from stable_baselines3.common.save_util import load_from_pkl

    buffer = load_from_pkl(tmp_path / "run" / "replay_buffer.pkl")
    steps = len(make_env(**FAST).unwrapped.groups)
    assert buffer.buffer_size == (4 + 10) * steps and not buffer.full and 7 * steps - 2 <= buffer.pos
    logs = sorted((tmp_path / "run" / "tb").iterdir())
    again = train_agent(None, tmp_path / "run", resume=True, progress=False)  # complete: returned as it is
    assert again.state.episodes == 7 and again.seconds == 0.0 and sorted((tmp_path / "run" / "tb").iterdir()) == logs
    with pytest.raises(PruneGymError, match="already holds a run"):
        train_agent(_config("dqn"), tmp_path / "run", progress=False)
    # a resume given a configuration takes the saved one, and refuses a run started with other settings
    same = train_agent(_config("dqn", episodes=99), tmp_path / "run", resume=True, progress=False)
    assert same.state.episodes == 7 and same.seconds == 0.0  # the episode total is the saved one's
    other = TrainRunConfig(algo="dqn", episodes=7, warmup_episodes=2, finetune_steps=5, **RUN_FAST)
    with pytest.raises(PruneGymError, match="started with finetune_steps=5; got finetune_steps=50"):
        train_agent(other, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_agent(None, tmp_path / "empty", resume=True, progress=False)


def test_dqn_explores_over_its_share_of_the_search_and_then_exploits(tmp_path):
    from stable_baselines3 import DQN

    from agents.train import DQN_EXPLORATION_FRACTION

    steps = len(make_env(**FAST).unwrapped.groups)
    train_agent(_config("dqn", episodes=4), tmp_path / "run", progress=False)
    model = DQN.load(tmp_path / "run" / "model.zip", device="cpu")
    # SB3's schedule runs over the search's own steps (two episodes to spare), not an inflated bound
    assert model._total_timesteps == (4 + 2) * steps and model.exploration_fraction == DQN_EXPLORATION_FRACTION
    assert model.exploration_rate == pytest.approx(0.05)  # 4 of 6 episodes done: past the exploring share
    train_agent(None, tmp_path / "run", resume=True, episodes=6, progress=False)
    resumed = DQN.load(tmp_path / "run" / "model.zip", device="cpu")
    # a resume continues the same schedule: SB3 adds the steps already done to the 2 (+2) episodes left
    assert resumed._total_timesteps == (2 + 2) * steps + model.num_timesteps


def test_dqn_on_three_levels_keeps_thins_or_follows_uniform_and_its_policy_applies_with_them(tmp_path):
    config = TrainRunConfig(algo="dqn", episodes=3, warmup_episodes=1, levels=3, centre_on_uniform=True, **RUN_FAST)
    train_agent(config, tmp_path / "run", progress=False)
    policy = load_policy(tmp_path / "run")
    env = make_env(**policy.action_settings(), **FAST)
    assert env.action_space.n == 3
    plan, info = plan_from_policy(policy, env)
    assert info["budget_met"] and set(plan.sparsity) == set(env.engine.group_names)
    with pytest.raises(PruneGymError, match="levels applies to discrete algorithms; got algo 'ppo'"):
        TrainRunConfig(algo="ppo", levels=3)
    with pytest.raises(PruneGymError, match="levels must be >= 2; got 1"):
        TrainRunConfig(algo="dqn", levels=1)


def test_a_save_cut_short_leaves_the_last_model_intact(tmp_path):
    # a kill mid-save once left a truncated model.zip that the resume could not open (CI, session 13)
    train_agent(_config("dqn", episodes=2), tmp_path / "run", progress=False)
    saved = tmp_path / "run" / "model.zip"
    before = saved.read_bytes()

    def killed_midway(handle):
        handle.write(before[: len(before) // 2])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _save_via_file(saved, killed_midway)
    assert saved.read_bytes() == before and not [p for p in saved.parent.iterdir() if p.name.endswith(".tmp")]
    resumed = train_agent(None, tmp_path / "run", resume=True, episodes=3, progress=False)
    assert resumed.state.episodes == 3


def test_a_run_over_a_budget_range_learns_one_policy_for_every_budget(tmp_path):
    config = TrainRunConfig(algo="ppo", episodes=5, budget_range=(0.5, 0.9), **RUN_FAST)
    result = train_agent(config, tmp_path / "run", progress=False)
    budgets = [row["budget"] for row in result.state.history]
    assert len(set(budgets)) == 5 and all(0.5 <= b <= 0.9 for b in budgets)
    assert result.state.best_plan is None and not (tmp_path / "run" / "best_plan.json").exists()
    resumed = train_agent(None, tmp_path / "run", resume=True, episodes=6, progress=False)  # config.json: a list
    assert resumed.state.episodes == 6 and 0.5 <= resumed.state.history[-1]["budget"] <= 0.9
    policy = load_policy(tmp_path / "run")
    assert policy.env_settings["budget_range"] == [0.5, 0.9]
    for budget in (0.55, 0.85):
        _, info = plan_from_policy(policy, make_env(budget=budget, **policy.action_settings(), **FAST))
        assert info["budget"] == budget and info["budget_met"]
    with pytest.raises(PruneGymError, match=r"budget_range must be \(low, high\)"):
        TrainRunConfig(budget_range=(0.9, 0.5))


@pytest.mark.parametrize("algo", ["ppo", "td3"])
def test_action_std_sets_the_initial_exploration(algo, tmp_path):
    import numpy as np
    from stable_baselines3 import PPO, TD3

    config = TrainRunConfig(
        algo=algo, episodes=2, warmup_episodes=1, action_std=0.3, centre_on_uniform=True, **RUN_FAST
    )
    run = train_agent(config, tmp_path / "run", progress=False).run
    if algo == "ppo":
        model = PPO.load(run / "model.zip", device="cpu")
        assert np.exp(model.policy.log_std.detach().numpy()) == pytest.approx(0.3, rel=0.05)  # two updates at most
    else:
        model = TD3.load(run / "model.zip", device="cpu")
        assert model.action_noise._sigma == pytest.approx(np.array([0.3]))
    with pytest.raises(PruneGymError, match="action_std must be > 0; got 0"):
        TrainRunConfig(action_std=0.0)
    with pytest.raises(PruneGymError, match="action_std applies to continuous algorithms; got algo 'dqn'"):
        TrainRunConfig(algo="dqn", action_std=0.5)


def test_incompatible_policy_is_refused(tmp_path):
    train_agent(_config("dqn", episodes=3), tmp_path / "run", progress=False)
    policy = load_policy(tmp_path / "run")
    continuous = make_env(action_mode="continuous", **FAST)
    with pytest.raises(
        IncompatiblePolicyError, match=r"action space differs: the policy expects Discrete\(9\), got Box"
    ):
        plan_from_policy(policy, continuous)


def test_policy_weights_are_plain_tensors(tmp_path):
    train_agent(_config("ppo", episodes=3), tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "policy.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_finish_plan_reports_and_saves(tmp_path, digits):
    env = make_env(dataset=digits, **FAST)
    plan = PruningPlan.uniform(env.engine.group_names, 0.3)
    result = finish_plan(
        "uniform",
        env,
        plan,
        digits,
        finetune=TrainConfig(epochs=1, lr=0.01, warmup_epochs=0),
        out=tmp_path / "p",
        base_model="small_cnn",
        progress=False,
    )
    record = result.record
    assert record.val_top1_finetuned is not None and 0 <= record.test_top1_finetuned <= 1
    assert record.latency_ms_predicted is not None and record.latency_ms_predicted < record.dense_latency_ms_predicted
    assert record.macs < record.dense_macs and record.sparsity == dict(plan.sparsity)
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["plan"]["sparsity"] == dict(plan.sparsity)
    # report.json: the record under the names results.json has, beside the plan and the widths
    assert {k: v for k, v in report.items() if k not in ("plan", "groups", "written")} == record.to_dict()
    loaded = load_pruned(tmp_path / "p")
    assert loaded.meta["macs"] == record.macs and loaded.plan == plan


def test_the_measured_check_moves_a_plan_into_its_budget_band(digits):
    env = make_env(dataset=digits, val_images=150, bn_batches=2, device="host-cpu", budget=0.6)
    names = env.engine.group_names
    plan = PruningPlan.uniform(names, 0.2)  # about 0.8 of dense on this host, far over 0.6
    checked, check = meet_measured_budget(env, plan)
    assert check["latency_ratio_before_check"] > 0.6 and check["check_steps"] >= 1
    assert check["latency_ratio_after_check"] <= 0.6 or check["thinned_by"] == 1.0
    assert check["thinned_by"] > 0 and all(checked.sparsity[n] > plan.sparsity[n] for n in names)  # thinned alike
    assert len(check["check_ratios"]) == check["check_steps"] + 1
    thin = PruningPlan.uniform(names, 0.9)  # about 0.48 of dense: far under 0.6, so widened toward it
    wider, widened = meet_measured_budget(env, thin)
    assert widened["latency_ratio_before_check"] < 0.6 * 0.94 and widened["check_steps"] >= 1
    # the thin plan itself was within the budget, so what is kept is within it too, and no thinner
    assert widened["latency_ratio_before_check"] <= widened["latency_ratio_after_check"] <= 0.6
    assert all(wider.sparsity[n] <= thin.sparsity[n] for n in names)
    # the check is deterministic given its readings: the plan it kept is rebuilt from the record alone
    assert replay_check(env, plan, check) == checked and replay_check(env, thin, widened) == wider
    with pytest.raises(PruneGymError, match="expected the replayed check to move the plan by"):
        replay_check(env, plan, {**check, "thinned_by": check["thinned_by"] / 2})
    assert 0 < check["latency_ratio_confirmed"] < 1  # one more, unselected reading of the kept plan
    # timed in the fresh worker process, not in this one (which has just trained and searched)
    reading = measured_ratios(env, env.engine.apply(checked).model)
    assert reading.timing == "worker" and len(reading.ratios) == LATENCY_ROUNDS
    with pytest.raises(PruneGymError, match="expected an environment on a device measured on this host"):
        meet_measured_budget(make_env(dataset=digits, **FAST), plan)  # an analytic profile: nothing to measure
    # several plans checked together: each reading in one pass with the others', each check as it would be alone
    together = meet_measured_budgets({"thick": (env, plan), "thin": (env, thin)})
    (thick_kept, thick_check), (thin_kept, thin_check) = together["thick"], together["thin"]
    assert thick_check["checked_with"] == thin_check["checked_with"] == 2
    assert thick_check["thinned_by"] > 0 > thin_check["thinned_by"]
    assert replay_check(env, plan, thick_check) == thick_kept and replay_check(env, thin, thin_check) == thin_kept
    assert thick_check["latency_ratio_after_check"] <= 0.6 or thick_check["thinned_by"] == 1.0
    assert thin_check["latency_ratio_before_check"] <= thin_check["latency_ratio_after_check"] <= 0.6


def test_a_macs_budget_is_not_judged_by_latency(digits):
    env = make_env(dataset=digits, val_images=150, bn_batches=2, device="host-cpu", budget=0.6, budget_metric="macs")
    plan = PruningPlan.uniform(env.engine.group_names, 0.3)
    recipe = finetune_recipe(0)
    result = finish_plan(
        "uniform", env, plan, digits, finetune=recipe, out=None, base_model="small_cnn", progress=False
    )
    record = result.record
    assert record.thinned_by is None and record.budget_met_measured is None  # measured, but not checked
    assert record.latency_ratio_measured == record.latency_ratio_final > 0
    assert record.latency_ms_predicted is None  # a MACs count is not a latency
    assert record.val_top1_finetuned is None and record.test_top1_finetuned == record.test_top1_bn  # not fine-tuned


def test_a_resumed_log_is_kept_once_per_resume(tmp_path):
    (tmp_path / "progress.csv").write_text("")
    assert _keep_progress_log(tmp_path, 3) is None  # an empty log stays where it is
    for text in ("a\n1\n", "a\n2\n"):
        (tmp_path / "progress.csv").write_text(text)
        _keep_progress_log(tmp_path, 3)  # resumed twice at episode 3: neither log is lost
    kept = {p.name: p.read_text() for p in tmp_path.glob("progress.upto-*")}
    assert kept == {"progress.upto-episode-3.csv": "a\n1\n", "progress.upto-episode-3.1.csv": "a\n2\n"}


def test_a_run_configuration_saved_with_the_target_flat_reads_back():
    flat = {"model": "small_cnn", "data": "digits", "device": "pixel-a76", "budget": 0.6, "algo": "dqn"}
    config = TrainRunConfig.from_dict(flat)
    assert config.target == Target(device="pixel-a76", budget=0.6) and config.algo == "dqn"
    assert TrainRunConfig.from_dict(json.loads(json.dumps(asdict(config)))) == config
    with pytest.raises(PruneGymError, match="budget must be in"):
        TrainRunConfig.from_dict({**flat, "budget": 1.5})


def test_a_dynamic_run_with_probes_counts_the_skip_probes_before_its_episodes(tmp_path):
    config = TrainRunConfig(algo="ppo", episodes=2, dynamic_skip=True, sensitivity=True, **RUN_FAST)
    result = train_agent(config, tmp_path / "run", progress=False)
    env = make_env(dynamic_skip=True, sensitivity=True, **FAST)  # the probes, from the cache
    assert env.skip_sensitivity is not None and env.skip_sensitivity.evaluations == 1 + len(env.scorer.gates.weights)
    assert result.state.probe_evaluations == env.sensitivity.evaluations + env.skip_sensitivity.evaluations


def test_a_gated_model_on_a_measured_device_reports_its_measured_over_expected_latency(digits, tmp_path):
    env = make_env(dataset=digits, val_images=150, bn_batches=2, device="host-cpu", budget=0.8, dynamic_skip=True)
    thresholds = {block: 0.5 for block in env.scorer.gates.weights}
    plan = PruningPlan({name: 0.25 for name in env.engine.group_names}, criterion="l1", skip_thresholds=thresholds)
    result = finish_plan(
        "gated", env, plan, digits, finetune=finetune_recipe(0), out=tmp_path, base_model="small_cnn", progress=False
    )
    record = result.record
    assert record.thinned_by is None  # a gated plan is not checked: its latency depends on the inputs
    assert set(record.exec_rate_test) == set(thresholds) and record.latency_ms_expected is not None
    expected = record.latency_ms_expected / record.dense_latency_ms_predicted
    assert record.measured_over_expected == pytest.approx(record.latency_ratio_final / expected)
    assert json.loads((tmp_path / "report.json").read_text())["measured_over_expected"] == record.measured_over_expected
