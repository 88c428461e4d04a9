"""Importance criteria: small strategy objects that score the channels of every group, selected by name.

The four families of the reference article plus a control:

- weight magnitude, L1 / L2 of each filter summed over the coupled layers (Li et al., ICLR 2017);
- gradient, first-order Taylor ``|w * dL/dw|`` accumulated over calibration batches (Molchanov et al., CVPR 2019);
- feature-map contribution, mean absolute activation of each output channel over calibration batches;
- BatchNorm scaling factor ``|gamma|`` (network slimming, Liu et al., ICCV 2017);
- random, as a control.

A criterion's ``prepare`` sees the dense model once (and data where it needs some); then ``__call__`` returns one
score per channel for a group. Per-weight scores (for unstructured and N:M sparsity) come from ``weight_scores``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from pruning_core.errors import PlanError

if TYPE_CHECKING:
    from pruning_core.data import ImageDataset
    from pruning_core.graph import ModelGraph, PrunableGroup


class Criterion:
    """Scores channels (and optionally single weights) of a model's groups.

    Attributes:
        name: Registry name.
        needs_data: Whether ``prepare`` needs a dataset (calibration batches).
        per_weight: Whether the criterion can score single weights (unstructured / N:M sparsity).
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    per_weight: ClassVar[bool] = True

    def prepare(
        self, graph: ModelGraph, dataset: ImageDataset | None, *, batches: int = 4, batch_size: int = 64
    ) -> None:
        """Look at the dense model (and calibration data) once, before scoring."""

    def __call__(self, graph: ModelGraph, group: PrunableGroup) -> torch.Tensor:
        """One non-negative score per channel of ``group``; low scores are pruned first."""
        raise NotImplementedError

    def weight_scores(self, module: nn.Module) -> torch.Tensor:
        """One score per weight of a conv/linear layer (same shape as its weight)."""
        raise PlanError(f"criterion {self.name!r} scores channels only; use channel granularity")


class _TorchPruningCriterion(Criterion):
    """A criterion that delegates channel scoring to a Torch-Pruning importance object."""

    def _importance(self) -> tp.importance.Importance:
        raise NotImplementedError

    def __call__(self, graph: ModelGraph, group: PrunableGroup) -> torch.Tensor:
        scores = self._importance()(graph.tp_group(group.name))
        if scores is None:  # a group without parameterised layers of the criterion's kind
            return torch.ones(group.channels)
        return scores.detach().float().abs()


class MagnitudeCriterion(_TorchPruningCriterion):
    """Lp norm of each filter, summed over the coupled layers of the group."""

    def __init__(self, p: int) -> None:
        self.p = p
        self.name = f"l{p}"  # type: ignore[misc]

    def _importance(self) -> tp.importance.Importance:
        return tp.importance.GroupMagnitudeImportance(p=self.p, group_reduction="mean", normalizer=None)

    def weight_scores(self, module: nn.Module) -> torch.Tensor:
        return _weight(module).detach().abs().pow(self.p)


class BatchNormCriterion(_TorchPruningCriterion):
    """|gamma| of the BatchNorm layers in the group (network slimming)."""

    name = "bn"
    per_weight = False

    def _importance(self) -> tp.importance.Importance:
        return tp.importance.BNScaleImportance(normalizer=None)


class TaylorCriterion(_TorchPruningCriterion):
    """First-order Taylor expansion of the loss, ``|w * dL/dw|``, gradients summed over calibration batches."""

    name = "taylor"
    needs_data = True

    def prepare(
        self, graph: ModelGraph, dataset: ImageDataset | None, *, batches: int = 4, batch_size: int = 64
    ) -> None:
        if dataset is None:
            raise PlanError("criterion 'taylor' needs a dataset for its calibration batches; got none")
        model = graph.model
        was_training = model.training
        model.eval()  # BN in eval mode: the gradient of the deployed function, not of batch statistics
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for images, labels in _calibration_batches(dataset, batches, batch_size):
                F.cross_entropy(model(images), labels).backward()
        # The gradients stay on the dense model's parameters, where Torch-Pruning's Taylor importance reads them.
        self._prepared = True
        model.train(was_training)

    def _importance(self) -> tp.importance.Importance:
        return tp.importance.GroupTaylorImportance(normalizer=None)

    def __call__(self, graph: ModelGraph, group: PrunableGroup) -> torch.Tensor:
        if not getattr(self, "_prepared", False):
            raise PlanError("criterion 'taylor' was not prepared with calibration data")
        return super().__call__(graph, group)

    def weight_scores(self, module: nn.Module) -> torch.Tensor:
        weight = _weight(module)
        if weight.grad is None:
            raise PlanError("criterion 'taylor' was not prepared with calibration data")
        return (weight.detach() * weight.grad).abs()


class ActivationCriterion(Criterion):
    """Mean absolute activation of each output channel over calibration batches (feature-map contribution).

    The activation is read after the producer's BatchNorm when it has one (the value the next layer sees, before
    the nonlinearity), averaged over the producers of the group.
    """

    name = "activation"
    needs_data = True
    per_weight = False

    def prepare(
        self, graph: ModelGraph, dataset: ImageDataset | None, *, batches: int = 4, batch_size: int = 64
    ) -> None:
        if dataset is None:
            raise PlanError("criterion 'activation' needs a dataset for its calibration batches; got none")
        model = graph.model
        raw: dict[str, torch.Tensor] = {}  # mean |output| of each producer
        normalised: dict[str, torch.Tensor] = {}  # mean |output| of the BatchNorm right after it, if any
        producers = {p for group in graph.groups for p in group.producers}
        outputs: dict[int, str] = {}  # id of a producer's output in the current batch -> producer name
        hooks = []

        def add(store: dict[str, torch.Tensor], name: str, output: torch.Tensor) -> None:
            value = output.detach().abs().mean(dim=[d for d in range(output.ndim) if d != 1])
            store[name] = store[name] + value if name in store else value

        def on_producer(name: str) -> Callable[..., None]:
            def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
                outputs[id(output)] = name
                add(raw, name, output)

            return record

        def on_norm(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if id(inputs[0]) in outputs:
                add(normalised, outputs[id(inputs[0])], output)

        for name, module in model.named_modules():
            if name in producers:
                hooks.append(module.register_forward_hook(on_producer(name)))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                hooks.append(module.register_forward_hook(on_norm))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for images, _ in _calibration_batches(dataset, batches, batch_size):
                    outputs.clear()
                    model(images)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        self._means = {name: normalised.get(name, value) for name, value in raw.items()}

    def __call__(self, graph: ModelGraph, group: PrunableGroup) -> torch.Tensor:
        if not hasattr(self, "_means"):
            raise PlanError("criterion 'activation' was not prepared with calibration data")
        per_layer = [self._means[p] for p in group.producers if p in self._means]
        return torch.stack(per_layer).mean(0)


class RandomCriterion(Criterion):
    """Uniform random scores (a control), seeded."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, graph: ModelGraph, group: PrunableGroup) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 7919 + group.index)
        return torch.rand(group.channels, generator=generator)

    def weight_scores(self, module: nn.Module) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(_weight(module).shape, generator=generator)


def _weight(module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)  # modules without one (ReLU) raise AttributeError on .weight
    if not isinstance(weight, torch.Tensor):
        raise PlanError(f"expected a conv or linear layer with a weight tensor; got {type(module).__name__}")
    return weight


def _calibration_batches(dataset: ImageDataset, batches: int, batch_size: int):
    """The first ``batches`` batches of a fixed shuffle of the training split (no augmentation)."""
    generator = torch.Generator().manual_seed(1234)
    return dataset.batches("train", batch_size, shuffle=True, limit=batches * batch_size, generator=generator)


CRITERIA: dict[str, Callable[[], Criterion]] = {
    "l1": lambda: MagnitudeCriterion(1),
    "l2": lambda: MagnitudeCriterion(2),
    "taylor": TaylorCriterion,
    "activation": ActivationCriterion,
    "bn": BatchNormCriterion,
    "random": RandomCriterion,
}


def make_criterion(name: str) -> Criterion:
    """A fresh criterion by name (``l1``, ``l2``, ``taylor``, ``activation``, ``bn``, ``random``).

    >>> make_criterion("l2").name
    'l2'
    """
    if name not in CRITERIA:
        raise PlanError(f"criterion must be one of {', '.join(CRITERIA)}; got {name!r}")
    return CRITERIA[name]()
