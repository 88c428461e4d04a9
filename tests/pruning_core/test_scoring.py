"""The search's accuracy estimate: prune, recalibrate BatchNorm, fine-tune briefly, evaluate; cached per plan."""

from __future__ import annotations

import copy

import pytest
import torch

from pruning_core.checkpoint import load_checkpoint
from pruning_core.engine import PruningEngine, recalibrate_bn
from pruning_core.errors import PlanError, PruneGymError
from pruning_core.plan import PruningPlan
from pruning_core.scoring import PlanScorer, ScoreConfig
from pruning_core.training import evaluate

VAL = 200  # val images scored: enough to tell plans apart, fast on 8x8 digits


@pytest.fixture(scope="module")
def engine(digits) -> PruningEngine:
    model = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    return PruningEngine(model, digits.input_shape, dataset=digits)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _norm_stats(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"val_images": 0}, "val_images must be >= 1; got 0"),
        ({"bn_batches": -1}, "bn_batches and finetune_steps must be >= 0; got -1, 50"),
        ({"finetune_steps": -2}, "bn_batches and finetune_steps must be >= 0; got 10, -2"),
    ],
)
def test_bad_recipes_are_refused(options, message):
    with pytest.raises(PruneGymError, match=f"^{message}$"):
        ScoreConfig(**options)


def test_the_dense_score_is_a_plain_evaluation(engine, digits):
    scorer = PlanScorer(engine, digits, ScoreConfig(val_images=VAL, bn_batches=0, finetune_steps=0))
    score = scorer.score(PruningPlan())
    direct = evaluate(copy.deepcopy(engine.model), digits, "val", limit=VAL).top1
    assert score.top1 == direct > 0.8  # a trained model, scored on its first VAL val images
    assert (score.macs, score.params) == (engine.base_cost.macs, engine.base_cost.params)
    assert not score.cached and score.exec_rate == {} and set(score.timings) == {"apply", "adapt", "evaluate"}
    assert scorer.evaluations == 1


def test_a_score_is_recalibration_then_evaluation(engine, digits):
    config = ScoreConfig(val_images=VAL, bn_batches=3, bn_batch_size=32, finetune_steps=0)
    scorer = PlanScorer(engine, digits, config)
    plan = PruningPlan.uniform(engine.group_names, 0.5)
    dense = _state(engine.model)
    score = scorer.score(plan)
    by_hand = engine.apply(plan)
    stale = [s.clone() for s in _norm_stats(by_hand.model)]
    recalibrate_bn(by_hand.model, digits, batches=3, batch_size=32)
    assert score.top1 == evaluate(by_hand.model, digits, "val", limit=VAL).top1
    assert score.macs == by_hand.cost.macs < engine.base_cost.macs
    adapted = scorer.prune_and_adapt(plan)
    assert all(not torch.allclose(a, b) for a, b in zip(_norm_stats(adapted.model), stale, strict=True))
    assert _same(dense, engine.model.state_dict())  # the dense model is never touched


def test_identical_plans_are_scored_once(engine, digits):
    scorer = PlanScorer(engine, digits, ScoreConfig(val_images=VAL, bn_batches=2, finetune_steps=0))
    first = scorer.score(PruningPlan.uniform(engine.group_names, 0.4))
    again = scorer.score(PruningPlan(sparsity=dict.fromkeys(engine.group_names, 0.4)))  # equal, built anew
    assert again.cached and not first.cached and again.seconds == 0.0 and first.seconds > 0
    assert (again.top1, again.macs, again.params) == (first.top1, first.macs, first.params)
    assert scorer.evaluations == 1
    other = scorer.score(PruningPlan.uniform(engine.group_names, 0.4, criterion="l2"))
    assert not other.cached and scorer.evaluations == 2


def test_fine_tuned_scores_are_reproducible_and_leave_the_dense_model_alone(engine, digits):
    config = ScoreConfig(val_images=VAL, bn_batches=2, finetune_steps=4, finetune_batch_size=32, distill=0.5)
    plan = PruningPlan.uniform(engine.group_names, 0.6)
    dense = _state(engine.model)
    scores = [PlanScorer(engine, digits, config).score(plan) for _ in range(2)]
    assert scores[0].top1 == scores[1].top1 and not scores[1].cached  # two scorers, the same seeded recipe
    assert _same(dense, engine.model.state_dict())  # the teacher of the distillation is not trained
    tuned = PlanScorer(engine, digits, config).prune_and_adapt(plan).model.state_dict()
    recalibrated_only = PlanScorer(engine, digits, ScoreConfig(bn_batches=2, finetune_steps=0))
    assert not torch.equal(tuned["down.0.weight"], recalibrated_only.prune_and_adapt(plan).model.down[0].weight)


def test_remembered_scores_are_not_paid_for_again(engine, digits):
    scorer = PlanScorer(engine, digits, ScoreConfig(val_images=VAL, bn_batches=2, finetune_steps=0))
    plan = PruningPlan.uniform(engine.group_names, 0.3)
    scorer.remember(plan, 0.123)
    score = scorer.score(plan)
    assert (score.top1, score.cached, scorer.evaluations) == (0.123, True, 0)
    assert score.macs == engine.apply(plan).cost.macs


def test_remembered_scores_taken_back_from_a_log_are_still_not_paid_for(engine, digits, tmp_path):
    config = ScoreConfig(val_images=VAL, bn_batches=2, finetune_steps=0)
    probe, other = PruningPlan.uniform(engine.group_names, 0.3), PruningPlan.uniform(engine.group_names, 0.5)
    runs = []
    for _ in range(2):  # a search, then the same search again from its log in a new scorer
        scorer = PlanScorer(engine, digits, config)
        scorer.remember(probe, 0.123)
        with scorer.logging_to(tmp_path / "scores.jsonl", {"model": "small_cnn"}):
            runs.append([(s.top1, s.cached) for s in (scorer.score(probe), scorer.score(other))])
    assert runs[0][0] == runs[1][0] == (0.123, True)
    assert runs[0][1] == runs[1][1] and runs[1][1][1] is False  # the other plan was paid for, by the first run


def test_plans_the_scorer_cannot_serve_are_refused(engine, digits, tmp_path):
    scorer = PlanScorer(engine, digits, ScoreConfig(val_images=VAL, bn_batches=0, finetune_steps=0))
    with pytest.raises(PlanError, match=r"^plan has skip thresholds but the scorer has no trained gates$"):
        scorer.score(PruningPlan(skip_thresholds={"block1": 0.5}))
    with pytest.raises(PlanError, match=r"plan names groups the model does not have: \['layer9'\]"):
        scorer.score(PruningPlan(sparsity={"layer9": 0.5}))
    assert scorer.evaluations == 0
    logging = scorer.logging_to(tmp_path / "scores.jsonl", {"model": "small_cnn"})
    twice = pytest.raises(PruneGymError, match="expected one score log at a time; already logging to")
    with logging, twice, scorer.logging_to(tmp_path / "other.jsonl", {"model": "small_cnn"}):
        pass
