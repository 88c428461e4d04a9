"""Heuristic baselines: plans that meet a budget on the same layer-wise cost the agent is judged on.

- ``uniform-l1``: the same sparsity in every group, L1 filter ranking (Li et al., ICLR 2017), the sparsity found by
  bisection so the model meets the budget.
- ``global-magnitude``, ``slimming``, ``taylor``, ``activation``: one global threshold on channel scores normalised
  per group (their mean is 1), ranked by L1 magnitude, BatchNorm gamma (network slimming, Liu et al., ICCV 2017),
  first-order Taylor (Molchanov et al., CVPR 2019) or feature-map activation; the threshold found by bisection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from pruning_core.engine import PruningEngine, group_kept
from pruning_core.errors import BudgetInfeasibleError, PruneGymError
from pruning_core.metrics import LayerwiseCost
from pruning_core.plan import PruningPlan


@dataclass(frozen=True)
class BudgetProblem:
    """A dense model, the cost the budget is judged on, and the target cost."""

    engine: PruningEngine
    cost: LayerwiseCost
    target: float
    max_sparsity: float = 0.9

    @property
    def granule(self) -> int:
        """Kept widths are multiples of this (the cost's granule, see :class:`LayerwiseCost`)."""
        return self.cost.granule

    def cost_of(self, kept: dict[str, int]) -> float:
        return self.cost.total(self.engine.graph, kept)

    def meets(self, kept: dict[str, int]) -> bool:
        return self.cost_of(kept) <= self.target * (1 + 1e-9)

    def out_of_reach(self, how: str, kept: dict[str, int]) -> BudgetInfeasibleError:
        """The error for a budget that ``how`` cannot reach, its thinnest plan being ``kept``."""
        dense = self.cost_of({g.name: g.channels for g in self.engine.groups})
        return BudgetInfeasibleError(
            f"budget out of reach for {how}: expected a budget of at least {self.cost_of(kept) / dense:.3f} of dense "
            f"(every group at sparsity {self.max_sparsity:g}); got {self.target / dense:.3f}"
        )


def bisect_smallest(meets: Callable[[float], bool], low: float, high: float, steps: int = 30) -> float:
    """Smallest x in [low, high] with ``meets(x)`` (``meets`` monotone, ``meets(high)`` true).

    >>> round(bisect_smallest(lambda x: x * x >= 0.25, 0.0, 1.0), 6), bisect_smallest(lambda x: True, 0.2, 1.0)
    (0.5, 0.2)
    """
    if meets(low):
        return low
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (low, mid) if meets(mid) else (mid, high)
    return high


def _uniform_kept(problem: BudgetProblem, sparsity: float) -> dict[str, int]:
    return {g.name: group_kept(g, sparsity, problem.granule) for g in problem.engine.groups}


def uniform_sparsity(problem: BudgetProblem) -> float:
    """The least sparsity that, applied to every group, meets the budget.

    Raises:
        BudgetInfeasibleError: Not even ``max_sparsity`` everywhere meets it.
    """
    thinnest = _uniform_kept(problem, problem.max_sparsity)
    if not problem.meets(thinnest):
        raise problem.out_of_reach("uniform sparsity", thinnest)
    return bisect_smallest(lambda x: problem.meets(_uniform_kept(problem, x)), 0.0, problem.max_sparsity)


def uniform_plan(problem: BudgetProblem, *, criterion: str = "l1") -> PruningPlan:
    """The least uniform sparsity that meets the budget."""
    return plan_from_kept(problem, _uniform_kept(problem, uniform_sparsity(problem)), criterion)


def plan_from_kept(problem: BudgetProblem, kept: dict[str, int], criterion: str) -> PruningPlan:
    """The channel plan that keeps ``kept[group]`` channels of each group (widths at the problem's granule)."""
    groups = problem.engine.groups
    return PruningPlan(
        sparsity={g.name: 1 - kept[g.name] / g.channels for g in groups}, criterion=criterion, round_to=problem.granule
    )


def retargeted_plan(problem: BudgetProblem, plan: PruningPlan, target: float) -> tuple[PruningPlan, float]:
    """``plan`` moved to cost ``target``, its structure (which groups it prunes more) kept: every group's sparsity moved
    the same fraction ``t`` of the way to ``max_sparsity`` (``t > 0``, thinner) or to the dense width (``t < 0``,
    wider), the least ``t`` in [-1, 1] whose cost is at most ``target``; then the groups that dropped a rounded width
    level at that ``t`` get it back one at a time while the cost stays within ``target`` (otherwise a plan whose
    groups share a sparsity falls a whole staircase step under its target). Returns the plan and ``t`` (1: every
    group at ``max_sparsity``, which may still cost more than ``target``; -1: the dense widths).

    >>> from pruning_core.metrics import MacsCost
    >>> from pruning_core.models import build_model
    >>> from pruning_core.engine import PruningEngine
    >>> engine = PruningEngine(build_model("small_cnn", in_channels=1), (1, 8, 8))
    >>> problem = BudgetProblem(engine, MacsCost(), target=0.0)
    >>> plan = PruningPlan(sparsity=dict.fromkeys(engine.group_names, 0.25))
    >>> dense = problem.cost_of({g.name: g.channels for g in engine.groups})
    >>> def cost(p): return problem.cost_of({n: len(c) for n, c in engine.kept_channels(p).items()})
    >>> thinner, t = retargeted_plan(problem, plan, 0.3 * dense)
    >>> 0 < t < 1 and cost(thinner) <= 0.3 * dense and all(thinner.sparsity[n] > 0.25 for n in engine.group_names)
    True
    >>> wider, t = retargeted_plan(problem, plan, 0.9 * dense)
    >>> -1 < t < 0 and cost(wider) <= 0.9 * dense and all(wider.sparsity[n] < 0.25 for n in engine.group_names)
    True

    With widths in steps of 16, groups of equal width drop a step at the same ``t``; some get theirs back:

    >>> steps = MacsCost()
    >>> steps.granule = 16
    >>> even, t = retargeted_plan(BudgetProblem(engine, steps, target=0.0), plan, 0.4 * dense)
    >>> stair = PruningPlan(sparsity={n: 0.25 + t * 0.65 for n in engine.group_names}, round_to=16)
    >>> cost(stair) < cost(even) <= 0.4 * dense  # 0.32 and 0.39 of dense
    True
    """
    groups = problem.engine.groups
    start = {g.name: float(plan.sparsity.get(g.name, 0.0)) for g in groups}

    def sparsity_at(t: float) -> dict[str, float]:
        if t < 0:
            return {n: s * (1 + t) for n, s in start.items()}
        return {n: s + t * max(0.0, problem.max_sparsity - s) for n, s in start.items()}

    def kept_at(sparsity: dict[str, float]) -> dict[str, int]:
        return {g.name: group_kept(g, sparsity[g.name], problem.granule) for g in groups}

    def within(kept: dict[str, int]) -> bool:
        return problem.cost_of(kept) <= target * (1 + 1e-9)

    t = (
        bisect_smallest(lambda x: within(kept_at(sparsity_at(x))), -1.0, 1.0)
        if within(kept_at(sparsity_at(1.0)))
        else 1.0
    )
    sparsity = sparsity_at(t)
    if t > -1.0:
        # Widths are rounded, so at t several groups may have just dropped a level together and left the cost well
        # under the target. Give back, one group at a time, the width each had just before t, while the cost stays
        # within the target: the plan lands as close under the target as single groups allow.
        before = sparsity_at(t - 1e-6)
        kept, wider = kept_at(sparsity), kept_at(before)
        for name in kept:
            if wider[name] > kept[name] and within({**kept, name: wider[name]}):
                kept[name], sparsity[name] = wider[name], before[name]
    return replace(plan, sparsity=sparsity, round_to=problem.granule), t


def global_plan(problem: BudgetProblem, *, criterion: str = "l1") -> PruningPlan:
    """One global threshold on per-group-normalised channel scores that meets the budget."""
    engine = problem.engine
    scores = {name: s / s.mean().clamp_min(1e-12) for name, s in engine.scores(criterion).items()}
    floor = {g.name: group_kept(g, problem.max_sparsity, problem.granule) for g in engine.groups}

    def kept(threshold: float) -> dict[str, int]:
        above = {g.name: int((scores[g.name] > threshold).sum()) for g in engine.groups}
        return {
            g.name: max(floor[g.name], group_kept(g, 1 - above[g.name] / g.channels, problem.granule))
            for g in engine.groups
        }

    top = float(max(float(s.max()) for s in scores.values())) + 1e-6
    if not problem.meets(kept(top)):
        raise problem.out_of_reach("global pruning", kept(top))
    threshold = bisect_smallest(lambda t: problem.meets(kept(t)), 0.0, top)
    return plan_from_kept(problem, kept(threshold), criterion)


BASELINE_CRITERIA: dict[str, str] = {
    "uniform-l1": "l1",
    "global-magnitude": "l1",
    "slimming": "bn",
    "taylor": "taylor",
    "activation": "activation",
}
"""The importance criterion each heuristic baseline ranks channels by (the searches use their environment's)."""

BASELINES: dict[str, Callable[[BudgetProblem], PruningPlan]] = {
    "uniform-l1": partial(uniform_plan, criterion=BASELINE_CRITERIA["uniform-l1"]),
    "global-magnitude": partial(global_plan, criterion=BASELINE_CRITERIA["global-magnitude"]),
    "slimming": partial(global_plan, criterion=BASELINE_CRITERIA["slimming"]),
    "taylor": partial(global_plan, criterion=BASELINE_CRITERIA["taylor"]),
    "activation": partial(global_plan, criterion=BASELINE_CRITERIA["activation"]),
}


def baseline_plan(name: str, problem: BudgetProblem) -> PruningPlan:
    """The plan of a heuristic baseline by name.

    Raises:
        PruneGymError: Unknown name.
        BudgetInfeasibleError: The method cannot reach the budget.
    """
    if name not in BASELINES:
        raise PruneGymError(f"baseline must be one of {', '.join(BASELINES)}; got {name!r}")
    with torch.no_grad():
        return BASELINES[name](problem)
