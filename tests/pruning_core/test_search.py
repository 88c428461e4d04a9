from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from envs.factory import make_env
from pruning_core.baselines import BASELINES, BudgetProblem, baseline_plan, plan_from_kept
from pruning_core.engine import kept_count, width_step
from pruning_core.errors import BudgetInfeasibleError, PruneGymError
from pruning_core.metrics import MacsCost
from pruning_core.search import greedy_search, random_candidate, random_search, tpe_search


@pytest.fixture(scope="module")
def problem_env(digits):
    env = make_env(device="pixel-a76", budget=0.5, val_images=150, bn_batches=2, dataset=digits)
    return env, env.budget_problem()


def _kept(env, plan):
    return {g.name: kept_count(g.channels, plan.sparsity[g.name]) for g in env.engine.groups}


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_baselines_meet_the_budget_closely(method, problem_env):
    env, problem = problem_env
    plan = baseline_plan(method, problem)
    cost = problem.cost_of(_kept(env, plan))
    assert problem.target * 0.9 < cost <= problem.target * (1 + 1e-9)


def test_random_candidates_land_just_under_the_budget(problem_env):
    _, problem = problem_env
    rng = random.Random(0)
    ratios = [
        problem.cost_of(c) / problem.target
        for c in (random_candidate(problem, rng) for _ in range(20))
        if problem.meets(c)
    ]
    assert len(ratios) >= 15 and min(ratios) > 0.95 and max(ratios) <= 1 + 1e-9


def test_random_search_keeps_the_best_of_its_evaluations(problem_env):
    env, problem = problem_env
    result = random_search(problem, env.scorer, evaluations=5, seed=1)
    assert result.evaluations == 5 and result.val_top1 == max(result.history)
    assert problem.meets(_kept(env, result.plan))


def test_tpe_search_scores_plans_on_the_budget_and_is_reproducible(problem_env):
    env, problem = problem_env
    result = tpe_search(problem, env.scorer, evaluations=12, seed=3)
    assert result.evaluations == 12 == len(result.history) and result.val_top1 == max(result.history)
    assert problem.meets(_kept(env, result.plan))
    again = tpe_search(problem, env.scorer, evaluations=12, seed=3)
    assert again.plan == result.plan and again.history == result.history


def test_an_interrupted_search_scores_again_only_what_it_had_not(problem_env, tmp_path):
    from pruning_core.plan import PruningPlan
    from pruning_core.scoring import PlanScorer

    env, problem = problem_env
    log, inputs = tmp_path / "searches" / "random.jsonl", {"model": "small_cnn"}

    def rows():
        return [json.loads(line) for line in log.read_text().splitlines()[1:]]  # every line whole JSON

    first = PlanScorer(env.engine, env.scorer.dataset, env.scorer.config)
    with first.logging_to(log, inputs):
        before = random_search(problem, first, evaluations=3, seed=2)
    assert len({r["plan"] for r in rows()}) == first.evaluations == 3
    with log.open("a") as f:
        f.write('{"plan": "cut short')  # a crash in mid-line
    again = PlanScorer(env.engine, env.scorer.dataset, env.scorer.config)
    with again.logging_to(log, inputs) as kept:
        result = random_search(problem, again, evaluations=4, seed=2)
    assert again.evaluations == 1 and result.evaluations == 4  # the first three came from the log
    assert kept.carried_seconds > 0 and kept.carried_cpu_seconds > 0  # what they cost, carried over
    assert result.history[:3] == before.history and len({r["plan"] for r in rows()}) == 4
    again.score(result.plan)
    again.score(PruningPlan.uniform(env.engine.group_names, 0.3))  # after the block: nothing more is logged
    assert len(rows()) == 4
    with pytest.raises(PruneGymError, match="JSON-serialisable"), again.logging_to(log, {"model": object()}):
        pass
    fresh = PlanScorer(env.engine, env.scorer.dataset, env.scorer.config)
    fresh.score(result.plan)
    with fresh.logging_to(log, {"model": "other"}) as other:
        assert not other.saved  # scores of other inputs are not taken back
        fresh.score(result.plan)  # scored before the block: logged, at no cost to this search
    assert [(r["plan"], r["seconds"]) for r in rows()] == [(result.plan.to_json(), 0.0)]


def test_a_greedy_search_read_back_from_its_log_counts_the_evaluations_it_paid_for_then(problem_env, tmp_path):
    from pruning_core.scoring import PlanScorer

    env, problem = problem_env
    log, inputs = tmp_path / "greedy.jsonl", {"model": "small_cnn"}
    first = PlanScorer(env.engine, env.scorer.dataset, env.scorer.config)
    with first.logging_to(log, inputs):
        whole = greedy_search(problem, first, steps=3)
    again = PlanScorer(env.engine, env.scorer.dataset, env.scorer.config)
    with again.logging_to(log, inputs):
        replayed = greedy_search(problem, again, steps=3)
    assert again.evaluations == 0  # nothing scored again
    assert (replayed.plan, replayed.history) == (whole.plan, whole.history)
    assert replayed.evaluations == whole.evaluations == first.evaluations


def test_greedy_meets_the_budget(problem_env):
    env, problem = problem_env
    result = greedy_search(problem, env.scorer, steps=3)
    assert problem.meets(_kept(env, result.plan)) and result.evaluations > 3


def test_infeasible_and_unknown(problem_env):
    env, _ = problem_env
    with pytest.raises(BudgetInfeasibleError):
        baseline_plan("uniform-l1", env.budget_problem(env.target * 0.01))
    with pytest.raises(PruneGymError, match="baseline must be one of"):
        baseline_plan("magic", env.budget_problem())


@pytest.mark.parametrize("steps", [0, 40])
def test_bf16_scoring_agrees_with_float32(problem_env, steps):
    from pruning_core.plan import PruningPlan
    from pruning_core.scoring import PlanScorer, ScoreConfig

    env, _ = problem_env
    plan = PruningPlan.uniform(env.engine.group_names, 0.4)
    config = ScoreConfig(val_images=287, bn_batches=4, finetune_steps=steps, finetune_lr=0.05)
    scores = [
        PlanScorer(env.engine, env.scorer.dataset, replace(config, bf16=bf16)).score(plan).top1
        for bf16 in (False, True)
    ]
    # autocast caches its bfloat16 copies of the weights: a fine-tune inside one autocast region would train
    # weights that its forward passes never see
    assert abs(scores[0] - scores[1]) < 0.03


def test_channels_last_scoring_matches_and_reports_its_timings(problem_env):
    from pruning_core.plan import PruningPlan
    from pruning_core.scoring import PlanScorer, ScoreConfig

    env, _ = problem_env
    plan = PruningPlan.uniform(env.engine.group_names, 0.4)
    scores = [
        PlanScorer(env.engine, env.scorer.dataset, ScoreConfig(val_images=287, bn_batches=4, channels_last=cl)).score(
            plan
        )
        for cl in (False, True)
    ]
    assert abs(scores[0].top1 - scores[1].top1) <= 1 / 287
    assert set(scores[1].timings) == {"apply", "adapt", "evaluate"}
    assert sum(scores[1].timings.values()) <= scores[1].seconds


class _MacsInSteps(MacsCost):
    granule = 8


@pytest.mark.parametrize("method", ["uniform-l1", "slimming", "random"])
def test_plans_keep_widths_at_the_cost_granule(method, problem_env):
    env, _ = problem_env
    cost = _MacsInSteps()
    problem = BudgetProblem(env.engine, cost, 0.5 * cost.total(env.engine.graph))
    if method == "random":
        kept = random_candidate(problem, random.Random(0))
        plan = plan_from_kept(problem, kept, "l1")
    else:
        plan = baseline_plan(method, problem)
    widths = {g.name: kept_count(g.channels, plan.sparsity[g.name], plan.round_to) for g in env.engine.groups}
    assert plan.round_to == 8 and problem.meets(widths)
    assert all(
        widths[g.name] % width_step(g.channels, 8) == 0 or widths[g.name] == g.channels for g in env.engine.groups
    )
    assert env.engine.apply(plan).cost.macs <= problem.target * (1 + 1e-9)
