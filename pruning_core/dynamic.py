"""Dynamic skipping: a small gate per residual block decides, per input, whether the block runs.

A gate reads the block's input (global average pooling, one linear layer, a sigmoid) and scores how much the input
needs the block (BlockDrop, CVPR 2018; SkipNet, ECCV 2018; the reference article's gated convolution). At inference
a block whose gate score is below its threshold is not executed: its output is its input (the identity shortcut).
With batch size 1 the block is skipped outright; with larger batches only the inputs that need it go through it.
A threshold of 0 never skips.

Gates are trained once per base model with the backbone frozen: the forward pass uses the hard decision
(score >= 0.5) and the backward pass the score's gradient (straight-through estimator), with a penalty on the mean
execution rate. Optionally the backbone is then fine-tuned jointly with the gates, so that the blocks that still run
learn to do without the ones that are skipped (BlockDrop's joint fine-tuning stage).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.checkpoint import load_resume, save_torch, state_fingerprint
from pruning_core.data import ImageDataset
from pruning_core.engine import replace_submodule
from pruning_core.errors import PlanError
from pruning_core.graph import ModelGraph, skippable_blocks


class SkipGate(nn.Module):
    """Global average pooling, a linear layer and a sigmoid: one score in (0, 1) per input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.constant_(self.fc.bias, 3.0)  # starts by executing every block (sigmoid(3) = 0.95)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x.mean(dim=(2, 3)))).squeeze(1)


class GatedBlock(nn.Module):
    """A residual block with an identity shortcut, wrapped with a skip gate.

    In eval mode the gate decides on its logit against the threshold's logit (the same decision as score against
    threshold, without the sigmoid), a threshold of 0 does not run the gate at all (unless a search is recording the
    gates, see :func:`search_thresholds`), and the pooling and linear layer are folded into one dot product with the
    whole input: at batch 1 on a CPU the gate's per-operation overhead is what dynamic skipping has to win back.

    Args:
        block: The block; ``block(x)`` must equal ``x`` when its residual branch is zero.
        channels: Channels of the block's input.
        threshold: Inputs whose gate score is below this skip the block (0: never skip; 1: always skip).
    """

    def __init__(self, block: nn.Module, channels: int, threshold: float = 0.0) -> None:
        super().__init__()
        self.block = block
        self.gate = SkipGate(channels)
        self.threshold = float(threshold)
        self._counts = [0, 0]  # inputs that ran the block, and inputs seen, since the last reset (eval mode)
        self.last_scores: torch.Tensor | None = None  # gate scores of the last training batch
        self._folded: tuple[Any, ...] | None = None  # the gate folded for inputs of one shape (eval; see _fold)
        self._log: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per batch: gate logits, ran (_record_gates)
        self._every = False  # training: run the block for every input, gate not asked (_every_block_runs)
        self.register_load_state_dict_post_hook(_unfold_after_load)

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = float(value)
        self._cut = _logit(self._threshold)

    # The counters live in a list: nn.Module.__setattr__ costs microseconds per call, which at batch 1 counts.
    @property
    def executed(self) -> int:
        """Inputs that ran the block since the last reset (eval mode)."""
        return self._counts[0]

    @executed.setter
    def executed(self, value: int) -> None:
        self._counts[0] = value

    @property
    def seen(self) -> int:
        """Inputs the block saw since the last reset (eval mode)."""
        return self._counts[1]

    @seen.setter
    def seen(self, value: int) -> None:
        self._counts[1] = value

    def force(self, run: bool) -> None:
        """Ask the gate as usual but then always run (or always skip) the block, until the threshold is set again:
        to time the parts of a model. Only for a block whose threshold is above 0 (one at 0 asks no gate)."""
        self._cut = -math.inf if run else math.inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if self._every:
                return self.block(x)
            scores = self.gate(x)
            self.last_scores = scores
            hard = (scores >= 0.5).float()
            mask = (hard + scores - scores.detach()).view(-1, 1, 1, 1)  # straight-through estimator
            return mask * self.block(x) + (1 - mask) * x
        n = int(x.shape[0])
        counts = self._counts
        counts[1] += n
        log = self._log
        if self._threshold <= 0.0 and log is None:  # never skips: no need to ask the gate
            counts[0] += n
            return self.block(x)
        folded = self._folded
        if (
            folded is None
            or x.shape[1:] != folded[0]
            or folded[1]._version != folded[2]  # the gate's weights changed in place
            or folded[3]._version != folded[4]
        ):
            folded = self._fold(x)
        flat, bias = folded[5], folded[6]
        if n == 1 and log is None:
            if torch.dot(x.reshape(-1), flat).item() + bias >= self._cut:
                counts[0] += 1
                return self.block(x)
            return x
        logits = x.reshape(n, -1) @ flat + bias
        run = logits >= self._cut if self._threshold > 0.0 else torch.ones_like(logits, dtype=torch.bool)
        if log is not None:
            log.append((logits, run))
        count = int(run.sum())
        counts[0] += count
        if count == n:
            return self.block(x)
        if count == 0:
            return x
        out = x.clone()
        out[run] = self.block(x[run])
        return out

    def _fold(self, x: torch.Tensor) -> tuple[Any, ...]:
        """Fold the gate's pooling and linear layer into one vector over inputs shaped like ``x``.

        ``fc(mean over H, W of x) == dot(x flattened, w repeated H*W times / (H*W)) + b``: one operation instead of
        a pooling, a linear layer and a reshape: 5.4 instead of 23.3 us per gate at batch 1 on this host (median over
        resnet56's 25 gates, ``python -m scripts.bench_gate_cost``). The fold is kept until the input's shape
        changes, the gate's weights change in place (their version counters move), the module changes mode, device
        or dtype, or a state dict is loaded.
        """
        weight, bias = self.gate.fc.weight, self.gate.fc.bias
        _, h, w = x.shape[1:]
        flat = (weight.detach()[0] / (h * w)).repeat_interleave(h * w).to(x.dtype).contiguous()
        self._folded = (x.shape[1:], weight, weight._version, bias, bias._version, flat, float(bias.detach()[0]))
        return self._folded

    def _unfold(self) -> None:
        self._folded = None

    def train(self, mode: bool = True) -> GatedBlock:
        self._unfold()
        return super().train(mode)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> GatedBlock:
        self._unfold()
        return super()._apply(fn, recurse)

    def execution_rate(self) -> float:
        return self.executed / max(1, self.seen)

    def reset_counters(self) -> None:
        self.executed = 0
        self.seen = 0


def _unfold_after_load(module: GatedBlock, incompatible_keys: object) -> None:
    """A loaded state dict may have replaced the gate's tensors: fold again on the next call (a named function, so
    a model with gates still pickles)."""
    module._unfold()


def _block_channels(block: nn.Module) -> int:
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    raise PlanError("expected a residual block with a convolution")


def add_gates(model: nn.Module, blocks: list[str] | None = None) -> nn.Module:
    """A copy of ``model`` with every skippable block (or the named ones) wrapped in a :class:`GatedBlock`."""
    model = copy.deepcopy(model)
    names = skippable_blocks(model) if blocks is None else blocks
    for name in names:
        block = model.get_submodule(name)
        if isinstance(block, nn.Identity):
            continue  # removed by layer pruning
        replace_submodule(model, name, GatedBlock(block, _block_channels(block)))
    return model


def gated_blocks(model: nn.Module) -> Iterator[tuple[str, GatedBlock]]:
    for name, module in model.named_modules():
        if isinstance(module, GatedBlock):
            yield name, module


def set_thresholds(model: nn.Module, thresholds: dict[str, float]) -> None:
    """Set each named gated block's threshold (blocks not named keep theirs)."""
    blocks = dict(gated_blocks(model))
    unknown = sorted(set(thresholds) - set(blocks))
    if unknown:
        raise PlanError(f"thresholds name blocks without gates: {unknown[:4]}; gated blocks are {list(blocks)[:4]}")
    for name, value in thresholds.items():
        if not 0.0 <= value <= 1.0:
            raise PlanError(f"threshold for {name} must be in [0, 1]; got {value:g}")
        blocks[name].threshold = float(value)


@dataclass(frozen=True)
class GateTrainingReport:
    """What gate training reached on val."""

    val_top1: float
    execution_rate: dict[str, float]


@contextlib.contextmanager
def _every_block_runs(model: nn.Module) -> Iterator[None]:
    """Within the context, gated blocks in training mode run for every input without asking their gates."""
    blocks = [block for _, block in gated_blocks(model)]
    for block in blocks:
        block._every = True
    try:
        yield
    finally:
        for block in blocks:
            block._every = False


def _gate_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    rate_penalty: float,
    bf16: bool,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
    rate_target: float | None = None,
    block_target: float | None = None,
    full_weight: float = 0.0,
) -> torch.Tensor:
    from pruning_core.training import distill_loss

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        full = None
        if full_weight > 0:  # the same batch through every block: the backbone stays good with nothing skipped
            with _every_block_runs(model):
                full = F.cross_entropy(model(images).float(), labels)
        logits = model(images)
        # The execution rate of the hard decisions, with the scores' gradient (straight-through): a budget then
        # bounds what really runs, and the plain penalty's gradient is the mean score's.
        scores = [b.last_scores for _, b in gated_blocks(model)]
        rates = torch.stack([((s >= 0.5).float() + s - s.detach()).mean() for s in scores])  # type: ignore
        soft = None
        if teacher is not None and distill_weight > 0:
            with torch.no_grad():
                soft = teacher(images).float()
    loss = F.cross_entropy(logits.float(), labels)
    if soft is not None:
        loss = (1 - distill_weight) * loss + distill_weight * distill_loss(logits.float(), soft, temperature)
    if full is not None:
        loss = loss + full_weight * full
    rates = rates.float()
    if block_target is not None:  # every block pulled to run for this share of the batch (Convnet-AIG)
        return loss + rate_penalty * ((rates - block_target) ** 2).mean()
    rate = rates.mean()
    if rate_target is not None:  # a budget: only the execution rate above the target is penalised
        rate = F.relu(rate - rate_target)
    return loss + rate_penalty * rate


def train_gates(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    epochs: int = 2,
    lr: float = 0.01,
    rate_penalty: float = 0.5,
    rate_target: float | None = None,
    block_target: float | None = None,
    batch_size: int = 128,
    joint_epochs: int = 0,
    joint_lr: float = 0.01,
    full_weight: float = 0.0,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    bf16: bool | None = None,
    progress: bool = True,
    resume: str | os.PathLike[str] | None = None,
) -> GateTrainingReport:
    """Train the gates of a gated model, in place: first with the backbone frozen, then optionally jointly.

    The loss is the cross-entropy of the gated model plus ``rate_penalty`` times the execution rate (or, with
    ``rate_target``, times how far the execution rate is above the target: a budget of executions); the rate is that
    of the hard decisions, its gradient the mean score's (straight-through). With ``block_target`` the penalty is
    instead each block's squared distance from running for that share of each batch (the target-rate loss of
    Convnet-AIG, Veit and Belongie, ECCV 2018). A penalty on the mean rate is met most cheaply by skipping whole blocks
    for every input, which a static plan can do without gates; a per-block share can only be met by telling inputs
    apart, so the gates learn which inputs need the block. In the first
    ``epochs`` only the gates learn (Adam, ``lr``, in float32) and the backbone's BatchNorm statistics stay frozen.
    In the following ``joint_epochs`` the whole model learns, BatchNorm included, with the gates deciding hard in the
    forward pass, under the shared fine-tuning recipe (:func:`~pruning_core.finetune.finetune_recipe`: SGD with
    momentum from ``joint_lr``, cosine decay, no weight decay on BatchNorm and biases, per-epoch seeded batches),
    so a static model fine-tuned as many epochs with that recipe is a fair comparison. With ``full_weight`` each
    joint step also passes the batch through every block and adds that cross-entropy, so weighted (the sandwich rule
    of slimmable networks, Yu and Huang, ICCV 2019): the backbone keeps what it needs with nothing skipped while it
    learns to do without the skipped blocks, at twice the cost per step; BatchNorm's running statistics then average
    both passes. Without it only the gated path learns.

    Args:
        model: A model with gated blocks (see :func:`add_gates`).
        dataset: Training images (``train``) and the split reported on (``val``).
        epochs: Epochs with the backbone frozen.
        lr: Learning rate of the gates while the backbone is frozen.
        rate_penalty: Weight of the execution rate in the loss.
        rate_target: Penalise only the execution rate above this (None: penalise all of it).
        block_target: Pull every block's execution rate to this instead (None: penalise the mean rate).
        batch_size: Images per step.
        joint_epochs: Epochs of joint fine-tuning after the frozen ones (0: none).
        joint_lr: Peak learning rate of joint fine-tuning.
        full_weight: Weight of the every-block cross-entropy in joint fine-tuning (0: the gated path alone).
        teacher: A model whose soft labels joint fine-tuning also learns (knowledge distillation), or None.
        distill_weight: Weight of the distillation term in joint fine-tuning (the cross-entropy keeps the rest).
        bf16: bfloat16 autocast in joint fine-tuning (None: where the CPU runs it natively, as the recipe does).
        progress: Show a progress bar.
        resume: A file that holds the training's state after every epoch (weights, optimizers, phase, the batch
            order), written atomically. Started again with the same file, starting model and settings, an
            interrupted training continues after the last epoch saved; a completed one only evaluates. The caller
            removes it once it has saved the model. None: nothing saved.

    Returns:
        Val accuracy and per-block execution rates at threshold 0.5.

    Raises:
        PlanError: A setting is out of range.
        CheckpointError: ``resume`` holds a training with other settings or another starting model.
    """
    from tqdm import tqdm

    from pruning_core.finetune import finetune_recipe
    from pruning_core.training import evaluate, make_state

    if epochs < 0 or joint_epochs < 0:
        raise PlanError(f"expected epochs >= 0 and joint_epochs >= 0; got {epochs} and {joint_epochs}")
    if rate_target is not None and not 0.0 < rate_target < 1.0:
        raise PlanError(f"expected rate_target in (0, 1) or None; got {rate_target}")
    if block_target is not None and not 0.0 < block_target < 1.0:
        raise PlanError(f"expected block_target in (0, 1) or None; got {block_target}")
    if block_target is not None and rate_target is not None:
        raise PlanError("expected one of rate_target and block_target; got both")
    if full_weight < 0:
        raise PlanError(f"expected full_weight >= 0; got {full_weight}")
    if not 0.0 <= distill_weight <= 1.0 or (distill_weight > 0 and teacher is None):
        raise PlanError(
            f"expected distill_weight in [0, 1], and a teacher when it is above 0; got {distill_weight} and "
            f"{'a teacher' if teacher is not None else 'none'}"
        )
    gates = [block.gate for _, block in gated_blocks(model)]
    if not gates:
        raise PlanError("the model has no gated blocks; call add_gates first")
    path = Path(resume) if resume is not None else None
    settings = (
        ""
        if path is None
        else json.dumps(  # what a resume file must match
            {
                "epochs": epochs,
                "lr": lr,
                "rate_penalty": rate_penalty,
                "rate_target": rate_target,
                "block_target": block_target,
                "batch_size": batch_size,
                "joint_epochs": joint_epochs,
                "joint_lr": joint_lr,
                "distill_weight": distill_weight,
                **({"full_weight": full_weight} if full_weight else {}),  # resume files made before it still match
                "bf16": bf16,
                "start": state_fingerprint(model),  # the training continues this model, not another saved there
            },
            sort_keys=True,
        )
    )
    if saved := load_resume(path, settings, "a gate training"):
        model.load_state_dict(saved["model"])
        if progress:
            print(
                f"resuming gate training from {path}: {saved['frozen_done']}/{epochs} frozen, "
                f"{saved['joint_done']}/{joint_epochs} joint epochs done",
                flush=True,
            )
    frozen_done, joint_done = int(saved.get("frozen_done", 0)), int(saved.get("joint_done", 0))

    def checkpoint(**optimizers: torch.optim.Optimizer) -> None:
        if path is not None:
            save_torch(
                path,
                {
                    "settings": settings,
                    "model": model.state_dict(),
                    "frozen_done": frozen_done,
                    "joint_done": joint_done,
                    "generator": generator.get_state(),
                    **{name: opt.state_dict() for name, opt in optimizers.items()},
                },
            )

    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for gate in gates for p in gate.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(0)
    if "gate_optimizer" in saved:
        optimizer.load_state_dict(saved["gate_optimizer"])
    if "generator" in saved:
        generator.set_state(saved["generator"])
    while frozen_done < epochs:
        model.eval()  # frozen BatchNorm statistics; GatedBlock's training flag is set below
        for _, block in gated_blocks(model):
            block.train()
            block.block.eval()
        batches = dataset.batches("train", batch_size, shuffle=True, augment=True, generator=generator)
        desc = f"gates {frozen_done + 1}/{epochs}"
        for images, labels in tqdm(batches, desc=desc, disable=not progress, leave=False):
            loss = _gate_loss(
                model, images, labels, rate_penalty, bf16=False, rate_target=rate_target, block_target=block_target
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        frozen_done += 1
        checkpoint(gate_optimizer=optimizer)
    for p in model.parameters():
        p.requires_grad_(True)
    if joint_epochs:
        config = finetune_recipe(joint_epochs, lr=joint_lr, bf16=bf16, distill_weight=distill_weight)
        state = make_state(model, config)
        if "joint_optimizer" in saved:
            state.optimizer.load_state_dict(saved["joint_optimizer"])
        if teacher is not None:
            teacher.eval()
        steps_per_epoch = math.ceil(len(dataset.train) / batch_size)
        model.train()
        while joint_done < joint_epochs:
            epoch = joint_done
            generator.manual_seed(config.seed * 100_003 + epoch)
            batches = dataset.batches("train", batch_size, shuffle=True, augment=True, generator=generator)
            desc = f"gates+backbone {epoch + 1}/{joint_epochs}"
            for i, (images, labels) in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
                lr_now = config.lr_at(epoch * steps_per_epoch + i, joint_epochs * steps_per_epoch, steps_per_epoch)
                for group in state.optimizer.param_groups:
                    group["lr"] = lr_now
                loss = _gate_loss(
                    model,
                    images,
                    labels,
                    rate_penalty,
                    bf16=config.bf16,
                    teacher=teacher,
                    distill_weight=config.distill_weight,
                    temperature=config.distill_temperature,
                    rate_target=rate_target,
                    block_target=block_target,
                    full_weight=full_weight,
                )
                state.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                state.optimizer.step()
            joint_done += 1
            checkpoint(joint_optimizer=state.optimizer)
    model.eval()
    for _, block in gated_blocks(model):
        block.threshold = 0.5
        block.reset_counters()
        block.last_scores = None  # holds the last batch's graph, which would keep the model from being copied
    top1 = evaluate(model, dataset, "val").top1
    return GateTrainingReport(top1, {name: block.execution_rate() for name, block in gated_blocks(model)})


@torch.no_grad()
def execution_rates(
    model: nn.Module, dataset: ImageDataset, split: str = "val", *, limit: int | None = None
) -> dict[str, float]:
    """Fraction of the split's images that executed each gated block, at the current thresholds."""
    model.eval()
    for _, block in gated_blocks(model):
        block.reset_counters()
    for images, _ in dataset.batches(split, 256, limit=limit):
        model(images)
    return {name: block.execution_rate() for name, block in gated_blocks(model)}


def expected_latency(static_ms: float, block_ms: dict[str, float], rates: dict[str, float], gate_ms: float) -> float:
    """Static part + sum over gated blocks of (block latency x execution rate) + gate overhead.

    ``static_ms`` is the latency of the model with every gated block removed.

    >>> expected_latency(1.0, {"a": 2.0, "b": 1.0}, {"a": 0.5, "b": 1.0}, 0.1)
    3.1
    """
    return static_ms + sum(block_ms[name] * rates.get(name, 1.0) for name in block_ms) + gate_ms


DEFAULT_SEARCH_LEVELS = (0.0, 0.4, 0.5, 0.6, 0.7, 1.0)
"""Thresholds a per-block search moves each block through (0: never skip; 1: always skip)."""


@dataclass(frozen=True)
class ThresholdStep:
    """One point of a per-block threshold search.

    Attributes:
        thresholds: Each gated block's threshold.
        top1: Accuracy on the split searched.
        expected_ms: Expected latency (:func:`expected_latency`) at the split's execution rates.
        exec_rate: Each gated block's execution rate on that split.
    """

    thresholds: dict[str, float]
    top1: float
    expected_ms: float
    exec_rate: dict[str, float]


def _logit(threshold: float) -> float:
    """The gate logit a block's input must reach to run the block at ``threshold``: sigmoid(z) >= t <=> z >= logit(t).

    >>> _logit(0.5), _logit(0.0), _logit(1.0)
    (0.0, -inf, inf)
    """
    if threshold <= 0.0:
        return -math.inf
    if threshold >= 1.0:
        return math.inf
    return math.log(threshold / (1.0 - threshold))


@dataclass(frozen=True)
class _GateRecord:
    """Per image of a split: whether the model got it right, and each gated block's gate logit and decision."""

    correct: torch.Tensor
    logits: dict[str, torch.Tensor]
    ran: dict[str, torch.Tensor]

    def taken(self, index: torch.Tensor) -> _GateRecord:
        """The record of the images at ``index`` alone."""
        return _GateRecord(
            self.correct[index],
            {k: v[index] for k, v in self.logits.items()},
            {k: v[index] for k, v in self.ran.items()},
        )

    def replaced(self, index: torch.Tensor, redone: _GateRecord) -> _GateRecord:
        """This record with the images at ``index`` as ``redone`` recorded them."""

        def put(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            out = old.clone()
            out[index] = new
            return out

        return _GateRecord(
            put(self.correct, redone.correct),
            {k: put(v, redone.logits[k]) for k, v in self.logits.items()},
            {k: put(v, redone.ran[k]) for k, v in self.ran.items()},
        )


class _Raise(NamedTuple):
    """A one-block raise a search step tried: its accuracy lost per ms saved, the levels it goes up, the point it
    reaches and the split's record there."""

    cost: float
    levels: int
    point: ThresholdStep
    record: _GateRecord
    block: str


def _record_gates(
    model: nn.Module,
    blocks: dict[str, GatedBlock],
    images: torch.Tensor,
    labels: torch.Tensor,
    index: torch.Tensor,
    batch_size: int,
) -> _GateRecord:
    """Run the images at ``index`` through ``model`` at its thresholds, a batch at a time, recording every gate's
    logit and decision per image (a block at threshold 0 runs every image, and its gate is asked for the record).

    Raises:
        PlanError: If a gated block does not see every image once per pass (nested or shared gated blocks).
    """
    for block in blocks.values():
        block._log = []
    try:
        correct = []
        for i in range(0, len(index), batch_size):
            batch = index[i : i + batch_size]
            correct.append(model(images[batch]).argmax(1) == labels[batch])
        logs = {name: block._log or [] for name, block in blocks.items()}
    finally:
        for block in blocks.values():
            block._log = None
    for name, log in logs.items():
        if sum(len(z) for z, _ in log) != len(index):
            raise PlanError(
                f"expected gated block {name} to see each of {len(index)} images once per pass; it saw "
                f"{sum(len(z) for z, _ in log)}"
            )
    return _GateRecord(
        torch.cat(correct),
        {name: torch.cat([z for z, _ in log]) for name, log in logs.items()},
        {name: torch.cat([r for _, r in log]) for name, log in logs.items()},
    )


@torch.inference_mode()
def search_thresholds(
    model: nn.Module,
    dataset: ImageDataset,
    parts: DynamicParts,
    *,
    levels: tuple[float, ...] = DEFAULT_SEARCH_LEVELS,
    split: str = "val",
    limit: int | None = None,
    batch_size: int = 500,
    stop_ms: float | None = None,
    progress: bool = True,
) -> list[ThresholdStep]:
    """A threshold per gated block, chosen greedily (NetAdapt-style) on a split.

    Every block starts at the lowest level. Each step tries, for every block, its next level that skips more inputs
    (a level that skips none more is passed over) and keeps the one raise that loses the least accuracy per expected
    millisecond saved; a raise that gains accuracy goes first. The expected latency of a point is
    :func:`expected_latency` of the measured ``parts`` at the split's execution rates, so a block that costs more
    saves more when it is skipped. The model runs on the device its parameters are on; the images are moved there
    once.

    A raise changes only the images that ran the block and whose gate logit falls below the new level's: every other
    image reaches every block with the same input as before and decides the same. So the search records, per image,
    whether it was right and each gate's logit and decision, and scores a raise by running only the images it changes.
    That gives the same figures as scoring the whole split again, up to rounding that differs between batch shapes
    (it can move an image whose gate logit, or whose top two classes, are within rounding of a tie). On the gated
    resnet56 of the dynamic benchmark (1,000 val images, its first 23 raises, 2 threads) it took 303 s against
    1,147 s, along the same path.

    A block's raise tried at one step is carried to the next rather than tried again: after the step raises block A,
    an image whose path through that trial does not meet A's new level goes as it went there, and one that does but
    would not skip the block at its trial level goes as at the new point; only the images changed both ways run
    again. On resnet56 with random gates (300 val images, 50 raises, 1 thread) that took 205 s against 573 s, along
    the same path.

    Args:
        model: A gated model (:func:`add_gates`); its thresholds are restored afterwards.
        dataset: Where the images come from.
        parts: The model's measured parts (:func:`hardware_models.dynamic.measure_parts`), with a time for every
            gated block.
        levels: The thresholds a block may take (sorted; each block starts at the lowest).
        split: The split the search scores on (never ``test``, which reports).
        limit: At most this many images of the split.
        batch_size: Images per forward pass.
        stop_ms: Stop once the expected latency is at or below this (None: go on until every block is at the top
            level or no raise saves anything).
        progress: Show a progress bar.

    Returns:
        The path: the starting point, then the point after each raise.

    Raises:
        PlanError: If the model has no gated blocks, ``parts`` lacks one of them, or ``levels`` is not an increasing
            sequence within [0, 1].
    """
    from tqdm import tqdm

    blocks = dict(gated_blocks(model))
    order = list(levels)
    if not blocks or set(blocks) - set(parts.block_ms):
        raise PlanError(
            f"expected a gated model whose every block has a measured part; got blocks {sorted(blocks)[:4]} and "
            f"parts for {sorted(parts.block_ms)[:4]}"
        )
    if not order or order != sorted(set(order)) or order[0] < 0.0 or order[-1] > 1.0:
        raise PlanError(f"expected increasing threshold levels within [0, 1]; got {list(levels)}")
    model.eval()
    device = next(model.parameters()).device
    pairs = list(dataset.batches(split, batch_size, limit=limit))
    if not pairs:
        raise PlanError(f"expected images to search thresholds on; got none in the {split!r} split (limit {limit})")
    images = torch.cat([x for x, _ in pairs]).to(device)
    labels = torch.cat([y for _, y in pairs]).to(device)
    del pairs
    every = torch.arange(len(labels), device=device)
    kept = {name: block.threshold for name, block in blocks.items()}

    def point_of(thresholds: dict[str, float], state: _GateRecord) -> ThresholdStep:
        seen = len(labels)
        rates = {name: int(state.ran[name].sum()) / seen for name in blocks}
        expected = expected_latency(parts.static_ms, {n: parts.block_ms[n] for n in blocks}, rates, 0.0)
        return ThresholdStep(dict(thresholds), int(state.correct.sum()) / seen, expected, rates)

    def changed(state: _GateRecord, name: str, level: float) -> torch.Tensor:
        """The images that ran block ``name`` and would skip it at ``level``: the only ones a raise changes."""
        return torch.nonzero(state.ran[name] & (state.logits[name] < _logit(level))).squeeze(1)

    def rerun(record: _GateRecord, index: torch.Tensor, thresholds: dict[str, float]) -> _GateRecord:
        """``record`` with the images at ``index`` run again at ``thresholds``."""
        if index.numel() == 0:
            return record
        for name, level in thresholds.items():
            blocks[name].threshold = level
        return record.replaced(index, _record_gates(model, blocks, images, labels, index, batch_size))

    def scored(name: str, level: float, up: int, point: ThresholdStep, after: _GateRecord) -> _Raise | None:
        """Raising ``name`` to ``level`` from ``point``, which leaves ``after``; None if it saves nothing."""
        trial = point_of({**point.thresholds, name: level}, after)
        saved = point.expected_ms - trial.expected_ms
        return _Raise((point.top1 - trial.top1) / saved, up, trial, after, name) if saved > 1e-9 else None

    def fresh(name: str, point: ThresholdStep, state: _GateRecord) -> _Raise | None:
        """The block's next level that saves anything, scored on the images it changes."""
        here = order.index(point.thresholds[name])
        for up, level in enumerate(order[here + 1 :], 1):
            # Only the images that ran the block and score below the new level change; the others reach every
            # block with the same input and decide as before.
            index = changed(state, name, level)
            if index.numel():
                tried = scored(name, level, up, point, rerun(state, index, {**point.thresholds, name: level}))
                if tried is not None:
                    return tried
        return None

    def carried(old: _Raise, point: ThresholdStep, state: _GateRecord, raised: str) -> _Raise | None:
        """``old``, tried at the previous point, brought to ``point`` (reached by raising ``raised``) as this search's
        docstring says; None when it must be tried afresh."""
        name, level = old.block, old.point.thresholds[old.block]
        here, there = order.index(point.thresholds[name]), order.index(level)
        if any(changed(state, name, lower).numel() for lower in order[here + 1 : there]):
            return None  # a lower level now skips some input: the search tries it first
        if not changed(state, name, level).numel():
            return None
        moved = changed(old.record, raised, point.thresholds[raised])
        both = state.ran[name][moved] & (state.logits[name][moved] < _logit(level))
        after = old.record.replaced(moved[~both], state.taken(moved[~both]))
        after = rerun(after, moved[both], {**point.thresholds, name: level})
        return scored(name, level, there - here, point, after)

    try:
        for block in blocks.values():
            block.threshold = order[0]
        state = _record_gates(model, blocks, images, labels, every, batch_size)
        point = point_of(dict.fromkeys(blocks, order[0]), state)
        path = [point]
        tried: dict[str, _Raise | None] = {}  # each block's raise from the current point
        with tqdm(total=len(blocks) * (len(order) - 1), desc="thresholds", unit="raise", disable=not progress) as bar:
            while stop_ms is None or point.expected_ms > stop_ms:
                best: _Raise | None = None
                for name in blocks:
                    if name not in tried:
                        tried[name] = fresh(name, point, state)
                    trial = tried[name]
                    if trial is not None and (best is None or trial.cost < best.cost):
                        best = trial
                if best is None:
                    break
                point, state = best.point, best.record
                path.append(point)
                raised = best.block
                moved = {n: carried(old, point, state, raised) for n, old in tried.items() if old and n != raised}
                tried = {n: kept_raise for n, kept_raise in moved.items() if kept_raise is not None}
                bar.update(best.levels)
                bar.set_postfix(top1=f"{point.top1:.4f}", expected_ms=f"{point.expected_ms:.3f}")
    finally:
        for name, block in blocks.items():
            block.threshold = kept[name]
            block.reset_counters()
    return path


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


@dataclass(frozen=True)
class DynamicProfile:
    """Batch-1 behaviour of a gated model on a split, with real skipping.

    Attributes:
        top1: Accuracy over the images timed.
        latency_ms_measured: Mean per-image latency at batch 1.
        latency_ms_expected: Static part + sum of (block latency x execution rate), each part measured.
        exec_rate: Fraction of the images that executed each gated block.
        by_blocks_used: Per number of gated blocks an image executed: images, accuracy and mean latency.
    """

    top1: float
    latency_ms_measured: float
    latency_ms_expected: float
    exec_rate: dict[str, float]
    by_blocks_used: dict[int, dict[str, float]]


@torch.inference_mode()
def time_models_per_image(
    models: Mapping[str, nn.Module],
    dataset: ImageDataset,
    split: str = "test",
    *,
    limit: int = 1000,
    chunk: int = 25,
) -> dict[str, list[tuple[int, int, float]]]:
    """Run several models image by image (batch 1), taking turns every ``chunk`` images.

    A shared host's speed drifts over minutes (here the same pruned resnet56, timed alone over 200 images three
    times within a minute, averaged 5.4, 8.4 and 10.7 ms): models timed one after the other are compared across that
    drift. Taking turns every few images puts every model under the same conditions, so their ratios hold; the order
    rotates from turn to turn so that no model always runs first. Each turn starts with one untimed call, so that a
    model runs as a deployed one does, its weights in cache, and the cost of switching stays out of the timing.
    (Measured here, turns of 1 and of 25 images gave the same ratios within 3%.)

    Args:
        models: Distinct modules by name (a module listed twice would count its gated blocks twice).
        dataset: Where the images come from.
        split: Which split.
        limit: At most this many images.
        chunk: Images per turn.

    Returns:
        Per model, per image: the number of gated blocks it executed (0 for a model without gates), whether its
        top-1 prediction was right (1 or 0), and the milliseconds it took.

    Raises:
        PlanError: If ``models`` is empty or lists one module twice, or ``chunk`` is below 1.
    """
    distinct = len({id(m) for m in models.values()})
    if not models or distinct != len(models) or chunk < 1:
        raise PlanError(
            f"expected one or more distinct models and chunk >= 1; got {len(models)} entries naming {distinct} "
            f"modules and chunk {chunk}"
        )
    names = list(models)
    blocks = {name: [block for _, block in gated_blocks(model)] for name, model in models.items()}
    for model in models.values():
        model.eval()
    rows: dict[str, list[tuple[int, int, float]]] = {name: [] for name in names}
    batches = iter(dataset.batches(split, 1, limit=limit))
    for turn in itertools.count():
        images = list(itertools.islice(batches, chunk))
        if not images:
            break
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            model, counted = models[name], blocks[name]
            counters = [(b.executed, b.seen) for b in counted]
            model(images[0][0])  # untimed: the model's weights back in cache, its counters untouched
            for b, (executed, seen) in zip(counted, counters, strict=True):
                b.executed, b.seen = executed, seen
            for image, label in images:
                before = sum(b.executed for b in counted)
                start = time.perf_counter_ns()
                logits = model(image)
                elapsed = (time.perf_counter_ns() - start) / 1e6
                used = sum(b.executed for b in counted) - before
                rows[name].append((used, int(logits.argmax(1)[0] == label[0]), elapsed))
    return rows


def time_per_image(
    model: nn.Module, dataset: ImageDataset, split: str = "test", *, limit: int = 1000
) -> list[tuple[int, int, float]]:
    """Run ``model`` image by image (batch 1) over a split, as a deployed model sees its inputs.

    Returns:
        Per image: the number of gated blocks it executed (0 for a model without gates), whether its top-1
        prediction was right (1 or 0), and the milliseconds it took.
    """
    return time_models_per_image({"model": model}, dataset, split, limit=limit)["model"]


@dataclass(frozen=True)
class DynamicParts:
    """The measured parts of a gated model's expected latency (ms, medians on one input, timed in turn).

    Attributes:
        static_ms: The whole model with every block that may skip skipped (its gate still asked).
        block_ms: Each skippable block: its share of ``all_ms - static_ms``, in proportion to its time alone on the
            input it receives when every block runs.
        all_ms: The whole model with every block run (its gate still asked).
        reference_ms: A reference model (the static model without gates) timed in the same rounds, or None.
    """

    static_ms: float
    block_ms: dict[str, float]
    all_ms: float
    reference_ms: float | None = None

    def scaled(self, factor: float) -> DynamicParts:
        """Every part times ``factor``: parts timed on one input, carried over to a pass whose pace differs.

        >>> DynamicParts(1.0, {"a": 2.0}, 3.0, 4.0).scaled(0.5)
        DynamicParts(static_ms=0.5, block_ms={'a': 1.0}, all_ms=1.5, reference_ms=2.0)
        """
        reference = None if self.reference_ms is None else self.reference_ms * factor
        blocks = {k: v * factor for k, v in self.block_ms.items()}
        return DynamicParts(self.static_ms * factor, blocks, self.all_ms * factor, reference)


def profile_from_rows(
    rows: list[tuple[int, int, float]], rates: dict[str, float], parts: DynamicParts
) -> DynamicProfile:
    """Summarise per-image rows (from :func:`time_models_per_image`) and measured parts as a :class:`DynamicProfile`."""
    groups: dict[int, list[tuple[int, int, float]]] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    by_used = {
        used: {
            "images": len(rs),
            "top1": sum(r[1] for r in rs) / len(rs),
            "latency_ms": sum(r[2] for r in rs) / len(rs),
        }
        for used, rs in sorted(groups.items())
    }
    return DynamicProfile(
        top1=sum(r[1] for r in rows) / len(rows),
        latency_ms_measured=sum(r[2] for r in rows) / len(rows),
        latency_ms_expected=expected_latency(parts.static_ms, parts.block_ms, rates, 0.0),
        exec_rate=rates,
        by_blocks_used=by_used,
    )
