"""Model size figures: multiply-accumulates and parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelCost:
    """MACs of one forward pass at batch 1 and the number of parameters."""

    macs: int
    params: int


def count_cost(model: nn.Module, input_shape: tuple[int, ...]) -> ModelCost:
    """Count MACs (batch 1) and parameters with Torch-Pruning's op counter.

    Args:
        model: The model; its train/eval mode is restored afterwards.
        input_shape: ``(C, H, W)`` of one input.
    """
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_shape)
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return ModelCost(macs=int(macs), params=int(params))
