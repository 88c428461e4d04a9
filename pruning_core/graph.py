"""The model's prunable groups, found with Torch-Pruning's dependency graph, and their layer features.

A *group* is a set of channels that must be removed together: the output channels of a convolution, its BatchNorm
and every consumer's input channels; channels joined by a residual addition or a concatenation form ONE group, and a
depthwise convolution follows the group of its producer. Each group gets one pruning decision. A group is named
after its earliest-executed producer layer, a name that stays stable for a model architecture.

Grouped convolutions (ResNeXt, RegNet) split their channels into equal slices that must stay equal: a group that
feeds or leaves one is pruned alike in every slice (``channel_groups``), as Torch-Pruning's own pruners do. A group
whose channels cannot be pruned consistently (they pass through a channel shuffle, or fill only part of a grouped
convolution's input) is left dense and listed in ``ModelGraph.unprunable`` with the reason.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

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
        channel_groups: Equal slices the channels are pruned alike in (the groups of the grouped convolutions the
            channels feed or leave; 1 for none): kept widths are multiples of it.
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
    channel_groups: int = 1


@dataclass(frozen=True)
class UnprunableLayer:
    """A layer whose output channels are left dense, and why.

    Attributes:
        name: The layer (the earliest-executed producer of the channels left dense).
        reason: Why its channels cannot be pruned.
    """

    name: str
    reason: str


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

    Attributes:
        groups: The prunable groups, in forward order.
        unprunable: Layers whose channels are left dense (no group), with the reason.
        out_group: For each conv/linear layer whose output channels belong to a group, that group.
        in_group: For each conv/linear layer whose input channels belong to a group, one such group.
        in_groups: For each such layer, every group its inputs belong to (several after a concatenation), with the
            inputs each channel of the group fills (1, or H*W where a feature map is flattened into a linear layer).

    Raises:
        UnsupportedModelError: The model has no prunable group or cannot be traced.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], *, ignored: Iterable[str] = ()) -> None:
        self.model = model
        self.input_shape = tuple(input_shape)
        running: list[str] = []
        try:
            with _track_modules(model, running):
                self.layers = trace_layers(model, self.input_shape)
        except Exception as exc:  # the model's own forward failed: a wrong input size, say
            where = f" in {running[-1]}" if running else ""
            raise UnsupportedModelError(
                f"cannot run the model on a {self.input_shape} input{where}: {one_line(exc)}"
            ) from exc
        if not self.layers:
            raise UnsupportedModelError("expected a model with conv or linear layers; found none")
        self.classifier = classifier_name(self.layers)
        self.ignored = {self.classifier, *ignored}
        self.dependency_graph = build_dependency_graph(model, self.input_shape)
        self.names = {module: name for name, module in model.named_modules()}
        self.blocks = skippable_blocks(model)
        self.unprunable: list[UnprunableLayer] = []
        self._input_share: dict[str, dict[str, int]] = {}  # group -> consumer -> inputs per channel of the group
        self.groups = self._enumerate_groups()
        if not self.groups:
            reasons = "; ".join(f"{u.name}: {u.reason}" for u in self.unprunable[:3])
            raise UnsupportedModelError(
                f"expected at least one prunable channel group; found none{' (' + reasons + ')' if reasons else ''}"
            )
        self.out_group, self.in_group, self.in_groups = self._layer_groups()
        self.total_macs = sum(r.macs for r in self.layers.values())
        self.total_params = sum(p.numel() for p in model.parameters())

    def _enumerate_groups(self) -> list[PrunableGroup]:
        modules = dict(self.model.named_modules())
        ignored_modules = [modules[n] for n in self.ignored]
        found = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Torch-Pruning's notes on its shape inference
            all_groups = list(
                self.dependency_graph.get_all_groups(
                    ignored_layers=ignored_modules, root_module_types=[nn.Conv2d, nn.Linear]
                )
            )
        for group in all_groups:
            slices = channel_groups(self.dependency_graph, group)
            producers, consumers = [], []
            inputs: dict[str, set[int]] = {}  # the input positions of each consumer that hold the group's channels
            for dep, idxs in group:
                name = self.names.get(dep.target.module)
                if name not in self.layers:
                    continue
                if self.dependency_graph.is_out_channel_pruning_fn(dep.handler):
                    producers.append(name)
                else:
                    consumers.append(name)
                    inputs.setdefault(name, set()).update(getattr(i, "idx", i) for i in idxs)
            producers = sorted(set(producers), key=lambda n: self.layers[n].order)
            consumers = sorted(set(consumers) - set(producers), key=lambda n: self.layers[n].order)
            # A depthwise conv's output pruning rides on its producer: the producer names the group.
            primary = [n for n in producers if not _is_depthwise(self.layers[n])] or producers
            if not primary:
                continue
            reason = dense_reason(self.dependency_graph, group)
            if reason is None and self.layers[primary[0]].out_channels % slices:
                reason = f"its {self.layers[primary[0]].out_channels} channels do not split into {slices} equal slices"
            if reason is not None:
                self.unprunable.append(UnprunableLayer(primary[0], reason))
                continue
            found.append((primary[0], producers, consumers, slices))
            channels = self.layers[primary[0]].out_channels
            self._input_share[primary[0]] = {n: max(1, len(inputs[n]) // channels) for n in consumers}
        for module, reason in getattr(self.dependency_graph, "runaway", {}).items():
            name = self.names.get(module)
            if name in self.layers:
                self.unprunable.append(UnprunableLayer(name, reason))
        found.sort(key=lambda item: self.layers[item[0]].order)
        self.unprunable.sort(key=lambda u: self.layers[u.name].order)
        groups = []
        for index, (root, producers, consumers, slices) in enumerate(found):
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
                    channel_groups=slices,
                )
            )
        return groups

    def leave_dense(self, reasons: dict[str, str]) -> None:
        """Take the named groups out of the prunable ones and list them as unprunable with their reasons.

        Raises:
            UnsupportedModelError: No prunable group is left.
        """
        if not reasons:
            return
        kept = [g for g in self.groups if g.name not in reasons]
        self.unprunable = sorted(
            [*self.unprunable, *(UnprunableLayer(name, reason) for name, reason in reasons.items())],
            key=lambda u: self.layers[u.name].order,
        )
        if not kept:
            first = self.unprunable[0]
            raise UnsupportedModelError(f"expected at least one prunable channel group; {first.name}: {first.reason}")
        self.groups = [dataclasses.replace(g, index=i) for i, g in enumerate(kept)]
        self.out_group, self.in_group, self.in_groups = self._layer_groups()

    def _layer_groups(self) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
        """For each conv/linear layer, the group that sets its output channels, one that sets its inputs, and all
        the groups its inputs hold with the inputs per channel of each."""
        out_group: dict[str, str] = {}
        in_group: dict[str, str] = {}
        in_groups: dict[str, dict[str, int]] = {}
        for group in self.groups:
            for layer in group.producers:
                out_group[layer] = group.name
                if _is_depthwise(self.layers[layer]):
                    in_group[layer] = group.name  # a depthwise conv's inputs are its outputs' channels
                    in_groups[layer] = {group.name: 1}
            for layer in group.consumers:
                in_group[layer] = group.name
                in_groups.setdefault(layer, {})[group.name] = self._input_share[group.name].get(layer, 1)
        self._group_channels = {g.name: g.channels for g in self.groups}
        return out_group, in_group, in_groups

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
        return {
            name: self.layer_width(name, widths)
            for name in sorted(self.layers, key=lambda n: self.layers[n].order)
            if not name.startswith(removed)
        }

    def layer_width(self, name: str, widths: Mapping[str, int]) -> tuple[int, int]:
        """``(in_channels, out_channels)`` of the conv/linear layer ``name`` when each group keeps ``widths[group]``
        channels (every group named).

        A layer that reads a concatenation loses the channels each of its groups loses; one that reads a flattened
        feature map loses H*W inputs per channel.
        """
        record = self.layers[name]
        c_in = record.in_channels - sum(
            share * (self._group_channels[group] - widths[group])
            for group, share in self.in_groups.get(name, {}).items()
        )
        c_out = widths[self.out_group[name]] if name in self.out_group else record.out_channels
        return c_in, c_out

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


def moves_channels(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Whether a reshape from ``before`` to ``after`` (batch first, channels second) splits the channel dimension
    of a feature map into two, or merges two into it: the two halves of a channel shuffle.

    >>> moves_channels((1, 48, 8, 8), (1, 2, 24, 8, 8)), moves_channels((1, 24, 2, 8, 8), (1, 48, 8, 8))
    (True, True)
    >>> moves_channels((1, 48, 8, 8), (1, 3072)), moves_channels((1, 48, 8, 8), (1, 48, 64))
    (False, False)
    """
    if len(after) == len(before) + 1 and len(before) >= 4:
        wide, narrow = after, before
    elif len(before) == len(after) + 1 and len(after) >= 4:
        wide, narrow = before, after
    else:
        return False
    return (
        wide[0] == narrow[0]
        and wide[1] > 1
        and wide[2] > 1
        and wide[1] * wide[2] == narrow[1]
        and tuple(wide[3:]) == tuple(narrow[2:])
    )


def channel_vector_view(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Whether a reshape turns a vector of per-channel values (a layer scale, a bias) into ``(1, C, 1, ...)`` that
    broadcasts over a feature map (timm's ConvNeXt): channel i stays channel i, so it is traced as an element-wise op.

    >>> channel_vector_view((40,), (1, 40, 1, 1)), channel_vector_view((1, 1, 40), (1, 40, 1, 1))
    (True, False)
    """
    return (
        len(before) == 1
        and len(after) >= 2
        and after[1] == before[0]
        and all(d == 1 for i, d in enumerate(after) if i != 1)
    )


def followed_reshape(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Whether Torch-Pruning maps channel indices through a reshape from ``before`` to ``after`` correctly: a
    flatten to ``(batch, features)`` for a classifier, or a reshape that keeps the batch and channel dimensions of a
    feature map of at most 4 dimensions (``(N, C, H, W) <-> (N, C, H*W)``, ``(N, C) -> (N, C, 1, 1)``).

    Other reshapes (window partitions, attention heads, channel shuffles) it follows wrongly or not at all; their
    channels are left dense.

    >>> followed_reshape((1, 48, 4, 4), (1, 768)), followed_reshape((1, 48, 16), (1, 48, 4, 4))
    (True, True)
    >>> followed_reshape((1, 8, 8, 96), (1, 2, 4, 2, 4, 96)), followed_reshape((1, 48, 8, 8), (1, 2, 24, 8, 8))
    (False, False)
    """
    if tuple(before) == tuple(after):
        return True
    if len(after) == 2 and len(before) >= 2 and after[0] == before[0]:
        return True
    return (
        len(before) >= 2
        and len(after) >= 2
        and max(len(before), len(after)) <= 4
        and tuple(before[:2]) == tuple(after[:2])
    )


_RESHAPES = {"view", "reshape", "flatten", "unflatten"}
_SHUFFLES = {"channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle"}


class _ChannelMixing(torch.autograd.Function):
    """A channel shuffle, or a reshape Torch-Pruning does not follow (:func:`followed_reshape`), run as one opaque
    autograd node while Torch-Pruning traces.

    Torch-Pruning would take a shuffle for an element-wise op (channel i stays channel i) and fails to infer the
    index mapping of a reshape that splits the channels; as one node that carries ``prunegym_mixing`` it is
    recognised, and the channels that cross it stay dense. Only used for tracing: it has no backward.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, func: Callable[..., Any], rest: tuple[Any, ...], kwargs: Any, label: str):  # type: ignore[override]
        ctx.prunegym_mixing = label
        return func(x, *rest, **kwargs).clone()

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError("channel-mixing fence is for dependency tracing only")


class _FenceChannelMixing(TorchFunctionMode):
    """Routes channel shuffles and reshapes that move channels through :class:`_ChannelMixing`."""

    def __init__(self, where: Callable[[], str], followed: set[Any]) -> None:
        super().__init__()
        self.where = where
        self.followed = followed

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name not in _RESHAPES and name not in _SHUFFLES:
            return out
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or not x.requires_grad:
            return out
        before, after = tuple(x.shape), tuple(out.shape)
        if name in _RESHAPES and channel_vector_view(before, after):
            return out  # not among the followed: traced as element-wise
        if name in _RESHAPES and followed_reshape(before, after):
            self.followed.add(out.grad_fn)
            return out
        if name in _SHUFFLES:
            what = f"a {name.replace('native_', '').replace('_', ' ')}"
        else:
            kind = "a channel shuffle" if moves_channels(before, after) else "a reshape"
            what = f"{kind} ({name} {before[1:]} -> {after[1:]})"
        return _ChannelMixing.apply(x, func, tuple(args[1:]), kwargs, f"{what} in {self.where()}")


@contextmanager
def _track_modules(model: nn.Module, stack: list[str]) -> Iterator[None]:
    """While active, ``stack`` holds the names of the modules of ``model`` whose forward is running (innermost
    last), so that an error can say where it arose."""

    def enter(label: str) -> Callable[..., None]:
        return lambda module, inputs: stack.append(label)

    def leave(module: nn.Module, inputs: Any, output: Any) -> None:  # returns None: the output stays as it is
        if stack:
            stack.pop()

    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(enter(name or type(model).__name__)))
        hooks.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@contextmanager
def _fenced_channel_mixing(model: nn.Module, stack: list[str], followed: set[Any]) -> Iterator[None]:
    """While active, channel-mixing ops in ``model``'s forward become recognisable fences (see ``_ChannelMixing``);
    ``stack`` holds the names of the modules running and ``followed`` collects the autograd nodes of the reshapes
    Torch-Pruning follows."""
    where = lambda: stack[-1] if stack else type(model).__name__  # noqa: E731
    with _track_modules(model, stack), _FenceChannelMixing(where, followed):
        yield


class _DependencyGraph(tp.DependencyGraph):
    """Torch-Pruning's dependency graph, told which reshapes it may map channel indices through.

    Reshapes the model's code does not call itself, those inside ``linear`` or ``matmul`` on 3-D and 4-D inputs
    (transformers), fold the leading dimensions and keep the last one, the features: they are traced as element-wise
    ops. Torch-Pruning 1.6 would otherwise guess index mappings for them (it looks for ``_saved_self_sizes``, which
    PyTorch 2 calls ``_saved_self_sym_sizes``), and its guesses for Swin multiply indices without end.
    """

    def __init__(self, followed: set[Any], running: list[str]) -> None:
        super().__init__()
        self._followed = followed
        self._running = running

    group_limit = 64
    """Times a group may reach one layer. A real group reaches each layer once, or a few times through
    concatenations (11 in torchvision's Swin-T, 1 in DenseNet-121); Torch-Pruning 1.6 follows some graphs without end
    (timm's ReXNet, an in-place addition into a slice of wider channels, reached one layer over 1,300 times in
    20,000 steps). A group past the limit is left dense instead."""

    def get_pruning_group(self, *args: Any, **kwargs: Any) -> Any:
        """Torch-Pruning's group, or :class:`RunawayGroupError` when it reaches a layer more than :attr:`group_limit`
        times."""
        with _bounded_groups(self.group_limit):
            return super().get_pruning_group(*args, **kwargs)

    def get_all_groups(self, ignored_layers: Any = (), root_module_types: Any = (nn.Conv2d, nn.Linear)) -> Any:
        """Torch-Pruning's groups of every root layer, as in Torch-Pruning; a root whose group runs away
        (:class:`RunawayGroupError`) is skipped and listed in ``self.runaway`` with the reason."""
        self.runaway: dict[Any, str] = {}
        visited: set[Any] = set()
        ignored = [*ignored_layers, *self.IGNORED_LAYERS_IN_TRACING]
        for module in list(self.module2node):
            if (
                module in visited
                or any(module is i for i in ignored)
                or not isinstance(module, tuple(root_module_types))
            ):
                continue
            pruner = self.get_pruner_of_module(module)
            if pruner is None or pruner.get_out_channels(module) is None:
                continue
            try:
                group = self.get_pruning_group(
                    module, pruner.prune_out_channels, list(range(pruner.get_out_channels(module)))
                )
            except RunawayGroupError as exc:
                self.runaway[module] = f"Torch-Pruning's search for the channels coupled to it does not end ({exc})"
                continue
            prunable = True
            for dep, _ in group:
                if self.is_out_channel_pruning_fn(dep.handler):
                    visited.add(dep.target.module)
                    prunable = prunable and not any(dep.target.module is i for i in ignored)
            if prunable:
                yield group

    def _trace(self, *args: Any, **kwargs: Any) -> Any:
        module2node = super()._trace(*args, **kwargs)
        self._running.clear()  # the forward is over: later failures arise in no layer
        for node in module2node.values():
            if node.type == tp.ops.OPTYPE.RESHAPE and node.grad_fn not in self._followed:
                node.type = tp.ops.OPTYPE.ELEMENTWISE
            elif node.type == tp.ops.OPTYPE.CONCAT and getattr(node.grad_fn, "_saved_dim", 1) >= 2**63:
                # A negative dimension, saved as an unsigned integer, that Torch-Pruning reads as "unset" and then
                # as the channels (Swin's patch merging, ``cat(..., -1)``): its channels stay dense.
                names = [self._module2name.get(n.module) for n in node.outputs]
                consumer = next((n for n in names if n), "the next layer")
                node.prunegym_mixing = f"a concatenation along the last dimension (before {consumer})"
                node.type = tp.ops.OPTYPE.ELEMENTWISE
        return module2node


class RunawayGroupError(Exception):
    """Torch-Pruning's search for the channels coupled to a layer reached one layer more often than any real group
    does (see :class:`_DependencyGraph`)."""


class _BoundedGroup(tp.dependency.group.Group):
    """A Torch-Pruning group that refuses to reach one layer (with one pruning function) more than ``limit`` times."""

    limit = 0

    def add_dep(self, dep: Any, idxs: Any) -> None:
        if self.limit:
            counts = self.__dict__.setdefault("_prunegym_counts", {})
            key = (id(dep.target), dep.handler)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] > self.limit:
                where = getattr(dep.target, "_name", None) or type(dep.target.module).__name__
                raise RunawayGroupError(f"it reached {where} {self.limit} times")
        super().add_dep(dep, idxs)


@contextmanager
def _bounded_groups(limit: int) -> Iterator[None]:
    """While active, the groups Torch-Pruning builds reach one layer at most ``limit`` times (else
    :class:`RunawayGroupError`)."""
    module = tp.dependency.graph
    original = module.Group
    module.Group = type("_Bounded", (_BoundedGroup,), {"limit": limit})
    try:
        yield
    finally:
        module.Group = original


def _mixing_label(node: Any) -> str | None:
    label = getattr(node, "prunegym_mixing", None)
    return label if label is not None else getattr(getattr(node, "grad_fn", None), "prunegym_mixing", None)


def _is_grouped(module: Any) -> bool:
    """A convolution with several groups that is not depthwise (Torch-Pruning prunes depthwise ones alike)."""
    return isinstance(module, nn.Conv2d) and 1 < module.groups != module.out_channels


def channel_groups(dependency_graph: tp.DependencyGraph, group: Any) -> int:
    """The number of equal slices a Torch-Pruning group's channels must be pruned alike in: the least common
    multiple of the groups of every grouped convolution (or group norm) whose channels it holds, 1 for none."""
    slices = 1
    for dep, _ in group:
        module = dep.target.module
        if not isinstance(module, nn.Module) or (isinstance(module, nn.Conv2d) and not _is_grouped(module)):
            continue
        pruner = dependency_graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        out = dependency_graph.is_out_channel_pruning_fn(dep.handler)
        slices = math.lcm(
            slices, int(pruner.get_out_channel_groups(module) if out else pruner.get_in_channel_groups(module))
        )
    return slices


def mixing_reason(group: Any) -> str | None:
    """Why a Torch-Pruning group's channels cannot be pruned consistently: they cross a channel shuffle or a reshape
    that Torch-Pruning does not follow (traced as a fence by :func:`build_dependency_graph`); None when they do
    not."""
    for dep, _ in group:
        for node in (dep.source, dep.target):
            label = _mixing_label(node)
            if label is not None:
                return f"its channels pass through {label}"
    return None


def _sliced_layers(dependency_graph: tp.DependencyGraph, group: Any) -> Iterator[tuple[Any, bool, list[int], int, int]]:
    """``(module, is_output, indices, width, slices)`` for each grouped convolution or group norm in ``group``."""
    for dep, idxs in group:
        module = dep.target.module
        if _is_grouped(module) or isinstance(module, nn.GroupNorm):
            pruner = dependency_graph.get_pruner_of_module(module)
            out = dependency_graph.is_out_channel_pruning_fn(dep.handler)
            width = pruner.get_out_channels(module) if out else pruner.get_in_channels(module)
            slices = pruner.get_out_channel_groups(module) if out else pruner.get_in_channel_groups(module)
            yield module, out, sorted(set(idxs)), int(width), int(slices)


def dense_reason(dependency_graph: tp.DependencyGraph, group: Any) -> str | None:
    """Why a Torch-Pruning group holding all of its root's channels must be left dense, or None when it can be pruned.

    Its channels cannot be pruned when they cross a channel shuffle (:func:`mixing_reason`) or when they fill only
    part of a grouped convolution's input or output, whose slices would then lose different numbers of channels.
    """
    reason = mixing_reason(group)
    if reason is not None:
        return reason
    names = {module: name for name, module in dependency_graph.model.named_modules()}
    for module, out, idxs, width, _ in _sliced_layers(dependency_graph, group):
        if len(idxs) != width:
            side = "outputs" if out else "inputs"
            return f"its channels are {len(idxs)} of the {width} {side} of grouped layer {names.get(module, '?')}"
    return None


def uneven_slices(dependency_graph: tp.DependencyGraph, group: Any) -> str | None:
    """Which grouped layer a Torch-Pruning group (with the indices to remove) would prune unevenly, or None: each
    slice of a grouped convolution must lose the same positions."""
    names = {module: name for name, module in dependency_graph.model.named_modules()}
    for module, out, idxs, width, slices in _sliced_layers(dependency_graph, group):
        if not same_in_every_slice(idxs, width, slices):
            side = "outputs" if out else "inputs"
            return f"it removes different positions from the {slices} slices of the {side} of {names.get(module, '?')}"
    return None


def same_in_every_slice(removed: list[int], channels: int, slices: int) -> bool:
    """Whether ``removed`` channels repeat the same positions in each of ``slices`` equal slices of ``channels``.

    >>> same_in_every_slice([0, 4], 8, 2), same_in_every_slice([0, 5], 8, 2), same_in_every_slice([3], 8, 1)
    (True, False, True)
    """
    if slices <= 1:
        return True
    per_slice = channels // slices
    positions = {i % per_slice for i in removed}
    return len(set(removed)) == len(positions) * slices and all(0 <= i < channels for i in removed)


def _repair_channel_splits(graph: tp.DependencyGraph) -> None:
    """Give Torch-Pruning the true sizes and order of the pieces of a ``chunk``/``split`` along the channels.

    Torch-Pruning 1.6 reads the sizes when the autograd node has ``_saved_self_sizes`` or ``_saved_split_sizes``;
    ``chunk`` and ``split(int)`` in PyTorch 2 have ``_saved_self_sym_sizes`` and ``_saved_split_size``, so it guesses
    them from the layers downstream, which goes wrong when a piece goes through a concatenation (ShuffleNet) and
    then makes index lookups fail. It also maps the i-th consumer it found to the i-th piece, while consumers are
    found in backward order: they are put in the order of the pieces they read. Torch-Pruning reads both each time
    it builds a group, so setting them after the build is enough. Splits it cannot read unambiguously (a piece
    read twice, say) are left as they are.
    """
    for node in graph.module2node.values():
        grad_fn = node.grad_fn
        if node.type != tp.ops.OPTYPE.SPLIT or getattr(grad_fn, "_saved_dim", None) != 1:
            continue
        pieces = []
        for out in node.outputs:
            read = {k for fn, k in getattr(out.grad_fn, "next_functions", ()) if fn is grad_fn}
            pieces.append(read.pop() if len(read) == 1 else -1)
        if sorted(pieces) != list(range(len(pieces))):
            continue
        node.outputs[:] = [out for _, out in sorted(zip(pieces, node.outputs, strict=True), key=lambda p: p[0])]
        total = getattr(grad_fn, "_saved_self_sym_sizes", None)
        size = getattr(grad_fn, "_saved_split_size", None)
        if total is None or size is None:
            continue  # split with explicit sizes: Torch-Pruning read them
        sizes = [min(int(size), int(total[1]) - start) for start in range(0, int(total[1]), int(size))]
        if len(sizes) == len(node.outputs):
            node.module.split_sizes = sizes
            node.module.offsets = [0, *itertools.accumulate(sizes)]


def build_dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` for a batch-1 input of ``input_shape``.

    Channel shuffles and reshapes that move channels are traced as fences (see :func:`dense_reason`).

    Raises:
        UnsupportedModelError: The model cannot be traced (one line: the error and where it arose).
    """
    was_training = model.training
    model.eval()
    running: list[str] = []
    followed: set[Any] = set()
    try:
        with warnings.catch_warnings(), _fenced_channel_mixing(model, running, followed):
            warnings.simplefilter("ignore")  # Torch-Pruning's notes on unwrapped parameters and unknown ops
            graph = _DependencyGraph(followed, running).build_dependency(
                model, example_inputs=torch.zeros(1, *input_shape), verbose=False
            )
        _repair_channel_splits(graph)
        return graph
    except Exception as exc:  # tracing failures come in many types; say where and why
        where = f" in {running[-1]}" if running else ""
        raise UnsupportedModelError(f"cannot trace the model's channel dependencies{where}: {one_line(exc)}") from exc
    finally:
        model.train(was_training)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, with the innermost frame of Torch-Pruning or the model
    that raised it."""
    import traceback

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].name} in {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {text}{where}"
