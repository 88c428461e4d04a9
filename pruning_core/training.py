"""Training, fine-tuning and evaluation loops shared by dense pre-training and pruned-model fine-tuning."""

from __future__ import annotations

import enum
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.checkpoint import library_versions, load_torch, save_checkpoint, save_torch
from pruning_core.data import ImageDataset
from pruning_core.errors import CheckpointError, PruneGymError


class Schedule(str, enum.Enum):
    """Learning-rate schedules of the reference article's fine-tuning strategies."""

    COSINE = "cosine"
    CONSTANT = "constant"


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of a model on one split."""

    top1: float
    top5: float | None
    n: int
    loss: float


def bf16_is_fast() -> bool:
    """Whether this CPU runs bfloat16 matrix work natively (AMX or AVX512-BF16), so autocast speeds it up.

    Reads the CPU flags of ``/proc/cpuinfo``; elsewhere (no such file) the answer is ``False``.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_bf16(bf16: bool | None) -> bool:
    """``bf16`` as asked, or, when ``None``, whether this CPU runs it natively (:func:`bf16_is_fast`)."""
    return bf16_is_fast() if bf16 is None else bf16


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training or fine-tuning run."""

    epochs: int = 30
    """Passes over the training split."""
    lr: float = 0.1
    """Peak learning rate (SGD with momentum)."""
    momentum: float = 0.9
    """SGD momentum (Nesterov)."""
    weight_decay: float = 5e-4
    """L2 penalty on conv/linear weights (not on BatchNorm or biases)."""
    batch_size: int = 128
    """Images per step."""
    schedule: Schedule = Schedule.COSINE
    """``cosine`` decays to zero over the run; ``constant`` keeps ``lr``."""
    warmup_epochs: float = 1.0
    """Linear warm-up at the start, in epochs."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy."""
    cutout: int = 0
    """Side of the square zeroed at a random place of each normalised training image (Cutout, DeVries & Taylor
    2017); 0 disables it."""
    distill_weight: float = 0.0
    """Weight of the KL term towards a teacher's soft labels (knowledge distillation, Hinton et al. 2015)."""
    distill_temperature: float = 4.0
    """Softmax temperature of distillation."""
    seed: int = 0
    """Seed of shuffling and augmentation (per epoch, so a resumed run sees the same batches)."""
    bf16: bool = False
    """Run forward/backward under bfloat16 autocast (fast on CPUs with AMX)."""
    channels_last: bool = False
    """Use the channels-last memory format."""

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise PruneGymError(f"epochs must be >= 0; got {self.epochs}")
        if not self.lr > 0:
            raise PruneGymError(f"learning rate must be > 0; got {self.lr}")
        if self.batch_size < 1:
            raise PruneGymError(f"batch size must be >= 1; got {self.batch_size}")
        object.__setattr__(self, "schedule", Schedule(self.schedule))

    def lr_at(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        """Learning rate at a global step: linear warm-up, then the schedule.

        >>> cfg = TrainConfig(epochs=2, lr=0.1, warmup_epochs=0)
        >>> round(cfg.lr_at(0, 20, 10), 3), round(cfg.lr_at(10, 20, 10), 3)
        (0.1, 0.05)
        """
        warmup = int(self.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.schedule is Schedule.CONSTANT:
            return self.lr
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * progress))


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    split: str = "test",
    *,
    batch_size: int = 500,
    limit: int | None = None,
) -> EvalResult:
    """Top-1 (and top-5 where there are more than 5 classes) accuracy on a split.

    Args:
        model: The model; it is put in eval mode.
        dataset: Dataset holding the split.
        split: ``train``, ``val`` or ``test``.
        batch_size: Images per forward pass.
        limit: Evaluate only the first ``limit`` images of the split.
    """
    model.eval()
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    want_top5 = dataset.num_classes > 5
    for images, labels in dataset.batches(split, batch_size, limit=limit):
        logits = model(images)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct1 += int((logits.argmax(1) == labels).sum())
        if want_top5:
            top5 = logits.topk(5, dim=1).indices
            correct5 += int((top5 == labels[:, None]).any(1).sum())
        seen += int(labels.numel())
    if seen == 0:
        raise PruneGymError(f"split {split!r} of {dataset.name} is empty")
    return EvalResult(correct1 / seen, correct5 / seen if want_top5 else None, seen, loss_sum / seen)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image (centre uniform over the image, clipped at its borders).

    >>> out = cutout(torch.ones(2, 1, 8, 8), 4, torch.Generator().manual_seed(0))
    >>> bool((out == 0).any()) and out.shape == (2, 1, 8, 8)
    True
    """
    b, _, h, w = images.shape
    cy = torch.randint(0, h, (b, 1, 1), generator=generator)
    cx = torch.randint(0, w, (b, 1, 1), generator=generator)
    ys = torch.arange(h).view(1, h, 1) - (cy - size // 2)
    xs = torch.arange(w).view(1, 1, w) - (cx - size // 2)
    inside = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    return images.masked_fill(inside[:, None], 0.0)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only (decaying BN scales fights network slimming's signal)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class EpochLog:
    """What one epoch did."""

    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    val_top1: float
    seconds: float


@dataclass
class TrainState:
    """Where a run stands: the model, its optimizer and the epochs done (enough to resume)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    history: list[EpochLog] = field(default_factory=list)


def make_state(model: nn.Module, config: TrainConfig) -> TrainState:
    optimizer = torch.optim.SGD(
        _param_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum, nesterov=True
    )
    return TrainState(model=model, optimizer=optimizer)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015): KL divergence of the softened outputs, times ``temperature**2``."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t


def train(
    state: TrainState,
    dataset: ImageDataset,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    eval_split: str = "val",
    eval_limit: int | None = None,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    progress: bool = True,
) -> TrainState:
    """Train ``state.model`` from ``state.epoch`` up to ``config.epochs``, in place.

    Args:
        state: Model, optimizer and epochs already done.
        dataset: Dataset; batches come from its ``train`` split with augmentation.
        config: Hyper-parameters.
        teacher: Optional teacher for knowledge distillation (used when ``config.distill_weight > 0``).
        eval_split: Split evaluated after each epoch.
        eval_limit: Evaluate only the first images of that split.
        on_epoch_end: Called after each epoch (to save a checkpoint, say).
        progress: Show a progress bar per epoch.

    Returns:
        The same state, advanced.
    """
    from tqdm import tqdm

    model = state.model
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if teacher is not None:
        teacher.eval().to(memory_format=memory_format)
    steps_per_epoch = math.ceil(len(dataset.train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    generator = torch.Generator()
    while state.epoch < config.epochs:
        epoch = state.epoch
        generator.manual_seed(config.seed * 100_003 + epoch)
        model.train()
        start = time.perf_counter()
        loss_sum = 0.0
        correct = seen = 0
        lr = config.lr
        batches = dataset.batches("train", config.batch_size, shuffle=True, augment=True, generator=generator)
        bar = tqdm(
            batches,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for i, (images, labels) in enumerate(bar):
            lr = config.lr_at(epoch * steps_per_epoch + i, total_steps, steps_per_epoch)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            if config.cutout > 0:
                images = cutout(images, config.cutout, generator)
            images = images.contiguous(memory_format=memory_format)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                logits = model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
                if teacher is not None and config.distill_weight > 0:
                    with torch.no_grad():
                        soft = teacher(images).float()
                    loss = (1 - config.distill_weight) * loss + config.distill_weight * distill_loss(
                        logits.float(), soft, config.distill_temperature
                    )
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            loss_sum += float(loss.detach()) * labels.numel()
            correct += int((logits.argmax(1) == labels).sum())
            seen += int(labels.numel())
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.4f}")
        model.to(memory_format=torch.contiguous_format)
        val = evaluate(model, dataset, eval_split, limit=eval_limit)
        model.to(memory_format=memory_format)
        state.epoch += 1
        log = EpochLog(
            epoch + 1, lr, loss_sum / max(seen, 1), correct / max(seen, 1), val.top1, time.perf_counter() - start
        )
        state.history.append(log)
        if progress:
            tqdm.write(
                f"epoch {log.epoch}/{config.epochs}  loss {log.train_loss:.3f}  train {log.train_top1:.4f}  "
                f"{eval_split} {log.val_top1:.4f}  lr {lr:.4f}  {log.seconds:.0f}s"
            )
        if on_epoch_end is not None:
            on_epoch_end(state)
    model.to(memory_format=torch.contiguous_format)
    if teacher is not None:
        teacher.to(memory_format=torch.contiguous_format)
    return state


def resume_path(out: str | os.PathLike[str]) -> Path:
    """Where an in-progress run of ``out`` keeps its resumable state."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def pretrain(
    model: nn.Module,
    model_name: str,
    dataset: ImageDataset,
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    teacher: nn.Module | None = None,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a dense model, saving resumable state each epoch and the final checkpoint at ``out``.

    The resumable state (weights, optimizer, epochs done, history) goes to ``<out>.resume`` after every epoch,
    atomically; ``resume=True`` continues from it. The final checkpoint holds weights and metadata only, and
    replaces the resume state when the run completes. With a ``teacher`` and ``config.distill_weight > 0`` the
    model also learns the teacher's soft labels (knowledge distillation).

    Returns:
        The trained model (eval mode) and the checkpoint's metadata.
    """
    out = Path(out)
    state = make_state(model, config)
    partial = resume_path(out)
    if resume:
        if not partial.exists():
            raise CheckpointError(f"nothing to resume: {partial} does not exist")
        saved = load_torch(partial)
        if saved.get("model_name") != model_name or saved.get("dataset") != dataset.name:
            raise CheckpointError(
                f"{partial} is a run of {saved.get('model_name')} on {saved.get('dataset')}; "
                f"expected {model_name} on {dataset.name}"
            )
        model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.epoch = int(saved["epoch"])
        state.history = [EpochLog(**row) for row in saved["history"]]
        if progress:
            print(f"resuming {model_name} from epoch {state.epoch}/{config.epochs}")

    def save_partial(st: TrainState) -> None:
        save_torch(
            partial,
            {
                "model_name": model_name,
                "dataset": dataset.name,
                "config": json.dumps(asdict(config), default=str),
                "model": st.model.state_dict(),
                "optimizer": st.optimizer.state_dict(),
                "epoch": st.epoch,
                "history": [asdict(row) for row in st.history],
            },
        )

    start = time.perf_counter()
    train(state, dataset, config, teacher=teacher, on_epoch_end=save_partial, progress=progress)
    test = evaluate(model, dataset, "test")
    meta: dict[str, Any] = {
        "model": model_name,
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "in_channels": dataset.input_shape[0],
        "input_shape": list(dataset.input_shape),
        "epochs": config.epochs,
        "seed": config.seed,
        "config": {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(config).items()},
        "test_top1": test.top1,
        "test_n": test.n,
        "val_top1": state.history[-1].val_top1 if state.history else None,
        "train_seconds_this_run": time.perf_counter() - start,
        "versions": library_versions(),
        **(extra_meta or {}),
    }
    save_checkpoint(out, model, meta)
    partial.unlink(missing_ok=True)  # the run is complete; its final checkpoint supersedes the resume state
    return model.eval(), meta
