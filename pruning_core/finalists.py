"""A search's finalists, re-ranked by a costlier score.

A search scores many candidates cheaply (adaptive BN alone, :mod:`pruning_core.scoring`). That score separates good
plans from bad ones but not good plans from each other: over the better half of the 72 plans the resnet56 benchmark
fine-tuned, it ranked them with Spearman 0.536 against their accuracy after fine-tuning, where BN plus 50 SGD steps
ranked them with 0.891 (``benchmarks/scoring/resnet56_records.md``). So every search (an agent's episodes, greedy-lut,
random-search, tpe) keeps its best few distinct plans that meet the budget (:class:`Finalists`), and
:func:`rerank` scores them again with the short fine-tune and keeps the best. Each search gets the same number of
finalists and pays the same extra evaluations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pruning_core.errors import PruneGymError
from pruning_core.executor import Executor
from pruning_core.plan import PruningPlan
from pruning_core.scoring import DEFAULT_FINETUNE_STEPS, PlanScorer


@dataclass
class Finalists:
    """The ``size`` best distinct plans offered, by their search's score (ties: the one offered first ranks first).

    Example::

        kept = Finalists(2)
        for plan, top1 in scored:
            kept.offer(plan.to_json(), top1)
        kept.plans()  # best first
    """

    size: int
    entries: list[tuple[float, str]] = field(default_factory=list)
    """``(score, plan JSON)``, best first."""

    def __post_init__(self) -> None:
        if self.size < 1:
            raise PruneGymError(f"expected at least 1 finalist; got {self.size}")

    def offer(self, plan: str, score: float) -> None:
        """Keep ``plan`` (canonical JSON) if it is among the best ``size`` so far; a plan kept already keeps its
        first score."""
        if any(kept == plan for _, kept in self.entries):
            return
        position = next((i for i, (s, _) in enumerate(self.entries) if score > s), len(self.entries))
        if position < self.size:
            self.entries.insert(position, (score, plan))
            del self.entries[self.size :]

    def offer_all(self, scored: Iterable[tuple[str, float]]) -> Finalists:
        """Offer each ``(plan JSON, score)`` in turn; returns self."""
        for plan, score in scored:
            self.offer(plan, score)
        return self

    def plans(self) -> list[PruningPlan]:
        """The finalists, best first."""
        return [PruningPlan.from_json(plan) for _, plan in self.entries]

    def to_list(self) -> list[list[Any]]:
        """JSON-ready ``[[score, plan JSON], ...]``, best first."""
        return [[score, plan] for score, plan in self.entries]

    @classmethod
    def from_list(cls, size: int, entries: Sequence[Sequence[Any]]) -> Finalists:
        """Read back :meth:`to_list`'s output."""
        return cls(size, [(float(score), str(plan)) for score, plan in entries])


@dataclass(frozen=True)
class Reranked:
    """The outcome of :func:`rerank`."""

    plan: PruningPlan
    """The finalist with the best re-score."""
    picked: int
    """Its place among the finalists by the search's own score (0: the search's own choice)."""
    search_scores: list[float]
    """The finalists' scores in the search, best first."""
    scores: list[float]
    """Their re-scores, in the same order."""
    evaluations: int
    """Finalists scored by this re-score, in this run or in an earlier run of it whose log was taken back (a plan
    the scorer had cached is not counted)."""
    seconds: float
    """Wall seconds the re-scores took here (scores taken back from a log count none: see
    :attr:`~pruning_core.scoring.ScoreLog.carried_seconds`)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the plan left out: the record holds it)."""
        return {
            "picked": self.picked,
            "search_scores": self.search_scores,
            "scores": self.scores,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
        }


def rerank_scorer(scorer: PlanScorer, finetune_steps: int = DEFAULT_FINETUNE_STEPS) -> PlanScorer:
    """A scorer with ``scorer``'s model, data and recipe but ``finetune_steps`` SGD steps after recalibration."""
    if finetune_steps < 1:
        raise PruneGymError(f"expected a re-score with at least 1 fine-tuning step; got {finetune_steps}")
    return PlanScorer(
        scorer.engine, scorer.dataset, replace(scorer.config, finetune_steps=finetune_steps), gates=scorer.gates
    )


def rerank(finalists: Finalists, scorer: PlanScorer, *, executor: Executor | None = None) -> Reranked:
    """Score the finalists again with ``scorer`` (see :func:`rerank_scorer`) and keep the best; a tie goes to the one
    the search ranked higher.

    Args:
        finalists: A search's best plans, best first.
        scorer: The re-score. Log it (:meth:`PlanScorer.logging_to`) to make an interrupted re-rank resumable.
        executor: Where the finalists are scored (None: here, one after the other).

    Raises:
        PruneGymError: There are no finalists (the search found no plan within the budget).
    """
    plans = finalists.plans()
    if not plans:
        raise PruneGymError("expected at least one finalist to re-rank; the search kept none within the budget")
    scores = scorer.score_all(plans, executor=executor)
    top1 = [s.top1 for s in scores]
    picked = max(range(len(plans)), key=lambda i: (top1[i], -i))
    return Reranked(
        plan=plans[picked],
        picked=picked,
        search_scores=[score for score, _ in finalists.entries],
        scores=top1,
        evaluations=sum(not s.cached for s in scores),
        seconds=sum(s.seconds for s in scores),
    )
