from __future__ import annotations

import pytest

from envs.factory import make_env
from pruning_core.engine import kept_count
from pruning_core.errors import PruneGymError
from pruning_core.finalists import Finalists, rerank, rerank_scorer
from pruning_core.scoring import PlanScorer
from pruning_core.search import greedy_search, random_search, tpe_search


@pytest.fixture(scope="module")
def problem_env(digits):
    env = make_env(device="pixel-a76", budget=0.5, val_images=150, bn_batches=2, finetune_steps=0, dataset=digits)
    return env, env.budget_problem()


def _kept(env, plan):
    return {g.name: kept_count(g.channels, plan.sparsity[g.name]) for g in env.engine.groups}


def test_finalists_keep_the_best_distinct_plans_best_first():
    kept = Finalists(3).offer_all([("a", 0.2), ("b", 0.5), ("a", 0.9), ("c", 0.5), ("d", 0.1), ("e", 0.7)])
    # "a" keeps its first score; "c" ties "b" and ranks after it, offered later; "d" falls off the end
    assert kept.entries == [(0.7, "e"), (0.5, "b"), (0.5, "c")]
    assert Finalists.from_list(3, kept.to_list()) == kept
    with pytest.raises(PruneGymError, match="at least 1 finalist"):
        Finalists(0)


@pytest.mark.parametrize("search", ["random", "tpe", "greedy"])
def test_every_search_offers_its_best_plans_within_the_budget(search, problem_env):
    env, problem = problem_env
    finalists = Finalists(4)
    if search == "greedy":
        result = greedy_search(problem, env.scorer, steps=3, finalists=finalists)
    else:
        run = random_search if search == "random" else tpe_search
        result = run(problem, env.scorer, evaluations=12, seed=2, finalists=finalists)
        assert [s for s, _ in finalists.entries] == sorted(result.history, reverse=True)[:4]
    plans = finalists.plans()
    assert len(plans) == 4 and len({p.to_json() for p in plans}) == 4
    assert all(problem.meets(_kept(env, p)) for p in plans)
    assert result.plan.to_json() in {p.to_json() for p in plans}  # the search's own choice is a finalist
    assert finalists.entries[0][0] == max(s for s, _ in finalists.entries)


def test_rerank_keeps_the_finalist_with_the_best_rescore(problem_env, tmp_path):
    env, problem = problem_env
    finalists = Finalists(3)
    random_search(problem, env.scorer, evaluations=6, seed=5, finalists=finalists)
    scorer = rerank_scorer(env.scorer, finetune_steps=3)
    assert scorer.config.finetune_steps == 3 and scorer.config.val_images == env.scorer.config.val_images
    log = tmp_path / "rerank.jsonl"
    with scorer.logging_to(log, {"test": 1}):
        result = rerank(finalists, scorer)
    assert result.evaluations == 3 == len(result.scores)
    assert result.search_scores == [s for s, _ in finalists.entries]
    assert result.scores[result.picked] == max(result.scores)
    assert result.plan == finalists.plans()[result.picked]
    # the re-scores are the short fine-tune's, not the search's: scored afresh they agree
    fresh = rerank_scorer(env.scorer, finetune_steps=3)
    assert fresh.score(result.plan).top1 == pytest.approx(result.scores[result.picked])
    # run again, the log gives the scores back: the same choice, counted, nothing scored afresh
    again = rerank_scorer(env.scorer, finetune_steps=3)
    with again.logging_to(log, {"test": 1}):
        replayed = rerank(finalists, again)
    assert again.evaluations == 0 and (replayed.picked, replayed.scores, replayed.evaluations) == (
        result.picked,
        result.scores,
        3,
    )


def test_rerank_refuses_nothing_to_rank_and_a_score_without_steps(problem_env):
    env, _ = problem_env
    with pytest.raises(PruneGymError, match="at least one finalist"):
        rerank(Finalists(2), PlanScorer(env.engine, env.scorer.dataset))
    with pytest.raises(PruneGymError, match="at least 1 fine-tuning step"):
        rerank_scorer(env.scorer, finetune_steps=0)
