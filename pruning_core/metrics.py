"""Model size figures: multiply-accumulates and parameters, from one traced forward pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelCost:
    """MACs of one forward pass at batch 1 (conv and linear layers) and the number of parameters."""

    macs: int
    params: int


@dataclass(frozen=True)
class LayerRecord:
    """What one forward pass at batch 1 showed of a conv or linear layer."""

    name: str
    order: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    macs: int
    params: int


def trace_layers(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerRecord]:
    """Run one forward pass at batch 1 and record every conv and linear layer, in execution order."""
    records: dict[str, LayerRecord] = {}
    hooks = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if name in records:
                return
            x = inputs[0]
            params = sum(p.numel() for p in module.parameters(recurse=False))
            if isinstance(module, nn.Conv2d):
                out_hw = (int(output.shape[2]), int(output.shape[3]))
                kernel = int(module.kernel_size[0])
                macs = (module.in_channels // module.groups) * kernel * int(module.kernel_size[1])
                macs *= module.out_channels * out_hw[0] * out_hw[1]
                records[name] = LayerRecord(
                    name,
                    len(records),
                    module.in_channels,
                    module.out_channels,
                    kernel,
                    int(module.stride[0]),
                    module.groups,
                    (int(x.shape[2]), int(x.shape[3])),
                    out_hw,
                    macs,
                    params,
                )
            else:
                assert isinstance(module, nn.Linear)
                macs = module.in_features * module.out_features
                records[name] = LayerRecord(
                    name,
                    len(records),
                    module.in_features,
                    module.out_features,
                    1,
                    1,
                    1,
                    (1, 1),
                    (1, 1),
                    macs,
                    params,
                )

        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return records


def count_cost(model: nn.Module, input_shape: tuple[int, ...]) -> ModelCost:
    """MACs (batch 1) of the conv and linear layers, and all parameters.

    Args:
        model: The model; its train/eval mode is restored afterwards.
        input_shape: ``(C, H, W)`` of one input.

    >>> from pruning_core.models import build_model
    >>> count_cost(build_model("resnet20"), (3, 32, 32)).macs
    40813184
    """
    macs = sum(r.macs for r in trace_layers(model, input_shape).values())
    return ModelCost(macs=macs, params=sum(p.numel() for p in model.parameters()))
