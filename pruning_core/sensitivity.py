"""Per-group sensitivity probes, and the plan they suggest.

A probe thins one group alone and scores the plan with the search's scorer (apply, BN recalibration, val): what that
group costs in accuracy, and what it saves on the device. Two probes per group, at its floor (``max_sparsity``) and
at the budget's uniform sparsity, are enough to tell the few groups a network cannot thin (a residual stream, the
first block of a stage) from the many it can (Li et al., ICLR 2017, Fig. 2: per-layer sensitivity; NetAdapt's first
round is the same measurement).

The probes feed three things: the environment's observation (a policy sees what thinning a group costs), the
sensitivity plan (groups thinned where they lose least per unit of cost saved, :func:`sensitivity_plan`), which an
agent starts from, and greedy-lut's first round, which would score the same plans again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pruning_core.baselines import BudgetProblem, plan_from_kept, uniform_sparsity
from pruning_core.data import atomic_write_bytes
from pruning_core.engine import group_kept, group_widths
from pruning_core.errors import PruneGymError
from pruning_core.plan import PruningPlan
from pruning_core.scoring import PlanScorer

PROBE_LEVELS = ("floor", "uniform")
"""The probes of each group: thinned alone to its floor, and to the budget's uniform sparsity."""


@dataclass(frozen=True)
class Probe:
    """One group thinned alone."""

    kept: int
    """Channels the group kept."""
    top1: float
    """Val top-1 of the plan (the scorer's recipe)."""
    saved: float
    """Cost saved on the budget model, as a fraction of the dense model's."""


@dataclass(frozen=True)
class Sensitivity:
    """Every group's probes, and the dense model's score on the same yardstick."""

    dense_top1: float
    probes: Mapping[str, Mapping[str, Probe]]
    """Per group, per level of :data:`PROBE_LEVELS`."""
    uniform: float
    """The uniform sparsity the ``uniform`` probes were taken at."""
    evaluations: int
    """Plans scored to make the probes (the dense one included; probes that coincide are scored once)."""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    """What the probes depend on (model, checkpoint, device, cost model, scoring recipe), for reuse."""

    def drop(self, group: str, level: str = "uniform") -> float:
        """Val top-1 lost (>= 0) with ``group`` alone thinned to ``level``."""
        return max(0.0, self.dense_top1 - self.probes[group][level].top1)

    def drop_per_cost(self, group: str) -> float:
        """Accuracy lost per unit of cost saved, the steeper of the two probes (inf: saves nothing, loses some)."""
        rates = []
        for level in PROBE_LEVELS:
            probe = self.probes[group][level]
            if probe.saved > 1e-9:
                rates.append(self.drop(group, level) / probe.saved)
        return max(rates) if rates else math.inf

    def features(self) -> dict[str, tuple[float, float, float]]:
        """Per group, in [0, 1]: the drop relative to dense (uniform probe), the drop per unit of cost saved over the
        largest finite one among groups, and the rank of that rate among groups (0: cheapest to thin).

        >>> s = Sensitivity(0.9, {"a": {"floor": Probe(1, 0.5, 0.2), "uniform": Probe(2, 0.8, 0.1)},
        ...                        "b": {"floor": Probe(1, 0.88, 0.2), "uniform": Probe(2, 0.9, 0.1)}}, 0.5, 5)
        >>> {g: tuple(round(x, 3) for x in f) for g, f in s.features().items()}
        {'a': (0.111, 1.0, 1.0), 'b': (0.0, 0.05, 0.0)}
        """
        rates = {g: self.drop_per_cost(g) for g in self.probes}
        finite = [r for r in rates.values() if math.isfinite(r)]
        top = max(finite, default=0.0) or 1.0
        order = sorted(rates, key=lambda g: rates[g])
        rank = {g: i / max(1, len(order) - 1) for i, g in enumerate(order)}
        return {
            g: (
                min(1.0, self.drop(g) / max(self.dense_top1, 1e-9)),
                min(1.0, rates[g] / top),
                rank[g],
            )
            for g in self.probes
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "dense_top1": self.dense_top1,
                "probes": {g: {lv: asdict(p) for lv, p in levels.items()} for g, levels in self.probes.items()},
                "uniform": self.uniform,
                "evaluations": self.evaluations,
                "inputs": dict(self.inputs),
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Sensitivity:
        data = json.loads(text)
        probes = {g: {lv: Probe(**p) for lv, p in levels.items()} for g, levels in data["probes"].items()}
        return cls(data["dense_top1"], probes, data["uniform"], data["evaluations"], data.get("inputs", {}))


def probe_plans(problem: BudgetProblem, *, uniform: float | None = None, criterion: str = "l1") -> dict[str, Any]:
    """The plans the probes score: ``{"dense": plan, group: {level: (kept, plan)}}``."""
    groups = problem.engine.groups
    full = {g.name: g.channels for g in groups}
    level = uniform_sparsity(problem) if uniform is None else uniform
    plans: dict[str, Any] = {"dense": plan_from_kept(problem, full, criterion)}
    for g in groups:
        widths = {
            "floor": group_widths(g, problem.granule, problem.max_sparsity)[0],
            "uniform": group_kept(g, level, problem.granule),
        }
        plans[g.name] = {lv: (w, plan_from_kept(problem, {**full, g.name: w}, criterion)) for lv, w in widths.items()}
    return plans


def probe_sensitivity(
    problem: BudgetProblem,
    scorer: PlanScorer,
    *,
    uniform: float | None = None,
    criterion: str = "l1",
    inputs: Mapping[str, Any] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Sensitivity:
    """Score every group thinned alone to its floor and to the budget's uniform sparsity.

    Args:
        problem: The dense model, the budget model and the target (which sets the uniform sparsity).
        scorer: The search's scorer; its cache keeps the probes, so a search that follows with the same scorer (as
            greedy-lut's first round does) does not pay for them again.
        uniform: The sparsity of the second probe (default: the budget's uniform sparsity).
        criterion: Channel importance criterion of the probes' plans.
        inputs: Recorded with the result (what the probes depend on).
        on_step: Called with (plans scored, plans to score) after each.
    """
    level = uniform_sparsity(problem) if uniform is None else uniform
    plans = probe_plans(problem, uniform=level, criterion=criterion)
    full = {g.name: g.channels for g in problem.engine.groups}
    dense_cost = problem.cost_of(full)
    total, done, scored = 1 + 2 * len(full), 0, 0

    def score(plan: PruningPlan) -> float:
        nonlocal done, scored
        result = scorer.score(plan)
        done += 1
        scored += 0 if result.cached else 1
        if on_step is not None:
            on_step(done, total)
        return result.top1

    dense_top1 = score(plans["dense"])
    probes: dict[str, dict[str, Probe]] = {}
    for name in full:
        probes[name] = {}
        for lv, (kept, plan) in plans[name].items():
            saved = (dense_cost - problem.cost_of({**full, name: kept})) / dense_cost
            probes[name][lv] = Probe(kept, score(plan), saved)
    return Sensitivity(dense_top1, probes, level, scored, dict(inputs or {}))


def cached_sensitivity(
    path: str | os.PathLike[str],
    problem: BudgetProblem,
    scorer: PlanScorer,
    inputs: Mapping[str, Any],
    *,
    uniform: float | None = None,
    criterion: str = "l1",
    progress: bool = False,
) -> Sensitivity:
    """The probes of ``problem``, read from ``path`` when made there from the same ``inputs``, else made and saved.

    Every probe's score is logged as it is made (``path`` with ``.jsonl``, as the searches' scores are), so probing
    interrupted and started again scores only what it had not. ``inputs`` must name what the scores depend on
    besides the scorer's recipe, which is added: the model, its checkpoint, the device and its cost model.

    Raises:
        PruneGymError: ``inputs`` is not JSON-serialisable.
    """
    path = Path(path)
    level = uniform_sparsity(problem) if uniform is None else uniform
    key = json.loads(json.dumps({**inputs, "scoring": asdict(scorer.config), "uniform": round(level, 6)}))
    if path.is_file():
        saved = Sensitivity.from_json(path.read_text())
        if saved.inputs == key:
            for name, levels in probe_plans(problem, uniform=level, criterion=criterion).items():
                if name == "dense":
                    continue
                for lv, (_, plan) in levels.items():  # greedy-lut's first round reuses them through the cache
                    scorer.remember(plan, saved.probes[name][lv].top1)
            scorer.remember(probe_plans(problem, uniform=level, criterion=criterion)["dense"], saved.dense_top1)
            return saved
    return logged_probes(
        path,
        scorer,
        key,
        lambda on_step: probe_sensitivity(
            problem, scorer, uniform=level, criterion=criterion, inputs=key, on_step=on_step
        ),
        total=1 + 2 * len(problem.engine.groups),
        desc="sensitivity probes" if progress else None,
    )


class _Saved(Protocol):
    def to_json(self) -> str: ...


_P = TypeVar("_P", bound=_Saved)


def logged_probes(
    path: Path,
    scorer: PlanScorer,
    key: Mapping[str, Any],
    probe: Callable[[Callable[[int, int], None] | None], _P],
    *,
    total: int,
    desc: str | None,
) -> _P:
    """Make probes with ``probe`` (given a per-plan callback), every score logged to ``path`` with ``.jsonl`` under
    ``key`` as it is made (probing started again scores only what it had not), and save them at ``path``.

    Args:
        path: Where the probes are saved (their scores' log beside it).
        scorer: The scorer the probes score with.
        key: What the scores depend on (the log's header).
        probe: Makes the probes, calling its argument (None or a callback) with (plans scored, plans to score).
        total: Plans to score, for the progress bar.
        desc: The progress bar's label (None: no bar).
    """
    bar = None
    if desc is not None:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="plan")
    try:
        with scorer.logging_to(path.with_suffix(".jsonl"), key):
            result = probe(None if bar is None else lambda done, _total: bar.update(done - bar.n))
    finally:
        if bar is not None:
            bar.close()
    atomic_write_bytes(path, lambda tmp: tmp.write_text(result.to_json()))
    return result


def _drop_curve(sensitivity: Sensitivity, group: str, channels: int) -> Callable[[int], float]:
    """Accuracy lost with ``group`` alone at a width, interpolated linearly in sparsity through (dense, 0) and the
    probes, and made non-increasing in width (a narrower group never loses less)."""
    points = sorted(
        {(1.0 - p.kept / channels, sensitivity.drop(group, lv)) for lv, p in sensitivity.probes[group].items()}
    )
    xs, ys = [0.0], [0.0]
    for x, y in points:
        if x > xs[-1] + 1e-12:
            xs.append(x)
            ys.append(max(y, ys[-1]))

    def drop(width: int) -> float:
        s = 1.0 - width / channels
        for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
            if s <= x1:
                return y0 + (y1 - y0) * (s - x0) / max(x1 - x0, 1e-12)
        return ys[-1] if len(xs) == 1 else ys[-1] + (ys[-1] - ys[-2]) * (s - xs[-1]) / max(xs[-1] - xs[-2], 1e-12)

    return drop


def predicted_drop(sensitivity: Sensitivity, problem: BudgetProblem, kept: Mapping[str, int]) -> float:
    """The accuracy the probes predict a plan loses: the sum of its groups' drops, each interpolated from the probes
    (what :func:`sensitivity_plan` minimises; drops do not quite add up: this ranks plans, it does not score them)."""
    return sum(
        _drop_curve(sensitivity, g.name, g.channels)(kept.get(g.name, g.channels)) for g in problem.engine.groups
    )


def sensitivity_plan(
    problem: BudgetProblem,
    sensitivity: Sensitivity,
    *,
    criterion: str = "l1",
) -> PruningPlan:
    """The plan the probes suggest: each group at the width that minimises its accuracy drop minus ``lam`` times the
    cost it saves, with the least ``lam`` that meets the budget (a Lagrangian allocation of the budget over groups,
    assuming their drops add up); then, while the budget allows, groups get a step back, the most sensitive first.

    Args:
        problem: The budget to meet.
        sensitivity: The probes (:func:`probe_sensitivity`).
        criterion: Channel importance criterion of the plan.

    Raises:
        BudgetInfeasibleError: Not even every group at its floor meets the budget (from ``uniform_sparsity``).
    """
    groups = problem.engine.groups
    full = {g.name: g.channels for g in groups}
    missing = [g for g in full if g not in sensitivity.probes]
    if missing:
        raise PruneGymError(f"expected probes for every group; got none for {', '.join(missing[:3])}")
    dense_cost = problem.cost_of(full)
    widths = {g.name: group_widths(g, problem.granule, problem.max_sparsity) for g in groups}
    # each width's drop and the cost it saves, the group alone thinned
    table: dict[str, list[tuple[int, float, float]]] = {}
    for g in groups:
        curve = _drop_curve(sensitivity, g.name, g.channels)
        table[g.name] = [
            (w, curve(w), (dense_cost - problem.cost_of({**full, g.name: w})) / dense_cost) for w in widths[g.name]
        ]

    def kept_at(lam: float) -> dict[str, int]:
        return {name: min(rows, key=lambda r: (r[1] - lam * r[2], -r[0]))[0] for name, rows in table.items()}

    floor = {name: options[0] for name, options in widths.items()}
    if not problem.meets(floor):
        uniform_sparsity(problem)  # raises BudgetInfeasibleError with its message
    low, high = 0.0, 1.0
    while not problem.meets(kept_at(high)) and high < 1e9:
        low, high = high, high * 4
    if not problem.meets(kept_at(high)):
        kept = dict(floor)
    else:
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (low, mid) if problem.meets(kept_at(mid)) else (mid, high)
        kept = kept_at(high)
    # give a step back where the budget still allows, the steepest drop per cost first
    for name in sorted(full, key=lambda n: -sensitivity.drop_per_cost(n)):
        larger = [w for w in widths[name] if w > kept[name]]
        while larger and problem.meets({**kept, name: larger[0]}):
            kept[name] = larger.pop(0)
    return plan_from_kept(problem, kept, criterion)
