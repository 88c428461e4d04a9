"""Model size figures: multiply-accumulates and parameters, from one traced forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pruning_core.graph import ModelGraph


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


class LayerwiseCost:
    """A cost (latency, MACs, parameters) that is a function of the sum of per-layer costs.

    Subclasses give ``layer_cost``; ``combine`` maps the raw sum to the final figure (a lookup table's calibration,
    for instance). Because only the layers touching a group change when that group's width changes, a search can
    re-cost one decision without re-costing the model.

    Attributes:
        granule: Searches keep pruned widths at multiples of this (a lookup table's profiled channel step, where the
            hardware's blocked kernels make other widths no faster); 1 for any width.
        is_latency: Whether the cost stands for latency on a device, so that a measurement of that device can check
            it (a MACs or parameter budget is not judged by latency).
    """

    granule: int = 1
    is_latency: bool = False

    def layer_cost(self, graph: ModelGraph, name: str, c_in: int, c_out: int) -> float:
        raise NotImplementedError

    def combine(self, raw_sum: float) -> float:
        return raw_sum

    def layer_costs(
        self, graph: ModelGraph, kept: Mapping[str, int] | None = None, removed_blocks: Iterable[str] = ()
    ) -> dict[str, float]:
        """Raw cost of every remaining conv/linear layer of a variant."""
        channels = graph.layer_channels(dict(kept or {}), removed_blocks)
        return {name: self.layer_cost(graph, name, c_in, c_out) for name, (c_in, c_out) in channels.items()}

    def total(
        self, graph: ModelGraph, kept: Mapping[str, int] | None = None, removed_blocks: Iterable[str] = ()
    ) -> float:
        """The cost of a variant."""
        return self.combine(sum(self.layer_costs(graph, kept, removed_blocks).values()))

    def expected(self, graph: ModelGraph, kept: Mapping[str, int], exec_rate: Mapping[str, float]) -> float:
        """The cost of a gated variant: each layer inside a gated block weighted by the fraction of inputs that run
        the block (``exec_rate``, by block name; layers outside every gated block count in full).

        >>> from pruning_core.graph import ModelGraph
        >>> from pruning_core.models import build_model
        >>> graph = ModelGraph(build_model("resnet20"), (3, 32, 32))
        >>> cost = MacsCost()
        >>> cost.expected(graph, {}, {"layer1.0": 1.0}) == cost.total(graph)
        True
        >>> cost.expected(graph, {}, {"layer1.0": 0.0}) == cost.total(graph, removed_blocks=["layer1.0"])
        True
        """
        prefixes = [(block + ".", rate) for block, rate in exec_rate.items()]
        weighted = 0.0
        for name, layer in self.layer_costs(graph, kept).items():
            weighted += layer * next((rate for prefix, rate in prefixes if name.startswith(prefix)), 1.0)
        return self.combine(weighted)


def _per_output(graph: ModelGraph, name: str, c_in: int) -> int:
    """Weights (MACs per output value) of one output channel of a layer with ``c_in`` inputs: a depthwise kernel
    reads one channel, a grouped one the ``c_in / groups`` of its slice (pruning keeps the groups)."""
    record = graph.layers[name]  # a linear layer is recorded as a 1x1 kernel, which gives c_in
    depthwise = record.groups > 1 and record.groups == record.in_channels
    return record.kernel * record.kernel * (1 if depthwise else max(1, c_in // record.groups))


class MacsCost(LayerwiseCost):
    """MACs at batch 1 of the conv and linear layers.

    >>> from pruning_core.graph import ModelGraph
    >>> from pruning_core.models import build_model
    >>> graph = ModelGraph(build_model("resnet20"), (3, 32, 32))
    >>> MacsCost().total(graph) == graph.total_macs
    True
    """

    def layer_cost(self, graph: ModelGraph, name: str, c_in: int, c_out: int) -> float:
        record = graph.layers[name]
        return float(_per_output(graph, name, c_in) * c_out * record.output_hw[0] * record.output_hw[1])


class ParamsCost(LayerwiseCost):
    """Weights of the conv and linear layers (BatchNorm and biases left out)."""

    def layer_cost(self, graph: ModelGraph, name: str, c_in: int, c_out: int) -> float:
        return float(_per_output(graph, name, c_in) * c_out)
