from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from pruning_core.checkpoint import load_checkpoint, save_checkpoint
from pruning_core.errors import UnsupportedModelError
from pruning_core.metrics import count_cost
from pruning_core.models import MODELS, build_model, built_for_one_size, deepen_cifar_resnet


@pytest.mark.parametrize("name", [*MODELS, "tv:resnet18", "tv:mobilenet_v3_small"])
def test_every_model_builds_and_runs(name):
    in_channels, size = (1, 8) if name == "small_cnn" else (3, 32)
    model = build_model(name, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)
    assert count_cost(model, (in_channels, size, size)).macs > 0


def test_resnet_depths_match_the_paper():
    convs = {
        n: sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in build_model(n).modules())
        for n in ("resnet20", "resnet56")
    }
    assert convs == {"resnet20": 19, "resnet56": 55}  # 6n+1 3x3 convs + the classifier = 6n+2 layers


@pytest.mark.parametrize(
    ("name", "message"),
    [("resnet7", "model must be one of .*; got 'resnet7'"), ("tv:nonsense", "torchvision classification model")],
)
def test_unknown_models_are_refused(name, message):
    with pytest.raises(UnsupportedModelError, match=message):
        build_model(name)


def test_deepened_resnet_computes_the_shallow_function():
    torch.manual_seed(0)
    shallow = build_model("resnet20")
    for m in shallow.modules():  # a trained-looking model: non-trivial BN statistics and residual branches
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.running_var, 0.5, 2.0)
            torch.nn.init.normal_(m.running_mean, 0.0, 0.1)
    deep = deepen_cifar_resnet(shallow.eval(), build_model("resnet56")).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deep(x), shallow(x), atol=1e-5)
    with pytest.raises(UnsupportedModelError, match="expected a deeper ResNet"):
        deepen_cifar_resnet(build_model("resnet56"), build_model("resnet20"))


HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install 'prunegym[timm]')")


@needs_timm
@pytest.mark.parametrize("name", ["timm:resnet18", "timm:mobilenetv3_small_100", "timm:regnetx_002"])
def test_timm_models_build_without_weights_for_any_classes_and_channels(name):
    model = build_model(name, num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@needs_timm
def test_an_unknown_timm_model_is_refused_in_one_line():
    with pytest.raises(UnsupportedModelError, match=r"expected a timm model name .*; got 'no_such_net'"):
        build_model("timm:no_such_net")


def test_timm_models_without_timm_are_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(UnsupportedModelError, match=r"timm:resnet18 needs the timm package, which is not installed"):
        build_model("timm:resnet18")


@needs_timm
def test_a_checkpoint_of_a_model_built_for_one_size_rebuilds_at_its_size(tmp_path):
    """A ViT's positional embeddings fit one input size: the checkpoint records it and build passes it."""
    name = "timm:vit_tiny_patch16_224"
    assert built_for_one_size(name) and not built_for_one_size("timm:resnet18")
    model = build_model(name, num_classes=3, image_size=32)
    meta = {"model": name, "classes": ["a", "b", "c"], "in_channels": 3, "input_shape": [3, 32, 32]}
    save_checkpoint(tmp_path / "vit.pt", model, meta)
    rebuilt = load_checkpoint(tmp_path / "vit.pt").build()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))
