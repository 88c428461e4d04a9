"""Trained gates carried from the dense model to its pruned variants."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pruning_core.dynamic.gates import add_gates, gated_blocks
from pruning_core.graph import ModelGraph


@dataclass(frozen=True)
class TrainedGates:
    """Gate weights trained on the dense model, ready to be fitted to any pruned variant of it.

    Attributes:
        weights: Per block, the gate's linear weight ``(1, C)`` and bias ``(1,)`` over the dense input channels.
        input_group: Per block, the group whose channels are the block's input (None: not prunable).
    """

    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    input_group: dict[str, str | None]

    @classmethod
    def from_model(cls, gated: nn.Module, graph: ModelGraph) -> TrainedGates:
        weights, groups = {}, {}
        for name, block in gated_blocks(gated):
            weights[name] = (block.gate.fc.weight.detach().clone(), block.gate.fc.bias.detach().clone())
            first = min((n for n in graph.layers if n.startswith(name + ".")), key=lambda n: graph.layers[n].order)
            groups[name] = graph.in_group.get(first)
        return cls(weights, groups)

    def fit(self, model: nn.Module, kept_channels: dict[str, list[int]], thresholds: dict[str, float]) -> nn.Module:
        """A gated copy of a pruned model: each block's gate keeps the weights of the block's kept input channels."""
        blocks = [b for b in thresholds if b in self.weights]
        gated = add_gates(model, [b for b in blocks if not isinstance(model.get_submodule(b), nn.Identity)])
        for name, block in gated_blocks(gated):
            weight, bias = self.weights[name]
            group = self.input_group[name]
            if group is not None:
                weight = weight[:, kept_channels[group]]
            with torch.no_grad():
                block.gate.fc.weight.copy_(weight)
                block.gate.fc.bias.copy_(bias)
            block.threshold = float(thresholds[name])
        return gated.eval()
