"""A user's own model (``py:<file>:<function>``): built by running the file, pruned, saved, and reloaded only when
the user names the code again (issue 33)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruning_core.checkpoint import load_checkpoint, save_checkpoint
from pruning_core.engine import PruningEngine
from pruning_core.errors import CheckpointError, UnsupportedModelError
from pruning_core.graph import ModelGraph
from pruning_core.metrics import MacsCost, ParamsCost, count_cost
from pruning_core.models import build_model, user_model_spec
from pruning_core.plan import PruningPlan
from pruning_core.serialize import load_pruned, save_pruned

USER_MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    """Stem, a 3x3 conv with ``groups`` groups (32: depthwise), a pointwise head, a classifier."""

    def __init__(self, num_classes, in_channels, groups):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.mid = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.head(self.mid(self.stem(x))).mean((2, 3)))


def grouped(num_classes=10, in_channels=3):
    return Net(num_classes, in_channels, groups=4)


def depthwise(num_classes=10, in_channels=3):
    return Net(num_classes, in_channels, groups=32)


def sized(num_classes, in_channels, image_size):
    """A model whose weights fit one input size only (as ViT's positional embeddings)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))


def bare():
    return Net(5, 1, groups=1)


def not_a_model(num_classes):
    return num_classes


def broken(**kwargs):
    raise ValueError("no such layer")
'''
SHAPE = (1, 8, 8)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODEL)
    return path


def test_a_user_model_is_built_with_the_keywords_its_function_takes(model_file):
    spec = user_model_spec(f"{model_file}:grouped")
    assert spec == f"py:{model_file.resolve()}:grouped"
    model = build_model(spec, num_classes=7, in_channels=1).eval()
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 7)
    assert model.mid[0].groups == 4
    assert build_model(f"py:{model_file}:bare", num_classes=7).fc.out_features == 5  # takes none: its own choice
    assert build_model(f"py:{model_file}:sized", in_channels=1, image_size=8)[1].in_features == 64


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nowhere.py:grouped", "model file .*nowhere.py does not exist"),
        ("{file}:missing", "has no function 'missing'"),
        ("{file}:not_a_model", r"expected not_a_model\(\) in .* to return a torch.nn.Module; got int"),
        ("{file}:broken", r"broken\(\) in .* failed: ValueError: no such layer \(line \d+\)"),
        ("{file}", "expected a model file as path/to/file.py:function"),
        ("{file}:2fast", "expected a model file as path/to/file.py:function"),
    ],
)
def test_a_bad_user_model_is_refused_in_one_line(model_file, spec, message):
    with pytest.raises(UnsupportedModelError, match=message) as info:
        build_model(user_model_spec(spec.format(file=model_file)))
    assert "\n" not in str(info.value)


def test_a_file_that_fails_to_run_names_its_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import torch\n\nx = 1 / 0\n")
    with pytest.raises(
        UnsupportedModelError, match=r"running model file .*bad.py failed: ZeroDivisionError: .*\(line 3\)"
    ):
        build_model(f"py:{path}:build")


@pytest.mark.parametrize(("function", "slices"), [("grouped", 4), ("depthwise", 1)])
def test_a_user_model_prunes_saves_and_reloads_only_when_its_code_is_named(model_file, tmp_path, function, slices):
    spec = user_model_spec(f"{model_file}:{function}")
    torch.manual_seed(0)
    engine = PruningEngine(build_model(spec, in_channels=1), SHAPE)
    assert {g.name: g.channel_groups for g in engine.groups}["stem.0"] == slices
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.5))
    assert all(len(kept) % slices == 0 for kept in pruned.kept_channels.values())
    assert pruned.macs_ratio < 0.6
    folder = save_pruned(tmp_path / "pruned", pruned, base_model=spec, classes=[str(i) for i in range(10)])

    with pytest.raises(
        CheckpointError, match=r"holds a model built by user code .* runs only when named: pass --model-py"
    ):
        load_pruned(folder)
    other = user_model_spec(f"{model_file}:bare")
    with pytest.raises(CheckpointError, match=f"--model-py names {other.removeprefix('py:')}"):
        load_pruned(folder, run_code=other)
    loaded = load_pruned(folder, run_code=spec)
    assert loaded.structure["base_model"] == spec
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), pruned.model(x))


def test_a_checkpoint_of_user_code_builds_only_when_named_and_at_its_input_size(model_file, tmp_path):
    spec = user_model_spec(f"{model_file}:sized")
    model = build_model(spec, num_classes=3, in_channels=1, image_size=8)
    meta = {"model": spec, "classes": ["a", "b", "c"], "in_channels": 1, "input_shape": [1, 8, 8]}
    save_checkpoint(tmp_path / "m.pt", model, meta)
    checkpoint = load_checkpoint(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="the checkpoint holds a model built by user code"):
        checkpoint.build()
    # the weights fit an 8x8 input only: build passes the recorded input size
    assert checkpoint.build(run_code=spec)[1].in_features == 64


@pytest.mark.parametrize("function", ["grouped", "depthwise"])
def test_layerwise_costs_count_grouped_and_depthwise_kernels(model_file, function):
    """MACs and weights a search predicts from widths equal those of the model the engine prunes (a grouped kernel
    reads the inputs of its slice only)."""
    torch.manual_seed(0)
    engine = PruningEngine(build_model(f"py:{model_file}:{function}", in_channels=1), SHAPE)
    graph: ModelGraph = engine.graph
    assert MacsCost().total(graph) == graph.total_macs
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.5))
    kept = {name: len(channels) for name, channels in pruned.kept_channels.items()}
    actual = count_cost(pruned.model, SHAPE)
    assert MacsCost().total(graph, kept) == actual.macs
    weights = sum(m.weight.numel() for m in pruned.model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
    assert ParamsCost().total(graph, kept) == weights
