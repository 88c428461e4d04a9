"""Importance criteria score real channels: what each one reads, and how it refuses what it cannot do."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from pruning_core.checkpoint import load_checkpoint
from pruning_core.errors import PlanError
from pruning_core.graph import ModelGraph
from pruning_core.importance import CRITERIA, make_criterion
from pruning_core.models import build_model

CHANNEL_CRITERIA = ["l1", "l2", "taylor", "activation", "bn"]  # all but random, which reads nothing


class Plain(nn.Module):
    """conv-BN-ReLU, conv, pool, classifier: group ``a`` holds a's outputs, bn's channels and b's inputs; group ``b``
    has no BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(torch.relu(self.bn(self.a(x)))).mean((2, 3)))


@pytest.fixture
def plain() -> ModelGraph:
    torch.manual_seed(0)
    model = Plain().eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, -1.5, 1.0, -0.25]))  # |gamma| ranks 1, 2, 0, 3
    return ModelGraph(model, (3, 8, 8))


@functools.cache
def _trained_small_cnn() -> nn.Module:
    return load_checkpoint("checkpoints/small_cnn_digits.pt").build().eval()


def small_cnn() -> nn.Module:
    return copy.deepcopy(_trained_small_cnn())


def zero_channel(graph: ModelGraph, group: str, channel: int) -> None:
    """Zero one channel of a group in every coupled layer Torch-Pruning lists: the producers' filters, the BatchNorm
    scale and shift, the consumers' input weights. The channel then carries zeros through the network."""
    with torch.no_grad():
        for dep, idxs in graph.tp_group(group, [channel]):
            module, idx = dep.target.module, [getattr(i, "idx", i) for i in idxs]
            if not isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                continue
            if graph.dependency_graph.is_out_channel_pruning_fn(dep.handler):
                module.weight[idx] = 0.0
                if module.bias is not None:
                    module.bias[idx] = 0.0
            else:
                module.weight[:, idx] = 0.0


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_averages_the_filter_norms_of_every_coupled_layer(plain, p):
    model = plain.model
    per_layer = [
        model.a.weight.abs().pow(p).sum((1, 2, 3)),  # a's output filters
        model.bn.weight.abs().pow(p),  # the BatchNorm's scale
        model.b.weight.abs().pow(p).sum((0, 2, 3)),  # b's input slices
    ]
    scores = make_criterion(f"l{p}")(plain, plain.group("a"))
    assert scores.shape == (4,) and torch.allclose(scores, torch.stack(per_layer).mean(0).detach())


def test_bn_scores_are_the_absolute_batchnorm_scales(plain):
    scores = make_criterion("bn")(plain, plain.group("a"))
    assert torch.equal(scores, torch.tensor([0.5, 1.5, 1.0, 0.25]))
    assert torch.equal(make_criterion("bn")(plain, plain.group("b")), torch.ones(6))  # no BatchNorm: all alike


@pytest.mark.parametrize("criterion", CHANNEL_CRITERIA)
@pytest.mark.parametrize(("group", "channel"), [("stem.0", 9), ("block1.conv1", 40)])
def test_a_channel_zeroed_by_hand_scores_lowest(criterion, group, channel, digits):
    # stem.0's channels run through block1's residual stream: zeroed in both producers and both BatchNorms
    graph = ModelGraph(small_cnn(), digits.input_shape)
    zero_channel(graph, group, channel)
    scorer = make_criterion(criterion)
    scorer.prepare(graph, digits, batches=2, batch_size=32)
    scores = scorer(graph, graph.group(group))
    assert scores.shape == (graph.group(group).channels,) and torch.isfinite(scores).all()
    assert scores[channel] == 0.0
    assert (scores > 0).sum() == len(scores) - 1  # every other channel of a trained model matters somewhat


def test_activation_is_read_after_the_batchnorm(digits):
    graph = ModelGraph(small_cnn(), digits.input_shape)
    with torch.no_grad():  # the conv's filter is intact; the BatchNorm silences its output
        graph.model.block1.bn1.weight[3] = 0.0
        graph.model.block1.bn1.bias[3] = 0.0
    scores = {}
    for name in ("activation", "l1"):
        scorer = make_criterion(name)
        scorer.prepare(graph, digits, batches=2, batch_size=32)
        scores[name] = scorer(graph, graph.group("block1.conv1"))
    assert scores["activation"][3] == 0.0 and scores["activation"].argmin() == 3
    assert scores["l1"][3] > scores["l1"].min()  # the magnitude still sees the filter


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random"])
def test_data_free_criteria_score_every_channel_of_a_depthwise_model(criterion):
    torch.manual_seed(0)
    graph = ModelGraph(build_model("mobilenetv2"), (3, 32, 32))
    scorer = make_criterion(criterion)
    scorer.prepare(graph, None)
    for group in graph.groups:
        scores = scorer(graph, group)
        assert scores.shape == (group.channels,) and torch.isfinite(scores).all() and (scores >= 0).all()


def test_random_scores_are_seeded_and_differ_between_groups(plain):
    from pruning_core.importance import RandomCriterion

    first, again, other = RandomCriterion(0), RandomCriterion(0), RandomCriterion(1)
    a, b = plain.group("a"), plain.group("b")
    assert torch.equal(first(plain, a), again(plain, a))
    assert not torch.equal(first(plain, a), other(plain, a))
    assert not torch.equal(first(plain, a), first(plain, b)[:4])
    assert ((first(plain, b) >= 0) & (first(plain, b) < 1)).all()
    weights = first.weight_scores(plain.model.b)
    assert weights.shape == plain.model.b.weight.shape and torch.equal(weights, again.weight_scores(plain.model.b))


def test_taylor_scores_weights_by_their_gradients_and_leaves_the_model_as_it_was(digits):
    graph = ModelGraph(small_cnn().train(), digits.input_shape)
    before = copy.deepcopy(graph.model.state_dict())
    scorer = make_criterion("taylor")
    scorer.prepare(graph, digits, batches=2, batch_size=32)
    assert graph.model.training  # put back in train mode
    after = graph.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # in eval mode: BatchNorm statistics too
    weight = graph.model.down[0].weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert torch.equal(scorer.weight_scores(graph.model.down[0]), (weight.detach() * weight.grad).abs())


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_weight_scores_are_the_weights_to_the_p(plain, p):
    weight = plain.model.b.weight
    assert torch.equal(make_criterion(f"l{p}").weight_scores(plain.model.b), weight.detach().abs().pow(p))


@pytest.mark.parametrize("criterion", ["taylor", "activation"])
def test_data_criteria_refuse_to_score_unprepared(plain, criterion):
    scorer = make_criterion(criterion)
    with pytest.raises(PlanError, match=f"criterion '{criterion}' was not prepared with calibration data"):
        scorer(plain, plain.group("a"))
    with pytest.raises(
        PlanError, match=f"criterion '{criterion}' needs a dataset for its calibration batches; got none"
    ):
        scorer.prepare(plain, None)
    assert scorer.needs_data


def test_weight_scores_are_refused_where_they_mean_nothing(plain):
    for name in ("bn", "activation"):
        with pytest.raises(PlanError, match=f"criterion '{name}' scores channels only; use channel granularity"):
            make_criterion(name).weight_scores(plain.model.a)
    with pytest.raises(PlanError, match="criterion 'taylor' was not prepared with calibration data"):
        make_criterion("taylor").weight_scores(plain.model.a)  # no gradients yet
    for module in (nn.ReLU(), nn.BatchNorm2d(4, affine=False)):
        with pytest.raises(
            PlanError, match=f"expected a conv or linear layer with a weight tensor; got {type(module).__name__}"
        ):
            make_criterion("l1").weight_scores(module)


def test_criteria_are_made_fresh_by_name_and_unknown_names_list_the_valid_ones():
    assert {name: make_criterion(name).name for name in CRITERIA} == {name: name for name in CRITERIA}
    assert make_criterion("taylor") is not make_criterion("taylor")  # each engine prepares its own
    with pytest.raises(PlanError, match=r"^criterion must be one of l1, l2, taylor, activation, bn, random; got 'l3'$"):
        make_criterion("l3")
