"""Search baselines that score candidates like the agent does (same scorer, same number of evaluations).

- ``random-search``: random per-group sparsities scaled to land just under the budget (EagleEye, ECCV 2020, kept
  candidates within 0.5% of the target), each scored with adaptive BN on val; the best is kept. Random channel
  pruning is a strong baseline (Li et al., CVPR 2022).
- ``greedy-lut``: NetAdapt-style (ECCV 2018): repeatedly thin the group whose step costs the least val accuracy per
  unit of cost saved, until the budget is met.
- ``tpe``: what a user would try first with a hyper-parameter library: Optuna's TPE sampler (Bergstra et al.,
  NeurIPS 2011) over per-group relative sparsities, each candidate scaled to the budget as random-search's are.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pruning_core.baselines import BudgetProblem, bisect_smallest, plan_from_kept
from pruning_core.engine import group_kept, group_widths, widest_within
from pruning_core.plan import PruningPlan
from pruning_core.scoring import PlanScorer


@dataclass
class SearchResult:
    """The best plan a search found and what it cost."""

    plan: PruningPlan
    val_top1: float
    evaluations: int
    history: list[float] = field(default_factory=list)


def random_candidate(problem: BudgetProblem, rng: random.Random) -> dict[str, int]:
    """Random relative sparsities, scaled by bisection so the cost lands just under the target.

    The result may miss the budget when the random shape cannot reach it within ``max_sparsity``; check it.
    """
    return scaled_candidate(problem, {g.name: rng.random() for g in problem.engine.groups})


def scaled_candidate(problem: BudgetProblem, shape: dict[str, float]) -> dict[str, int]:
    """Relative sparsities ``shape`` (per group, >= 0) scaled by one factor, found by bisection, so the cost lands
    just under the target: group ``g`` at sparsity ``min(max_sparsity, scale * shape[g])``.

    The result may miss the budget when the shape cannot reach it within ``max_sparsity``; check it.
    """
    groups = problem.engine.groups

    def kept(scale: float) -> dict[str, int]:
        return {
            g.name: group_kept(g, min(problem.max_sparsity, scale * shape[g.name]), problem.granule) for g in groups
        }

    top = problem.max_sparsity / max(min(shape.values()), 1e-3)
    if not problem.meets(kept(top)):
        return kept(top)  # this shape cannot reach the budget; the caller skips it
    return kept(bisect_smallest(lambda s: problem.meets(kept(s)), 0.0, top))


def random_search(
    problem: BudgetProblem,
    scorer: PlanScorer,
    *,
    evaluations: int,
    seed: int = 0,
    criterion: str = "l1",
    on_step: Callable[[int, float], None] | None = None,
) -> SearchResult:
    """Best of ``evaluations`` random plans that meet the budget."""
    rng = random.Random(seed)
    return _best_of(
        problem, scorer, lambda: random_candidate(problem, rng), evaluations, criterion, on_step, name="random search"
    )


def _best_of(
    problem: BudgetProblem,
    scorer: PlanScorer,
    propose: Callable[[], dict[str, int]],
    evaluations: int,
    criterion: str,
    on_step: Callable[[int, float], None] | None,
    *,
    tell: Callable[[float | None], None] | None = None,
    name: str,
) -> SearchResult:
    """Score ``evaluations`` proposed plans that meet the budget and keep the best. ``tell`` hears each proposal's
    score, None for one that misses the budget (not scored); at most 20 proposals per evaluation are asked for."""
    best: SearchResult | None = None
    history: list[float] = []
    attempts = 0
    while len(history) < evaluations and attempts < evaluations * 20:
        attempts += 1
        kept = propose()
        if not problem.meets(kept):
            if tell is not None:
                tell(None)
            continue
        plan = plan_from_kept(problem, kept, criterion)
        top1 = scorer.score(plan).top1
        if tell is not None:
            tell(top1)
        history.append(top1)
        if best is None or top1 > best.val_top1:
            best = SearchResult(plan, top1, len(history))
        if on_step is not None:
            on_step(len(history), best.val_top1)
    if best is None:
        raise RuntimeError(f"{name} found no plan within the budget")
    return SearchResult(best.plan, best.val_top1, len(history), history)


def greedy_search(
    problem: BudgetProblem,
    scorer: PlanScorer,
    *,
    steps: int = 10,
    criterion: str = "l1",
    on_step: Callable[[int, float], None] | None = None,
) -> SearchResult:
    """NetAdapt: in each round, every group proposes the fewest channels removed that cut about 1/``steps`` of the
    cost still to remove; the proposal that loses the least val accuracy per unit of cost saved is taken.

    ``evaluations`` counts the plans scored by this search: a plan already in the scorer's cache (a sensitivity probe
    that the first round would score again, see :mod:`pruning_core.sensitivity`) is not counted."""
    groups = problem.engine.groups
    widths = {g.name: group_widths(g, problem.granule, problem.max_sparsity) for g in groups}
    kept = {g.name: g.channels for g in groups}
    step_size = (problem.cost_of(kept) - problem.target) / steps
    current = scorer.score(plan_from_kept(problem, kept, criterion)).top1
    evaluations = 1
    history: list[float] = []
    while not problem.meets(kept):
        now = problem.cost_of(kept)
        goal = max(problem.target, now - step_size)
        best: tuple[float, dict[str, int], float] | None = None
        for g in groups:
            if kept[g.name] <= widths[g.name][0]:  # at its floor
                continue
            trial = dict(kept)

            def reaches(width: int, name: str = g.name, trial: dict[str, int] = trial, goal: float = goal) -> bool:
                trial[name] = width
                return problem.cost_of(trial) <= goal

            below = [w for w in widths[g.name] if w < kept[g.name]]
            # the largest width below the current one that reaches the goal (the floor when none does)
            trial[g.name] = widest_within(below, below[-1], reaches)
            saved = now - problem.cost_of(trial)
            if saved <= 0:
                continue
            score = scorer.score(plan_from_kept(problem, trial, criterion))
            top1 = score.top1
            evaluations += 0 if score.cached else 1  # a probe made before (sensitivity) is not paid twice
            loss_per_cost = (current - top1) / saved
            if best is None or loss_per_cost < best[0]:
                best = (loss_per_cost, dict(trial), top1)
        if best is None:  # every group is at its floor
            break
        _, kept, current = best
        history.append(current)
        if on_step is not None:
            on_step(evaluations, current)
    return SearchResult(plan_from_kept(problem, kept, criterion), current, evaluations, history)


def tpe_search(
    problem: BudgetProblem,
    scorer: PlanScorer,
    *,
    evaluations: int,
    seed: int = 0,
    criterion: str = "l1",
    on_step: Callable[[int, float], None] | None = None,
) -> SearchResult:
    """Best of ``evaluations`` plans proposed by Optuna's TPE sampler: per-group relative sparsities in [0, 1], scaled
    to the budget as :func:`random_candidate`'s are. A shape that cannot reach the budget is told so (the worst
    score) without an evaluation, and asked again. TPE's first 10 proposals are random (Optuna's default)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    groups = problem.engine.groups
    asked: list[Any] = []

    def propose() -> dict[str, int]:
        trial = study.ask()
        asked.append(trial)
        return scaled_candidate(problem, {g.name: trial.suggest_float(g.name, 0.0, 1.0) for g in groups})

    def tell(top1: float | None) -> None:
        study.tell(asked.pop(), 0.0 if top1 is None else top1)

    return _best_of(problem, scorer, propose, evaluations, criterion, on_step, tell=tell, name="tpe search")
