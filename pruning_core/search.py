"""Search baselines that score candidates like the agent does (same scorer, same number of evaluations).

- ``random-search``: random per-group sparsities scaled to land just under the budget (EagleEye, ECCV 2020, kept
  candidates within 0.5% of the target), each scored with adaptive BN on val; the best is kept. Random channel
  pruning is a strong baseline (Li et al., CVPR 2022).
- ``greedy-lut``: NetAdapt-style (ECCV 2018): repeatedly thin the group whose step costs the least val accuracy per
  unit of cost saved, until the budget is met.
- ``tpe``: what a user would try first with a hyper-parameter library: Optuna's TPE sampler (Bergstra et al.,
  NeurIPS 2011) over per-group relative sparsities, each candidate scaled to the budget as random-search's are.

Each search hands its scorer batches of plans whose proposal does not depend on one another's scores, and an
executor (:mod:`pruning_core.executor`) scores them, in this process or on Ray workers: greedy-lut a round's
candidates, random-search up to the executor's ``batch_size`` proposals, tpe as many of its first
``TPE_STARTUP_TRIALS`` (random) proposals, then one at a time (each later proposal depends on every score before it).
The scores come back in order and the search decides as it does scoring one plan after the other: for the same seed,
every executor gives the same plan, scores and evaluations.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pruning_core.baselines import BudgetProblem, bisect_smallest, plan_from_kept
from pruning_core.engine import group_kept, group_widths, widest_within
from pruning_core.executor import Executor, LocalExecutor
from pruning_core.finalists import Finalists
from pruning_core.plan import PruningPlan
from pruning_core.scoring import PlanScorer

TPE_STARTUP_TRIALS = 10
"""TPE's first proposals, drawn at random (Optuna's default): the only ones it makes without the scores before."""


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
    executor: Executor | None = None,
    finalists: Finalists | None = None,
) -> SearchResult:
    """Best of ``evaluations`` random plans that meet the budget, scored in batches of the executor's ``batch_size``
    (None: the local executor, one at a time). Every plan scored is offered to ``finalists``."""
    rng = random.Random(seed)
    return _best_of(
        problem,
        scorer,
        lambda: random_candidate(problem, rng),
        evaluations,
        criterion,
        on_step,
        executor=executor or LocalExecutor(),
        name="random search",
        finalists=finalists,
    )


def _best_of(
    problem: BudgetProblem,
    scorer: PlanScorer,
    propose: Callable[[], dict[str, int]],
    evaluations: int,
    criterion: str,
    on_step: Callable[[int, float], None] | None,
    *,
    executor: Executor,
    tell: Callable[[float | None], None] | None = None,
    independent: Callable[[], int] | None = None,
    name: str,
    finalists: Finalists | None = None,
) -> SearchResult:
    """Score ``evaluations`` proposed plans that meet the budget and keep the best. ``tell`` hears each proposal's
    score in the order proposed, None for one that misses the budget (not scored); at most 20 proposals per
    evaluation are asked for. Proposals are asked for in batches, scored together by ``executor``: at most its
    ``batch_size`` that meet the budget, and at most ``independent()`` proposals in all (None: no limit), the number
    ``propose`` can make before it must hear a score to make the next one as it would one at a time."""
    best: SearchResult | None = None
    history: list[float] = []
    attempts = 0
    while len(history) < evaluations and attempts < evaluations * 20:
        wanted = min(evaluations - len(history), max(1, executor.batch_size))
        asks = independent() if independent is not None else wanted * 20
        batch: list[PruningPlan | None] = []  # None: a proposal that misses the budget
        while sum(p is not None for p in batch) < wanted and len(batch) < asks and attempts < evaluations * 20:
            attempts += 1
            kept = propose()
            batch.append(plan_from_kept(problem, kept, criterion) if problem.meets(kept) else None)
        scores = iter(scorer.score_all([p for p in batch if p is not None], executor=executor))
        for plan in batch:
            if plan is None:
                if tell is not None:
                    tell(None)
                continue
            top1 = next(scores).top1
            if tell is not None:
                tell(top1)
            history.append(top1)
            if finalists is not None:
                finalists.offer(plan.to_json(), top1)
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
    executor: Executor | None = None,
    finalists: Finalists | None = None,
) -> SearchResult:
    """NetAdapt: in each round, every group proposes the fewest channels removed that cut about 1/``steps`` of the
    cost still to remove; the proposal that loses the least val accuracy per unit of cost saved is taken. A round's
    proposals are scored together by ``executor`` (None: the local executor, one after the other).

    ``evaluations`` counts the plans scored by this search: a plan already in the scorer's cache (a sensitivity probe
    that the first round would score again, see :mod:`pruning_core.sensitivity`) is not counted.

    ``finalists`` is offered every proposal that meets the budget: the last round's (the final plan and the other
    groups' last steps) and any earlier one that reached it."""
    executor = executor or LocalExecutor()
    groups = problem.engine.groups
    widths = {g.name: group_widths(g, problem.granule, problem.max_sparsity) for g in groups}
    kept = {g.name: g.channels for g in groups}
    step_size = (problem.cost_of(kept) - problem.target) / steps
    current = scorer.score_all([plan_from_kept(problem, kept, criterion)], executor=executor)[0].top1
    evaluations = 1
    history: list[float] = []
    while not problem.meets(kept):
        now = problem.cost_of(kept)
        goal = max(problem.target, now - step_size)
        trials: list[tuple[dict[str, int], float]] = []  # each group's proposal and the cost it saves
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
            if saved > 0:
                trials.append((trial, saved))
        plans = [plan_from_kept(problem, t, criterion) for t, _ in trials]
        scores = scorer.score_all(plans, executor=executor)
        best: tuple[float, dict[str, int], float] | None = None
        for (trial, saved), plan, score in zip(trials, plans, scores, strict=True):
            top1 = score.top1
            evaluations += 0 if score.cached else 1  # a probe made before (sensitivity) is not paid twice
            if finalists is not None and problem.meets(trial):
                finalists.offer(plan.to_json(), top1)
            loss_per_cost = (current - top1) / saved
            if best is None or loss_per_cost < best[0]:
                best = (loss_per_cost, trial, top1)
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
    executor: Executor | None = None,
    finalists: Finalists | None = None,
) -> SearchResult:
    """Best of ``evaluations`` plans proposed by Optuna's TPE sampler: per-group relative sparsities in [0, 1], scaled
    to the budget as :func:`random_candidate`'s are. A shape that cannot reach the budget is told so (the worst
    score) without an evaluation, and asked again. TPE's first ``TPE_STARTUP_TRIALS`` proposals are random and
    scored in batches by ``executor`` (None: the local executor, one at a time); each later one is asked for after
    every score before it is told, as one at a time, so every executor gives the same proposals. Every plan scored is
    offered to ``finalists``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    groups = problem.engine.groups
    asked: list[Any] = []

    def propose() -> dict[str, int]:
        trial = study.ask()
        asked.append(trial)
        return scaled_candidate(problem, {g.name: trial.suggest_float(g.name, 0.0, 1.0) for g in groups})

    def tell(top1: float | None) -> None:
        study.tell(asked.pop(0), 0.0 if top1 is None else top1)

    def independent() -> int:
        # a startup proposal is random only while fewer than TPE_STARTUP_TRIALS trials are complete when it is
        # asked for, as it is one at a time: asked together, they must all be numbered below TPE_STARTUP_TRIALS
        return max(1, TPE_STARTUP_TRIALS - len(study.trials))

    return _best_of(
        problem,
        scorer,
        propose,
        evaluations,
        criterion,
        on_step,
        executor=executor or LocalExecutor(),
        tell=tell,
        independent=independent,
        name="tpe search",
        finalists=finalists,
    )
