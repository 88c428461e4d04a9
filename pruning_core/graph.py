"""The model's prunable groups, found with Torch-Pruning's dependency graph, and their layer features.

A *group* is a set of channels that must be removed together: the output channels of a convolution, its BatchNorm
and every consumer's input channels; channels joined by a residual addition or a concatenation form ONE group, and a
depthwise convolution follows the group of its producer. Each group gets one pruning decision. A group is named
after its earliest-executed producer layer, a name that stays stable for a model architecture.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from pruning_core.errors import UnsupportedModelError
from pruning_core.metrics import LayerRecord, trace_layers


class LayerType(enum.IntEnum):
    """Kind of a group's root layer, as an observation feature."""

    CONV = 0
    DEPTHWISE_CONV = 1
    LINEAR = 2


@dataclass(frozen=True)
class PrunableGroup:
    """One pruning decision: a set of coupled channels and the features an environment sees of it.

    Attributes:
        name: Stable name, the group's earliest-executed producer layer.
        index: Position in forward order.
        layer_type: Kind of the root layer.
        channels: Number of channels in the group (the root's output channels).
        in_channels: Input channels of the root layer.
        kernel: Kernel size of the root layer (1 for linear).
        stride: Stride of the root layer.
        input_hw: Spatial size of the root layer's input.
        macs: MACs (batch 1) of every conv/linear layer whose input or output channels belong to the group.
        params: Parameters of those layers.
        producers: Conv/linear layers whose output channels are the group's channels.
        consumers: Conv/linear layers whose input channels are the group's channels.
        block: Name of the skippable residual block that holds the root layer, or None.
    """

    name: str
    index: int
    layer_type: LayerType
    channels: int
    in_channels: int
    kernel: int
    stride: int
    input_hw: tuple[int, int]
    macs: int
    params: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    block: str | None


# A residual block is skippable when its shortcut is an identity: removing it leaves the input unchanged
# (BlockDrop, CVPR 2018). One predicate per block class; unknown classes are never skipped.
def _zoo_predicates() -> dict[type[nn.Module], Callable[[nn.Module], bool]]:
    from torchvision.models import mobilenetv2 as tv_mbv2
    from torchvision.models import mobilenetv3 as tv_mbv3
    from torchvision.models import resnet as tv_resnet

    from pruning_core.models import BasicBlock, InvertedResidual

    return {
        BasicBlock: lambda m: isinstance(m.shortcut, nn.Identity),
        InvertedResidual: lambda m: bool(m.use_shortcut),
        tv_resnet.BasicBlock: lambda m: m.downsample is None,
        tv_resnet.Bottleneck: lambda m: m.downsample is None,
        tv_mbv2.InvertedResidual: lambda m: bool(m.use_res_connect),
        tv_mbv3.InvertedResidual: lambda m: bool(m.use_res_connect),
    }


def skippable_blocks(model: nn.Module) -> list[str]:
    """Names of residual blocks with an identity shortcut, in module order.

    >>> from pruning_core.models import build_model
    >>> skippable_blocks(build_model("resnet20"))[:3]
    ['layer1.0', 'layer1.1', 'layer1.2']
    """
    predicates = _zoo_predicates()
    return [
        name
        for name, module in model.named_modules()
        if type(module) in predicates and predicates[type(module)](module)
    ]


def classifier_name(layers: dict[str, LayerRecord]) -> str:
    """The last conv/linear layer executed: its outputs are the classes and are never pruned."""
    return max(layers.values(), key=lambda r: r.order).name


class ModelGraph:
    """The dependency graph of a model and its prunable groups in forward order.

    Args:
        model: The model (not modified).
        input_shape: ``(C, H, W)`` of one input.
        ignored: Names of layers whose output channels must not be pruned (the classifier always is).

    Raises:
        UnsupportedModelError: The model has no prunable group or cannot be traced.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], *, ignored: Iterable[str] = ()) -> None:
        self.model = model
        self.input_shape = tuple(input_shape)
        self.layers = trace_layers(model, self.input_shape)
        if not self.layers:
            raise UnsupportedModelError("expected a model with conv or linear layers; found none")
        self.classifier = classifier_name(self.layers)
        self.ignored = {self.classifier, *ignored}
        self.dependency_graph = build_dependency_graph(model, self.input_shape)
        self.names = {module: name for name, module in model.named_modules()}
        self.blocks = skippable_blocks(model)
        self.groups = self._enumerate_groups()
        if not self.groups:
            raise UnsupportedModelError("expected at least one prunable channel group; found none")
        self.out_group, self.in_group = self._layer_groups()
        self.total_macs = sum(r.macs for r in self.layers.values())
        self.total_params = sum(p.numel() for p in model.parameters())

    def _enumerate_groups(self) -> list[PrunableGroup]:
        modules = dict(self.model.named_modules())
        ignored_modules = [modules[n] for n in self.ignored]
        found = []
        for group in self.dependency_graph.get_all_groups(
            ignored_layers=ignored_modules, root_module_types=[nn.Conv2d, nn.Linear]
        ):
            producers, consumers = [], []
            for dep, _ in group:
                name = self.names.get(dep.target.module)
                if name not in self.layers:
                    continue
                if self.dependency_graph.is_out_channel_pruning_fn(dep.handler):
                    producers.append(name)
                else:
                    consumers.append(name)
            producers = sorted(set(producers), key=lambda n: self.layers[n].order)
            consumers = sorted(set(consumers) - set(producers), key=lambda n: self.layers[n].order)
            # A depthwise conv's output pruning rides on its producer: the producer names the group.
            primary = [n for n in producers if not _is_depthwise(self.layers[n])] or producers
            if not primary:
                continue
            found.append((primary[0], producers, consumers))
        found.sort(key=lambda item: self.layers[item[0]].order)
        groups = []
        for index, (root, producers, consumers) in enumerate(found):
            record = self.layers[root]
            members = {*producers, *consumers}
            if isinstance(modules[root], nn.Linear):
                layer_type = LayerType.LINEAR
            elif any(_is_depthwise(self.layers[n]) for n in producers):
                layer_type = LayerType.DEPTHWISE_CONV
            else:
                layer_type = LayerType.CONV
            groups.append(
                PrunableGroup(
                    name=root,
                    index=index,
                    layer_type=layer_type,
                    channels=record.out_channels,
                    in_channels=record.in_channels,
                    kernel=record.kernel,
                    stride=record.stride,
                    input_hw=record.input_hw,
                    macs=sum(self.layers[n].macs for n in members),
                    params=sum(self.layers[n].params for n in members),
                    producers=tuple(producers),
                    consumers=tuple(consumers),
                    block=next((b for b in self.blocks if root.startswith(b + ".")), None),
                )
            )
        return groups

    def _layer_groups(self) -> tuple[dict[str, str], dict[str, str]]:
        """For each conv/linear layer, the group that sets its output channels and the one that sets its inputs."""
        out_group: dict[str, str] = {}
        in_group: dict[str, str] = {}
        for group in self.groups:
            for layer in group.producers:
                out_group[layer] = group.name
                if _is_depthwise(self.layers[layer]):
                    in_group[layer] = group.name  # a depthwise conv's inputs are its outputs' channels
            for layer in group.consumers:
                in_group[layer] = group.name
        return out_group, in_group

    def layer_channels(
        self, kept: dict[str, int] | None = None, removed_blocks: Iterable[str] = ()
    ) -> dict[str, tuple[int, int]]:
        """``(in_channels, out_channels)`` of every conv/linear layer of a variant, in forward order.

        Args:
            kept: Channels kept per group (missing groups keep all).
            removed_blocks: Residual blocks removed from the variant: their layers are left out.

        >>> from pruning_core.models import build_model
        >>> g = ModelGraph(build_model("resnet20"), (3, 32, 32))
        >>> g.layer_channels({"conv1": 8, "layer1.0.conv1": 4})["layer1.0.conv2"]
        (4, 8)
        """
        kept = kept or {}
        removed = tuple(b + "." for b in removed_blocks)
        widths = {g.name: kept.get(g.name, g.channels) for g in self.groups}
        channels = {}
        for name, record in sorted(self.layers.items(), key=lambda item: item[1].order):
            if name.startswith(removed):
                continue
            c_in = widths[self.in_group[name]] if name in self.in_group else record.in_channels
            c_out = widths[self.out_group[name]] if name in self.out_group else record.out_channels
            channels[name] = (c_in, c_out)
        return channels

    def group(self, name: str) -> PrunableGroup:
        """The group called ``name``."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def tp_group(self, name: str, idxs: list[int] | None = None) -> Any:
        """Torch-Pruning's group object rooted at ``name`` (all channels when ``idxs`` is None)."""
        module = self.model.get_submodule(name)
        pruner = self.dependency_graph.get_pruner_of_module(module)
        if idxs is None:
            idxs = list(range(pruner.get_out_channels(module)))
        return self.dependency_graph.get_pruning_group(module, pruner.prune_out_channels, idxs)


def _is_depthwise(record: LayerRecord) -> bool:
    return record.groups > 1 and record.groups == record.in_channels == record.out_channels


def build_dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` for a batch-1 input of ``input_shape``."""
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    except Exception as exc:  # tracing failures come in many types; say which model and why
        raise UnsupportedModelError(f"cannot trace the model's channel dependencies: {exc}") from exc
    finally:
        model.train(was_training)
