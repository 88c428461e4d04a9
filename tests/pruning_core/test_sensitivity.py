from __future__ import annotations

import pytest

from envs.factory import make_env
from pruning_core.baselines import uniform_plan, uniform_sparsity
from pruning_core.engine import kept_count
from pruning_core.errors import PruneGymError
from pruning_core.search import greedy_search
from pruning_core.sensitivity import (
    Sensitivity,
    cached_sensitivity,
    predicted_drop,
    probe_sensitivity,
    sensitivity_plan,
)


@pytest.fixture(scope="module")
def problem_env(digits):
    env = make_env(device="pixel-a76", budget=0.5, val_images=150, bn_batches=2, finetune_steps=0, dataset=digits)
    return env, env.budget_problem()


def _kept(env, plan):
    return {g.name: kept_count(g.channels, plan.sparsity[g.name], plan.round_to) for g in env.engine.groups}


def test_probes_thin_one_group_at_a_time_and_measure_what_it_saves(problem_env):
    env, problem = problem_env
    probes = probe_sensitivity(problem, env.scorer)
    groups = env.engine.groups
    assert set(probes.probes) == {g.name for g in groups}
    assert probes.uniform == pytest.approx(uniform_sparsity(problem))
    assert probes.dense_top1 == env.scorer.score(env.plan.__class__(round_to=env.granule)).top1
    for g in groups:
        floor, level = probes.probes[g.name]["floor"], probes.probes[g.name]["uniform"]
        assert floor.kept <= level.kept < g.channels
        assert floor.saved >= level.saved > 0  # thinner saves more
    assert probes.evaluations <= 1 + 2 * len(groups)


def test_features_are_in_the_unit_interval_and_rank_the_groups(problem_env):
    env, problem = problem_env
    features = probe_sensitivity(problem, env.scorer).features()
    ranks = sorted(f[2] for f in features.values())
    assert ranks[0] == 0.0 and ranks[-1] == 1.0
    assert all(0.0 <= x <= 1.0 for f in features.values() for x in f)


def test_the_sensitivity_plan_meets_the_budget_and_spares_the_costliest_group(problem_env):
    env, problem = problem_env
    probes = probe_sensitivity(problem, env.scorer)
    plan = sensitivity_plan(problem, probes)
    kept = _kept(env, plan)
    assert problem.meets(kept)
    assert problem.cost_of(kept) > 0.9 * problem.target  # lands close under the target
    uniform = _kept(env, uniform_plan(problem))
    assert predicted_drop(probes, problem, kept) <= predicted_drop(probes, problem, uniform)


def test_probes_are_cached_and_greedy_does_not_pay_for_them_again(problem_env, tmp_path, digits):
    env, problem = problem_env
    path = tmp_path / "probes.json"
    first = cached_sensitivity(path, problem, env.scorer, {"model": "small_cnn"})
    assert path.is_file() and path.with_suffix(".jsonl").is_file()
    fresh = make_env(device="pixel-a76", budget=0.5, val_images=150, bn_batches=2, finetune_steps=0, dataset=digits)
    again = cached_sensitivity(path, fresh.budget_problem(), fresh.scorer, {"model": "small_cnn"})
    assert again == first and fresh.scorer.evaluations == 0  # read back, nothing scored
    # in one step, a group that cannot reach the target alone proposes its floor: the floor probe's plan
    with_probes = greedy_search(fresh.budget_problem(), fresh.scorer, steps=1)
    plain = make_env(device="pixel-a76", budget=0.5, val_images=150, bn_batches=2, finetune_steps=0, dataset=digits)
    without = greedy_search(plain.budget_problem(), plain.scorer, steps=1)
    assert with_probes.plan == without.plan  # the same search
    assert with_probes.evaluations < without.evaluations  # its first round was paid by the probes
    other = cached_sensitivity(path, fresh.budget_problem(), fresh.scorer, {"model": "another"})
    assert other.inputs["model"] == "another"  # other inputs: probed afresh


def test_a_plan_needs_probes_of_every_group(problem_env):
    env, problem = problem_env
    probes = probe_sensitivity(problem, env.scorer)
    partial = Sensitivity(probes.dense_top1, dict(list(probes.probes.items())[:1]), probes.uniform, 1)
    with pytest.raises(PruneGymError, match="expected probes for every group"):
        sensitivity_plan(problem, partial)
    assert Sensitivity.from_json(probes.to_json()) == probes
