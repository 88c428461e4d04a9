"""Heuristic baselines on a MACs or parameter budget, checked against the real pruned model."""

from __future__ import annotations

import pytest

from pruning_core.baselines import (
    BASELINES,
    BudgetProblem,
    baseline_plan,
    bisect_smallest,
    global_plan,
    plan_from_kept,
    uniform_plan,
    uniform_sparsity,
)
from pruning_core.checkpoint import load_checkpoint
from pruning_core.engine import PruningEngine, allowed_widths, kept_count
from pruning_core.errors import BudgetInfeasibleError, PruneGymError
from pruning_core.metrics import MacsCost, ParamsCost


class _MacsInSteps(MacsCost):
    granule = 8


@pytest.fixture(scope="module")
def engine(digits) -> PruningEngine:
    model = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    return PruningEngine(model, digits.input_shape, dataset=digits, calibration_batches=2)


def problem_at(engine: PruningEngine, fraction: float, cost=None) -> BudgetProblem:
    cost = cost or MacsCost()
    return BudgetProblem(engine, cost, fraction * cost.total(engine.graph))


def widths(engine: PruningEngine, plan) -> dict[str, int]:
    return {name: len(kept) for name, kept in engine.kept_channels(plan).items()}


def test_bisection_finds_the_least_value_that_meets():
    found = bisect_smallest(lambda x: x >= 0.3, 0.0, 1.0)
    assert found >= 0.3 and found == pytest.approx(0.3, abs=1e-8)
    assert bisect_smallest(lambda x: True, 0.2, 1.0) == 0.2  # the low end meets already
    assert bisect_smallest(lambda x: x > 0.5, 0.0, 1.0, steps=3) == 0.625  # three halvings: 0.5, 0.75, 0.625


@pytest.mark.parametrize("cost", [MacsCost(), ParamsCost()], ids=["macs", "params"])
def test_uniform_is_the_least_equal_sparsity_that_meets_the_budget(engine, cost):
    problem = problem_at(engine, 0.5, cost)
    plan = uniform_plan(problem)
    assert len(set(plan.sparsity.values())) == 1 and plan.criterion == "l1"
    sparsity = uniform_sparsity(problem)
    assert plan.sparsity == {
        g.name: pytest.approx(1 - kept_count(g.channels, sparsity) / g.channels) for g in engine.groups
    }
    assert problem.meets(widths(engine, plan))
    thinner_by_a_hair = {g.name: kept_count(g.channels, sparsity - 1e-6) for g in engine.groups}
    assert not problem.meets(thinner_by_a_hair)  # the least: a hair less sparse misses the budget
    pruned = engine.apply(plan)
    assert problem.cost_of(widths(engine, plan)) == cost.total(engine.graph, widths(engine, plan))
    if isinstance(cost, MacsCost):
        assert pruned.cost.macs == problem.cost_of(widths(engine, plan)) <= problem.target


def test_a_budget_at_the_dense_cost_prunes_nothing(engine):
    problem = problem_at(engine, 1.0)
    assert uniform_sparsity(problem) == 0.0
    dense = {g.name: g.channels for g in engine.groups}
    assert widths(engine, uniform_plan(problem)) == dense
    assert widths(engine, global_plan(problem)) == dense


@pytest.mark.parametrize("criterion", ["l1", "bn"])
def test_one_global_threshold_ranks_channels_across_groups(engine, criterion):
    problem = problem_at(engine, 0.5)
    plan = global_plan(problem, criterion=criterion)
    kept_channels = engine.kept_channels(plan)
    assert problem.meets({name: len(kept) for name, kept in kept_channels.items()})
    assert len(set(plan.sparsity.values())) > 1  # not uniform: groups lose what their scores say
    floor = {g.name: kept_count(g.channels, problem.max_sparsity) for g in engine.groups}
    kept_scores, removed_scores = [], []
    for name, scores in engine.scores(criterion).items():
        normalised = scores / scores.mean()
        kept = set(kept_channels[name])
        removed_scores += [float(normalised[i]) for i in range(len(scores)) if i not in kept]
        if len(kept) > floor[name]:  # a group at its floor keeps channels below the threshold
            kept_scores += [float(normalised[i]) for i in kept]
    assert removed_scores and max(removed_scores) < min(kept_scores)


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_every_baseline_meets_a_macs_budget_on_the_pruned_model(engine, method):
    problem = problem_at(engine, 0.4)
    plan = baseline_plan(method, problem)
    pruned = engine.apply(plan)
    assert problem.target * 0.85 < pruned.cost.macs <= problem.target
    assert pruned.cost.macs == problem.cost_of({name: len(kept) for name, kept in pruned.kept_channels.items()})


@pytest.mark.parametrize("cost", [MacsCost(), _MacsInSteps()], ids=["granule1", "granule8"])
def test_a_plan_from_widths_keeps_exactly_those_widths(engine, cost):
    problem = problem_at(engine, 0.5, cost)
    options = {g.name: allowed_widths(g.channels, problem.granule, problem.max_sparsity) for g in engine.groups}
    for i in range(max(len(o) for o in options.values())):
        kept = {name: o[min(i, len(o) - 1)] for name, o in options.items()}
        plan = plan_from_kept(problem, kept, "l2")
        assert widths(engine, plan) == kept and plan.round_to == problem.granule and plan.criterion == "l2"


def test_unreachable_budgets_and_unknown_methods_are_refused(engine):
    problem = problem_at(engine, 0.001)
    with pytest.raises(
        BudgetInfeasibleError,
        match=r"^budget out of reach for uniform sparsity: expected a budget of at least 0\.\d+ of dense "
        r"\(every group at sparsity 0\.9\); got 0\.00\d$",
    ):
        baseline_plan("uniform-l1", problem)
    with pytest.raises(
        BudgetInfeasibleError,
        match=r"^budget out of reach for global pruning: expected a budget of at least 0\.\d+ of dense",
    ):
        baseline_plan("global-magnitude", problem)
    names = "uniform-l1, global-magnitude, slimming, taylor, activation"
    with pytest.raises(PruneGymError, match=f"^baseline must be one of {names}; got 'magic'$"):
        baseline_plan("magic", problem)
