from __future__ import annotations

import pytest
import torch

from pruning_core.errors import UnsupportedModelError
from pruning_core.metrics import count_cost
from pruning_core.models import MODELS, build_model, deepen_cifar_resnet


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
