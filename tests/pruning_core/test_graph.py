"""The dependency graph: which channels are coupled, what each group holds, and the widths a plan leaves."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from pruning_core.engine import PruningEngine
from pruning_core.errors import UnsupportedModelError
from pruning_core.graph import LayerType, ModelGraph, UnprunableLayer, skippable_blocks
from pruning_core.metrics import MacsCost
from pruning_core.models import build_model
from pruning_core.plan import PruningPlan

SMALL_SHAPE = (1, 8, 8)


class Concat(nn.Module):
    """Two branches concatenated along the channels, then one conv that reads both (an Inception/DenseNet joint)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.joint = nn.Conv2d(10, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.joint(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


class Flattened(nn.Module):
    """A feature map flattened into a linear layer (VGG's and AlexNet's heads): each channel feeds 4x4 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.hidden = nn.Linear(4 * 16, 12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 4), 1)
        return self.fc(self.hidden(x))


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", in_channels=1).eval()


@functools.cache
def _graph(name: str) -> ModelGraph:
    """A graph per model, built once (tests that change a graph build their own)."""
    if name == "small_cnn":
        return ModelGraph(_small_cnn(), SMALL_SHAPE)
    torch.manual_seed(0)
    return ModelGraph(build_model(name), (3, 32, 32))


def _widths(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    return module.in_features, module.out_features


def test_small_cnn_groups_are_its_coupled_channel_sets():
    graph = _graph("small_cnn")
    layout = {g.name: (g.index, g.channels, g.producers, g.consumers, g.block) for g in graph.groups}
    assert layout == {
        # the stem's channels and block1's residual stream are one set: the stem, block1.conv2 and both readers
        "stem.0": (0, 64, ("stem.0", "block1.conv2"), ("block1.conv1", "down.0"), None),
        "block1.conv1": (1, 64, ("block1.conv1",), ("block1.conv2",), "block1"),
        # the classifier reads the last residual stream: its inputs follow that group, its outputs are no group
        "down.0": (2, 128, ("down.0", "block2.conv2"), ("block2.conv1", "fc"), None),
        "block2.conv1": (3, 128, ("block2.conv1",), ("block2.conv2",), "block2"),
    }
    assert graph.classifier == "fc" and "fc" not in graph.out_group and graph.in_group["fc"] == "down.0"
    assert graph.unprunable == [] and graph.blocks == ["block1", "block2"]
    features = {g.name: (g.layer_type, g.in_channels, g.kernel, g.stride, g.input_hw) for g in graph.groups}
    assert features["stem.0"] == (LayerType.CONV, 1, 3, 1, (8, 8))
    assert features["down.0"] == (LayerType.CONV, 64, 3, 2, (8, 8))
    assert features["block2.conv1"] == (LayerType.CONV, 128, 3, 1, (4, 4))


def test_group_costs_add_up_the_layers_that_touch_its_channels():
    graph = _graph("small_cnn")

    def conv(c_in: int, c_out: int, hw: int) -> int:  # MACs of a 3x3 conv at batch 1
        return c_in * 9 * c_out * hw * hw

    macs = {g.name: g.macs for g in graph.groups}
    assert macs == {
        "stem.0": conv(1, 64, 8) + conv(64, 64, 8) + conv(64, 64, 8) + conv(64, 128, 4),
        "block1.conv1": 2 * conv(64, 64, 8),
        "down.0": conv(64, 128, 4) + 2 * conv(128, 128, 4) + 128 * 10,
        "block2.conv1": 2 * conv(128, 128, 4),
    }
    params = dict(graph.model.named_parameters())
    for group in graph.groups:
        members = {*group.producers, *group.consumers}
        expected = sum(p.numel() for n, p in params.items() if n.rsplit(".", 1)[0] in members)
        assert group.params == expected
    assert graph.total_params == sum(p.numel() for p in graph.model.parameters())


def test_pruning_a_group_through_torch_pruning_cuts_every_coupled_layer():
    graph = ModelGraph(_small_cnn(), SMALL_SHAPE)  # its model is pruned in place below
    graph.tp_group("stem.0", [0, 5, 7]).prune()
    model = graph.model
    assert model.stem[0].out_channels == model.block1.conv2.out_channels == 61
    assert model.stem[1].num_features == model.block1.bn2.num_features == 61
    assert model.block1.conv1.in_channels == model.down[0].in_channels == 61
    assert model.block1.conv1.out_channels == 64 and model.down[0].out_channels == 128  # other groups untouched
    with torch.no_grad():
        assert model(torch.randn(2, *SMALL_SHAPE)).shape == (2, 10)
    predicted = _graph("small_cnn").layer_channels({"stem.0": 61})
    assert predicted == {name: _widths(model.get_submodule(name)) for name in predicted}


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (_small_cnn, SMALL_SHAPE),
        (lambda: build_model("resnet20"), (3, 32, 32)),
        (lambda: build_model("mobilenetv2"), (3, 32, 32)),
        (Concat, (3, 8, 8)),
        (Flattened, (3, 8, 8)),
    ],
    ids=["small_cnn", "resnet20", "mobilenetv2", "concat", "flattened"],
)
def test_predicted_widths_and_macs_match_the_pruned_model(build, shape):
    torch.manual_seed(0)
    engine = PruningEngine(build(), shape)
    sparsity = {g.name: (0.25, 0.5, 0.75)[g.index % 3] for g in engine.groups}
    pruned = engine.apply(PruningPlan(sparsity=sparsity))
    kept = {name: len(channels) for name, channels in pruned.kept_channels.items()}
    predicted = engine.graph.layer_channels(kept)
    assert predicted == {name: _widths(pruned.model.get_submodule(name)) for name in predicted}
    assert MacsCost().total(engine.graph, kept) == pruned.cost.macs


def test_concatenated_branches_are_separate_groups_that_share_their_reader():
    graph = ModelGraph(Concat(), (3, 8, 8))
    assert [(g.name, g.channels, g.consumers) for g in graph.groups] == [
        ("a", 4, ("joint",)),
        ("b", 6, ("joint",)),
        ("joint", 8, ("fc",)),
    ]
    assert graph.layer_channels({"a": 1})["joint"] == (7, 8)
    assert graph.layer_channels({"a": 2, "b": 3})["joint"] == (5, 8)


def test_removed_blocks_leave_out_their_layers():
    graph = _graph("small_cnn")
    channels = graph.layer_channels({"stem.0": 32, "block1.conv1": 16}, removed_blocks=["block1"])
    assert list(channels) == ["stem.0", "down.0", "block2.conv1", "block2.conv2", "fc"]
    assert channels["stem.0"] == (1, 32) and channels["down.0"] == (32, 128)
    engine = PruningEngine(_small_cnn(), SMALL_SHAPE)
    pruned = engine.apply(PruningPlan(removed_blocks=("block1",)))
    assert MacsCost().total(graph, removed_blocks=["block1"]) == pruned.cost.macs


def test_depthwise_convs_follow_the_group_of_their_producer():
    graph = _graph("mobilenetv2")
    depthwise = [n for n, r in graph.layers.items() if r.groups > 1 and r.groups == r.in_channels == r.out_channels]
    assert len(depthwise) == 17  # one per inverted residual block
    names = {g.name for g in graph.groups}
    assert not names & set(depthwise)  # never the name of a group
    for layer in depthwise:
        group = graph.group(graph.out_group[layer])
        assert graph.in_group[layer] == group.name and layer in group.producers
        assert group.layer_type is LayerType.DEPTHWISE_CONV
        assert graph.layer_channels({group.name: 5})[layer] == (5, 5)
    assert sum(g.layer_type is LayerType.DEPTHWISE_CONV for g in graph.groups) == len(depthwise)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("small_cnn", ["block1", "block2"]),
        # the first block of stages 2 and 3 has a projection shortcut: removing it would change the shape
        ("resnet20", ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]),
        ("tv:resnet18", ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]),
    ],
)
def test_only_blocks_with_an_identity_shortcut_are_skippable(name, expected):
    model = build_model(name, in_channels=1) if name == "small_cnn" else build_model(name)
    assert skippable_blocks(model) == expected
    assert skippable_blocks(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())) == []


def test_ignored_layers_keep_their_channels():
    graph = ModelGraph(_small_cnn(), SMALL_SHAPE, ignored=["block1.conv1"])
    assert [g.name for g in graph.groups] == ["stem.0", "down.0", "block2.conv1"]
    assert graph.ignored == {"fc", "block1.conv1"}
    assert graph.layer_channels({"stem.0": 8})["block1.conv1"] == (8, 64)


def test_leaving_groups_dense_renumbers_the_rest_and_says_why():
    graph = ModelGraph(_small_cnn(), SMALL_SHAPE)
    graph.leave_dense({})
    assert len(graph.groups) == 4
    graph.leave_dense({"block1.conv1": "kept for the test"})
    assert [(g.name, g.index) for g in graph.groups] == [("stem.0", 0), ("down.0", 1), ("block2.conv1", 2)]
    assert graph.unprunable == [UnprunableLayer("block1.conv1", "kept for the test")]
    assert "block1.conv1" not in graph.out_group and "block1.conv2" not in graph.in_group
    assert graph.layer_channels({"stem.0": 8})["block1.conv1"] == (8, 64)
    with pytest.raises(UnsupportedModelError, match=r"expected at least one prunable channel group; stem\.0: gone"):
        graph.leave_dense({"stem.0": "gone", "down.0": "gone", "block2.conv1": "gone"})


def test_models_without_prunable_channels_are_refused():
    with pytest.raises(UnsupportedModelError, match="expected a model with conv or linear layers; found none"):
        ModelGraph(nn.Sequential(nn.Flatten()), SMALL_SHAPE)
    with pytest.raises(UnsupportedModelError, match="expected at least one prunable channel group; found none"):
        ModelGraph(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), SMALL_SHAPE)  # only the classifier
    with pytest.raises(KeyError, match="layer9"):
        _graph("small_cnn").group("layer9")


def test_building_the_graph_leaves_the_model_as_it_was():
    model = _small_cnn().train()
    before = copy.deepcopy(model.state_dict())
    graph = ModelGraph(model, SMALL_SHAPE)
    assert model.training and graph.model is model
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too: traced in eval mode
    assert all(p.grad is None for p in model.parameters())
