from __future__ import annotations

import json

import pytest

from envs.factory import make_env
from hardware_models.correction import CorrectedCost, corrected_ratio, monotone_points
from pruning_core.engine import kept_count
from pruning_core.plan import PruningPlan


def test_the_correction_is_monotone_and_leaves_dense_alone():
    points = monotone_points([(0.4, 0.5), (0.5, 0.45), (0.8, 0.7)])
    assert points[-1] == (1.0, 1.0)
    measured = [y for _, y in points]
    assert measured == sorted(measured)
    grid = [i / 20 for i in range(1, 25)]
    values = [corrected_ratio(points, r) for r in grid]
    assert values == sorted(values) and corrected_ratio(points, 1.0) == 1.0


@pytest.mark.slow
def test_a_measured_device_is_calibrated_before_the_search_and_the_correction_shared(digits, tmp_path):
    path = tmp_path / "correction.json"
    env = make_env(budget=0.6, val_images=100, bn_batches=1, dataset=digits, calibrate_latency=path)
    cost = env.budget_model
    assert isinstance(cost, CorrectedCost) and path.is_file()
    readings = cost.meta["correction"]["readings"]
    assert len(readings) == 5 and all(0 < r["measured"] < 1.5 and len(r["rounds"]) == 15 for r in readings)
    assert cost.granule == cost.base.granule and cost.is_latency
    # the search prices every plan through the correction (whether a budget is reachable depends on this host's
    # timings: a tiny model's pruned plans may measure dearer than the table says, so no plan is asked to meet it)
    problem = env.budget_problem()
    plan = PruningPlan.uniform(env.engine.group_names, 0.5, round_to=cost.granule)
    kept = {g.name: kept_count(g.channels, plan.sparsity[g.name], plan.round_to) for g in env.engine.groups}
    ratio = problem.cost_of(kept) / env.dense_cost
    assert problem.target == pytest.approx(0.6 * env.dense_cost)
    table_ratio = cost.base.total(env.graph, kept) / cost.base.total(env.graph)
    assert ratio == pytest.approx(corrected_ratio(cost.points, table_ratio))
    # a second environment of the run reads the saved correction instead of timing again
    again = make_env(budget=0.6, val_images=100, bn_batches=1, dataset=digits, calibrate_latency=path)
    assert again.budget_model.points == cost.points
    assert again.budget_model.measured_at == json.loads(path.read_text())["measured_at"]


def test_calibration_plans_reach_down_to_the_thinnest_plan_when_the_budget_is_out_of_reach():
    from hardware_models.correction import calibration_plans
    from pruning_core.baselines import BudgetProblem
    from pruning_core.engine import PruningEngine
    from pruning_core.metrics import MacsCost
    from pruning_core.models import build_model

    engine = PruningEngine(build_model("small_cnn", in_channels=1), (1, 8, 8))
    problem = BudgetProblem(engine, MacsCost(), target=0.0, max_sparsity=0.5)  # the thinnest plan: half the MACs
    plans = calibration_plans(problem, budget=0.05)
    dense = problem.cost_of({g.name: g.channels for g in engine.groups})
    ratios = [problem.cost_of(kept) / dense for kept in plans]
    assert len(plans) == 5 and all(0.2 < r <= 0.6 for r in ratios)
