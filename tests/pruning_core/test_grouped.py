"""Grouped convolutions are pruned alike in every slice; channels that cross a channel shuffle stay dense."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_core import graph as graph_module
from pruning_core.engine import PruningEngine, group_kept, group_widths, prune_channels
from pruning_core.errors import PlanError, UnsupportedModelError
from pruning_core.graph import ModelGraph
from pruning_core.metrics import MacsCost, ParamsCost, count_cost
from pruning_core.models import build_model
from pruning_core.plan import PruningPlan

SHAPE = (3, 16, 16)


class GroupedNet(nn.Module):
    """Stem, a grouped conv (4 groups) and a grouped conv (8 groups) sharing channels, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.g4 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.g8 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.g8(self.g4(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleNet(nn.Module):
    """Two branches concatenated and shuffled (as in ShuffleNetV2), then a pointwise conv and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)
        return self.fc(self.head(x).mean((2, 3)))


def kill_channels(model: nn.Module, bn: str, positions: list[int], slices: int) -> None:
    """Zero gamma and beta of the same positions in every slice: those channels output zeros after ReLU."""
    norm = model.get_submodule(bn)
    per_slice = norm.num_features // slices
    with torch.no_grad():
        for s in range(slices):
            for p in positions:
                norm.weight[s * per_slice + p] = 0.0
                norm.bias[s * per_slice + p] = 0.0


def test_grouped_convs_keep_equal_slices_and_the_same_function():
    torch.manual_seed(0)
    model = GroupedNet().eval()
    # Channels that output zeros can be removed without changing the function: pruning them must keep it.
    kill_channels(model, "stem.1", [0], 4)
    kill_channels(model, "g4.1", [1, 2], 8)
    engine = PruningEngine(model, SHAPE)
    slices = {g.name: g.channel_groups for g in engine.groups}
    assert slices == {"stem.0": 4, "g4.0": 8, "g8.0": 8}  # lcm of the 4- and 8-group convs that share g4's outputs
    assert engine.unprunable == []
    plan = PruningPlan(sparsity={"stem.0": 0.25, "g4.0": 0.5, "g8.0": 0.0}, criterion="bn")
    pruned = engine.apply(plan)
    g4, g8 = pruned.model.g4[0], pruned.model.g8[0]
    assert (g4.in_channels, g4.out_channels, g8.in_channels) == (12, 16, 16)
    assert g4.in_channels % g4.groups == 0 and g8.in_channels % g8.groups == 0
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(pruned.model(x), model(x), atol=1e-5)


@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.9])
def test_grouped_widths_are_multiples_of_their_slices(ratio):
    engine = PruningEngine(GroupedNet(), SHAPE)
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, ratio))
    for group in engine.groups:
        kept = len(pruned.kept_channels[group.name])
        assert kept % group.channel_groups == 0 and kept >= group.channel_groups
    with torch.no_grad():
        assert pruned.model(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_uneven_slices_are_refused_in_one_line():
    model = GroupedNet().eval()
    with pytest.raises(PlanError, match=r"kept channels|different positions from the 4 slices of the inputs of g4\.0"):
        prune_channels(model, SHAPE, {"stem.0": list(range(12))})  # the last slice loses all, the others none


def test_channels_through_a_channel_shuffle_stay_dense_and_are_listed():
    torch.manual_seed(0)
    model = ShuffleNet().eval()
    engine = PruningEngine(model, SHAPE)
    assert engine.group_names == ["stem.0", "head.0"]
    assert [u.name for u in engine.unprunable] == ["left.0", "right.0"]
    assert all("channel shuffle" in u.reason and "in ShuffleNet" in u.reason for u in engine.unprunable)
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.5))
    assert pruned.model.left[0].out_channels == 8 and pruned.model.head[0].out_channels == 12
    with torch.no_grad():
        assert pruned.model(torch.randn(2, *SHAPE)).shape == (2, 10)
    with pytest.raises(PlanError, match=r"left\.0 cannot be pruned as planned: its channels pass through a channel"):
        prune_channels(model, SHAPE, {"left.0": [0, 1, 2, 3]})


class ReadsItsWidth(nn.Module):
    """Reads the conv's width from an attribute (as ViT reads its hidden size): that conv cannot be pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 8
        self.conv = nn.Conv2d(3, self.width, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).reshape(x.shape[0], self.width, -1).mean(2)
        return self.fc2(torch.relu(self.fc1(x)))


def test_groups_whose_pruning_breaks_the_model_stay_dense_and_are_listed():
    engine = PruningEngine(ReadsItsWidth(), SHAPE)
    assert engine.group_names == ["fc1"]
    [broken] = engine.unprunable
    assert broken.name == "conv" and broken.reason.startswith("pruning its channels breaks the model (RuntimeError")
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.5))
    assert pruned.model.fc1.out_features == 8 and pruned.model.conv.out_channels == 8


def test_a_model_that_cannot_run_is_refused_in_one_line_naming_the_layer():
    class Head(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(x.shape[0], 999)  # built for another input size

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Head(), nn.Linear(999, 10))
    refused = r"cannot run the model on a \(3, 16, 16\) input in 1: RuntimeError"
    with pytest.raises(UnsupportedModelError, match=refused) as info:
        PruningEngine(model, SHAPE)
    assert "\n" not in str(info.value)


def test_searches_price_the_widths_the_engine_prunes():
    """Widths a search or an environment chooses (``group_kept``, ``group_widths``) are multiples of the slices, and
    the layer-wise costs of those widths are the pruned model's (a grouped kernel reads the inputs of its slice)."""
    torch.manual_seed(0)
    engine = PruningEngine(GroupedNet().eval(), SHAPE)
    graph = engine.graph
    assert MacsCost().total(graph) == graph.total_macs
    for group in engine.groups:
        widths = group_widths(group, 1, 0.9)
        assert all(w % group.channel_groups == 0 for w in widths) and widths[-1] == group.channels
    plan = PruningPlan.uniform(engine.group_names, 0.4)
    kept = {g.name: group_kept(g, 0.4, plan.round_to) for g in engine.groups}
    pruned = engine.apply(plan)
    assert kept == {name: len(channels) for name, channels in pruned.kept_channels.items()}
    assert MacsCost().total(graph, kept) == count_cost(pruned.model, SHAPE).macs
    weights = sum(m.weight.numel() for m in pruned.model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert ParamsCost().total(graph, kept) == weights


def test_channels_torch_pruning_follows_without_end_stay_dense_and_are_listed(monkeypatch):
    """Torch-Pruning 1.6 follows some graphs without end (timm's ReXNet: an in-place addition into a slice of wider
    channels): a group that reaches one layer more often than the graph's limit is left dense and listed, the rest
    is pruned. Shown on Swin-T, whose third stage reaches a layer 11 times, with a limit of 8."""
    monkeypatch.setattr(graph_module._DependencyGraph, "group_limit", 8)
    graph = ModelGraph(build_model("tv:swin_t"), (3, 28, 28))
    reasons = {u.name: u.reason for u in graph.unprunable}
    runaway = {n for n, r in reasons.items() if r.startswith("Torch-Pruning's search for the channels coupled")}
    assert "features.4.reduction" in runaway and all(
        "reached" in reasons[n] and " 8 times)" in reasons[n] for n in runaway
    )
    assert runaway.isdisjoint(graph.out_group) and len(graph.groups) >= 12
    monkeypatch.setattr(graph_module._DependencyGraph, "group_limit", 64)
    assert not any(
        "Torch-Pruning's search" in u.reason for u in ModelGraph(build_model("tv:swin_t"), (3, 28, 28)).unprunable
    )
