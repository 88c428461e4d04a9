"""Gate training: the gates learn, with the backbone frozen and then optionally jointly with it, which inputs need
which block.

The forward pass uses the hard decision (score >= 0.5) and the backward pass the score's gradient (straight-through
estimator), with a penalty on the execution rate. Optionally the backbone is then fine-tuned jointly with the gates,
so that the blocks that still run learn to do without the ones that are skipped (BlockDrop's joint fine-tuning
stage).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.checkpoint import load_resume, save_torch, state_fingerprint
from pruning_core.data import ImageDataset
from pruning_core.dynamic.gates import gated_blocks
from pruning_core.errors import PlanError


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


@dataclass(frozen=True)
class _GateSettings:
    """The settings of a gate training that shape its result (see :func:`train_gates`)."""

    epochs: int
    lr: float
    rate_penalty: float
    rate_target: float | None
    block_target: float | None
    batch_size: int
    joint_epochs: int
    joint_lr: float
    full_weight: float
    distill_weight: float
    bf16: bool | None

    def check(self, teacher: nn.Module | None) -> None:
        """Raises PlanError for a setting out of range."""
        if self.epochs < 0 or self.joint_epochs < 0:
            raise PlanError(f"expected epochs >= 0 and joint_epochs >= 0; got {self.epochs} and {self.joint_epochs}")
        for name, target in (("rate_target", self.rate_target), ("block_target", self.block_target)):
            if target is not None and not 0.0 < target < 1.0:
                raise PlanError(f"expected {name} in (0, 1) or None; got {target}")
        if self.block_target is not None and self.rate_target is not None:
            raise PlanError("expected one of rate_target and block_target; got both")
        if self.full_weight < 0:
            raise PlanError(f"expected full_weight >= 0; got {self.full_weight}")
        if not 0.0 <= self.distill_weight <= 1.0 or (self.distill_weight > 0 and teacher is None):
            raise PlanError(
                f"expected distill_weight in [0, 1], and a teacher when it is above 0; got {self.distill_weight} and "
                f"{'a teacher' if teacher is not None else 'none'}"
            )

    def resume_json(self, model: nn.Module) -> str:
        """What a resume file must match: these settings and the starting ``model``."""
        return json.dumps(
            {
                "epochs": self.epochs,
                "lr": self.lr,
                "rate_penalty": self.rate_penalty,
                "rate_target": self.rate_target,
                "block_target": self.block_target,
                "batch_size": self.batch_size,
                "joint_epochs": self.joint_epochs,
                "joint_lr": self.joint_lr,
                "distill_weight": self.distill_weight,
                # resume files made before full_weight existed still match
                **({"full_weight": self.full_weight} if self.full_weight else {}),
                "bf16": self.bf16,
                "start": state_fingerprint(model),  # the training continues this model, not another saved there
            },
            sort_keys=True,
        )


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class _GateTrainer:
    """A gate training under way: the model, its batch order, the epochs done, and the file they are saved to."""

    def __init__(
        self,
        model: nn.Module,
        dataset: ImageDataset,
        settings: _GateSettings,
        resume: str | os.PathLike[str] | None,
        *,
        progress: bool,
    ) -> None:
        self.model, self.dataset, self.settings, self.progress = model, dataset, settings, progress
        self.path = Path(resume) if resume is not None else None
        self.resume_json = "" if self.path is None else settings.resume_json(model)
        self.saved = load_resume(self.path, self.resume_json, "a gate training")
        if self.saved:
            model.load_state_dict(self.saved["model"])
            if progress:
                print(
                    f"resuming gate training from {self.path}: {self.saved['frozen_done']}/{settings.epochs} frozen, "
                    f"{self.saved['joint_done']}/{settings.joint_epochs} joint epochs done",
                    flush=True,
                )
        self.frozen_done = int(self.saved.get("frozen_done", 0))
        self.joint_done = int(self.saved.get("joint_done", 0))
        self.generator = torch.Generator().manual_seed(0)
        if "generator" in self.saved:
            self.generator.set_state(self.saved["generator"])

    def save(self, **optimizers: torch.optim.Optimizer) -> None:
        """Save the training's state to the resume file, if there is one."""
        if self.path is not None:
            save_torch(
                self.path,
                {
                    "settings": self.resume_json,
                    "model": self.model.state_dict(),
                    "frozen_done": self.frozen_done,
                    "joint_done": self.joint_done,
                    "generator": self.generator.get_state(),
                    **{name: opt.state_dict() for name, opt in optimizers.items()},
                },
            )

    def _batches(self, desc: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's training batches, in the order of the training's generator, with a progress bar."""
        from tqdm import tqdm

        batches = self.dataset.batches(
            "train", self.settings.batch_size, shuffle=True, augment=True, generator=self.generator
        )
        return tqdm(batches, desc=desc, disable=not self.progress, leave=False)

    def frozen_epochs(self) -> None:
        """Train the gates alone (Adam, float32) with the backbone's BatchNorm statistics frozen, then leave every
        parameter trainable."""
        s, model = self.settings, self.model
        for p in model.parameters():
            p.requires_grad_(False)
        params = [p for _, block in gated_blocks(model) for p in block.gate.parameters()]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=s.lr)
        if "gate_optimizer" in self.saved:
            optimizer.load_state_dict(self.saved["gate_optimizer"])
        while self.frozen_done < s.epochs:
            model.eval()  # frozen BatchNorm statistics; GatedBlock's training flag is set below
            for _, block in gated_blocks(model):
                block.train()
                block.block.eval()
            for images, labels in self._batches(f"gates {self.frozen_done + 1}/{s.epochs}"):
                loss = _gate_loss(
                    model,
                    images,
                    labels,
                    s.rate_penalty,
                    bf16=False,
                    rate_target=s.rate_target,
                    block_target=s.block_target,
                )
                _step(optimizer, loss)
            self.frozen_done += 1
            self.save(gate_optimizer=optimizer)
        for p in model.parameters():
            p.requires_grad_(True)

    def joint_epochs(self, teacher: nn.Module | None) -> None:
        """Fine-tune the whole model with its gates under the shared fine-tuning recipe."""
        from pruning_core.finetune import finetune_recipe
        from pruning_core.training import make_state

        s = self.settings
        config = finetune_recipe(s.joint_epochs, lr=s.joint_lr, bf16=s.bf16, distill_weight=s.distill_weight)
        optimizer = make_state(self.model, config).optimizer
        if "joint_optimizer" in self.saved:
            optimizer.load_state_dict(self.saved["joint_optimizer"])
        if teacher is not None:
            teacher.eval()
        steps_per_epoch = math.ceil(len(self.dataset.train) / s.batch_size)
        self.model.train()
        while self.joint_done < s.joint_epochs:
            epoch = self.joint_done
            self.generator.manual_seed(config.seed * 100_003 + epoch)
            for i, (images, labels) in enumerate(self._batches(f"gates+backbone {epoch + 1}/{s.joint_epochs}")):
                lr_now = config.lr_at(epoch * steps_per_epoch + i, s.joint_epochs * steps_per_epoch, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr_now
                loss = _gate_loss(
                    self.model,
                    images,
                    labels,
                    s.rate_penalty,
                    bf16=config.bf16,
                    teacher=teacher,
                    distill_weight=config.distill_weight,
                    temperature=config.distill_temperature,
                    rate_target=s.rate_target,
                    block_target=s.block_target,
                    full_weight=s.full_weight,
                )
                _step(optimizer, loss)
            self.joint_done += 1
            self.save(joint_optimizer=optimizer)


def _gate_report(model: nn.Module, dataset: ImageDataset) -> GateTrainingReport:
    """Val accuracy and per-block execution rates of the trained ``model``, deciding at threshold 0.5."""
    from pruning_core.training import evaluate

    model.eval()
    for _, block in gated_blocks(model):
        block.threshold = 0.5
        block.reset_counters()
        block.last_scores = None  # holds the last batch's graph, which would keep the model from being copied
    top1 = evaluate(model, dataset, "val").top1
    return GateTrainingReport(top1, {name: block.execution_rate() for name, block in gated_blocks(model)})


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
    settings = _GateSettings(
        epochs=epochs,
        lr=lr,
        rate_penalty=rate_penalty,
        rate_target=rate_target,
        block_target=block_target,
        batch_size=batch_size,
        joint_epochs=joint_epochs,
        joint_lr=joint_lr,
        full_weight=full_weight,
        distill_weight=distill_weight,
        bf16=bf16,
    )
    settings.check(teacher)
    if next(gated_blocks(model), None) is None:
        raise PlanError("the model has no gated blocks; call add_gates first")
    trainer = _GateTrainer(model, dataset, settings, resume, progress=progress)
    trainer.frozen_epochs()
    if joint_epochs:
        trainer.joint_epochs(teacher)
    return _gate_report(model, dataset)
