"""A lookup table's relative prediction corrected by timing a few plans beside the dense model, now, on this host.

A table is built once, on one day, and the host's relative speed of pruned and dense models moves: the resnet56
table the headline benchmark searched with over-priced pruned plans (plans at table-0.7 measured 0.56-0.66 of
dense), so every search ran at the wrong budget and every plan was widened 17-25% after it. Before a search on a
measured device, :func:`calibrate_cost` times a handful of plans around the budget beside the dense model (one
interleaved pass, in the timing worker) and :class:`CorrectedCost` maps the table's predicted ratio through those
readings: the search then aims at the budget the host measures, and the measured check has little left to move.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardware_models.measure import OrtLatency, TorchLatency, ratios_beside_dense
from pruning_core.baselines import BudgetProblem, plan_from_kept, uniform_plan
from pruning_core.data import atomic_write_bytes
from pruning_core.engine import PruningEngine, group_kept
from pruning_core.errors import PruneGymError
from pruning_core.graph import ModelGraph
from pruning_core.metrics import LayerwiseCost
from pruning_core.search import random_candidate

CALIBRATION_ROUNDS = 15
"""Interleaved rounds of the calibration pass (as many as a measured budget check reads)."""


def monotone_points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``(predicted, measured)`` ratios sorted by prediction, with ``(1, 1)`` (dense is dense) and each measured
    ratio raised to the one before where noise inverted them (pooled: the mean of the inverted run).

    >>> monotone_points([(0.7, 0.62), (0.5, 0.44), (0.6, 0.63)])
    [(0.5, 0.44), (0.6, 0.625), (0.7, 0.625), (1.0, 1.0)]
    """
    ordered = sorted([p for p in points if p[0] < 1.0] + [(1.0, 1.0)])
    blocks: list[list[float]] = []  # pool adjacent violators (isotonic regression)
    for _, y in ordered:
        blocks.append([y, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    return [(x, round(y, 12)) for (x, _), y in zip(ordered, fitted, strict=True)]


def corrected_ratio(points: list[tuple[float, float]], ratio: float) -> float:
    """The measured ratio the calibration points give for a predicted ``ratio``: linear between points, in
    proportion below the first, unchanged above dense.

    >>> pts = [(0.5, 0.4), (0.7, 0.6), (1.0, 1.0)]
    >>> [round(corrected_ratio(pts, r), 4) for r in (0.25, 0.5, 0.6, 0.85, 1.2)]
    [0.2, 0.4, 0.5, 0.8, 1.2]
    """
    xs = [x for x, _ in points]
    if ratio <= xs[0]:
        return ratio * points[0][1] / xs[0]
    if ratio >= xs[-1]:
        return ratio * points[-1][1] / xs[-1]
    i = bisect.bisect_right(xs, ratio)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (ratio - x0) / (x1 - x0)


@dataclass
class CorrectedCost(LayerwiseCost):
    """``base`` (a lookup table) with its prediction relative to dense mapped through measured points.

    Layer costs are the table's; only :meth:`combine` changes, so every search, baseline and budget check that
    prices through the cost sees the corrected figure.
    """

    base: LayerwiseCost
    dense: float
    """The table's prediction for the dense model."""
    points: list[tuple[float, float]]
    """``(predicted, measured)`` ratios to dense, monotone, ending at ``(1, 1)``."""
    measured_at: str = ""
    readings: list[dict[str, Any]] = field(default_factory=list)
    """Every plan timed: its predicted ratio and the median and rounds of its measured ratio."""

    def __post_init__(self) -> None:
        self.granule = self.base.granule
        self.is_latency = self.base.is_latency

    def layer_cost(self, graph: ModelGraph, name: str, c_in: int, c_out: int) -> float:
        return self.base.layer_cost(graph, name, c_in, c_out)

    def combine(self, raw_sum: float) -> float:
        return self.dense * corrected_ratio(self.points, self.base.combine(raw_sum) / self.dense)

    @property
    def meta(self) -> dict[str, Any]:
        """The table's metadata and the correction (recorded with a run)."""
        return {**getattr(self.base, "meta", {}), "correction": self.correction()}

    def correction(self) -> dict[str, Any]:
        return {"points": [list(p) for p in self.points], "measured_at": self.measured_at, "readings": self.readings}

    def __getattr__(self, name: str) -> Any:  # a table's other attributes (block, ...) read through
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


def calibration_plans(problem: BudgetProblem, budget: float, *, seed: int = 0) -> list[dict[str, int]]:
    """Kept widths of the plans a calibration times: uniform plans at 0.8, 1 and 1.2 times the budget on the table
    (below dense), and two random shapes at the budget (searches' plans are not uniform). A target below what the
    table prices the thinnest plan at is raised to it (random shapes: to 1.1 times it), so that a table that puts the
    budget out of reach still gets its correction, which may bring it back within reach."""
    engine, dense = problem.engine, problem.cost_of({g.name: g.channels for g in problem.engine.groups})
    floor = problem.cost_of({g.name: group_kept(g, problem.max_sparsity, problem.granule) for g in engine.groups})
    plans = []
    for factor in (0.8, 1.0, 1.2):
        target = max(floor, min(0.95, budget * factor) * dense)
        sub = BudgetProblem(engine, problem.cost, target, problem.max_sparsity)
        plan = uniform_plan(sub)
        plans.append({g.name: group_kept(g, plan.sparsity[g.name], plan.round_to) for g in engine.groups})
    rng = random.Random(seed)
    at_budget = BudgetProblem(engine, problem.cost, max(1.1 * floor, budget * dense), problem.max_sparsity)
    while len(plans) < 5:
        kept = random_candidate(at_budget, rng)
        if at_budget.meets(kept):
            plans.append(kept)
    return plans


def calibrate_cost(
    cost: LayerwiseCost,
    engine: PruningEngine,
    measurer: TorchLatency | OrtLatency,
    *,
    budget: float,
    max_sparsity: float = 0.9,
    rounds: int = CALIBRATION_ROUNDS,
) -> CorrectedCost:
    """Time :func:`calibration_plans` beside the dense model in one interleaved pass and return ``cost`` corrected
    by the readings (each plan's median ratio over ``rounds``)."""
    dense = cost.total(engine.graph)
    problem = BudgetProblem(engine, cost, budget * dense, max_sparsity)
    plans = calibration_plans(problem, budget)
    models = [engine.apply(plan_from_kept(problem, kept, "l1")).model for kept in plans]
    taken = ratios_beside_dense(measurer, engine.model, models, engine.input_shape, rounds=rounds)
    pairs = [
        (problem.cost_of(kept) / dense, statistics.median(ratios))
        for kept, ratios in zip(plans, taken.ratios, strict=True)
    ]
    readings: list[dict[str, Any]] = [
        {"predicted": p, "measured": m, "rounds": [round(r, 4) for r in ratios]}
        for (p, m), ratios in zip(pairs, taken.ratios, strict=True)
    ]
    points = monotone_points(pairs)
    return CorrectedCost(cost, dense, points, time.strftime("%Y-%m-%dT%H:%M:%S"), readings)


def load_or_calibrate(
    path: str | os.PathLike[str] | Mapping[str, Any] | None,
    cost: LayerwiseCost,
    engine: PruningEngine,
    measurer: TorchLatency | OrtLatency,
    *,
    budget: float,
    max_sparsity: float = 0.9,
) -> CorrectedCost:
    """The correction saved at ``path`` for this table (its build time and dense prediction), else one made now
    (:func:`calibrate_cost`) and saved there, so that every search of one run (a benchmark's methods, an agent's
    environments) aims at the same corrected budget. ``path`` None: made now, not saved. ``path`` a mapping: a saved
    correction's contents, made elsewhere, used as they are (nothing is timed: an environment on a Ray worker).

    Raises:
        PruneGymError: The correction given as a mapping was made for another table or budget.
    """
    dense = cost.total(engine.graph)
    table = {"built": getattr(cost, "meta", {}).get("built"), "dense": dense, "budget": budget}
    if isinstance(path, Mapping):
        if path.get("table") != table:
            raise PruneGymError(
                f"expected a latency correction made for table {table}; got one for {path.get('table')}"
            )
        points = [(float(x), float(y)) for x, y in path["points"]]
        return CorrectedCost(cost, dense, points, path["measured_at"], path["readings"])
    if path is not None and Path(path).is_file():
        saved = json.loads(Path(path).read_text())
        if saved.get("table") == table:
            points = [(float(x), float(y)) for x, y in saved["points"]]
            return CorrectedCost(cost, dense, points, saved["measured_at"], saved["readings"])
    corrected = calibrate_cost(cost, engine, measurer, budget=budget, max_sparsity=max_sparsity)
    if path is not None:
        text = json.dumps({"table": table, **corrected.correction()}, indent=1)
        atomic_write_bytes(Path(path), lambda tmp: tmp.write_text(text))
    return corrected
