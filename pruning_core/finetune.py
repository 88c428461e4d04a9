"""Fine-tuning a pruned model: fixed or cosine-decayed learning rate, optional distillation, best weights kept."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict
from pathlib import Path

from torch import nn

from pruning_core.checkpoint import load_resume, save_torch, state_fingerprint
from pruning_core.data import ImageDataset
from pruning_core.engine import PrunedModel, PruningEngine, recalibrate_bn
from pruning_core.plan import PruningPlan
from pruning_core.training import (
    EpochLog,
    Schedule,
    TrainConfig,
    TrainState,
    evaluate,
    make_state,
    resolve_bf16,
    train,
)


def finetune_recipe(
    epochs: int,
    *,
    lr: float = 0.01,
    schedule: str = "cosine",
    seed: int = 0,
    bf16: bool | None = None,
    distill_weight: float = 0.0,
) -> TrainConfig:
    """The fine-tuning recipe every method shares, so they are compared on equal terms.

    SGD with momentum from ``lr``, no warm-up, cosine decay (or constant), and bfloat16 autocast where the CPU runs
    it natively (``bf16=None``), which halves the time of an epoch there. With ``distill_weight`` above 0 the model
    also learns a teacher's soft labels, where the caller passes one.

    The memory format stays contiguous. Pruned widths leave oneDNN's channels-last kernels off their blocked path:
    measured here (``python -m scripts.bench_memory_format``, resnet56, 2 threads, bf16, batch 128), a training step
    took 517 ms contiguous against 974 ms channels-last at widths 12/24/48 and 400 against 481 ms at 8/16/32, while
    the dense 16/32/64 model ran faster channels-last (545 against 691 ms).
    """
    return TrainConfig(
        epochs=epochs,
        lr=lr,
        schedule=Schedule(schedule),
        warmup_epochs=0,
        seed=seed,
        bf16=resolve_bf16(bf16),
        channels_last=False,
        distill_weight=distill_weight,
    )


def finetune_model(
    model: nn.Module,
    dataset: ImageDataset,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    eval_split: str = "val",
    progress: bool = True,
    resume: str | os.PathLike[str] | None = None,
) -> float:
    """Fine-tune ``model`` in place, load the weights of its best epoch on ``eval_split`` and return that accuracy.

    The starting weights count as epoch 0, so fine-tuning never leaves a model worse on ``eval_split``.

    Args:
        model: Any classifier (pruned, gated or dense).
        dataset: Training data (``train`` split) and the split that picks the best epoch.
        config: Learning rate, schedule (``cosine`` or ``constant``), epochs, distillation weight.
        teacher: Dense model to distil from when ``config.distill_weight > 0``.
        eval_split: Split that selects the best epoch (``val``: the test split is for reporting only).
        progress: Show progress bars.
        resume: A file that holds the run's state after every epoch (weights, optimizer, the best epoch so far),
            written atomically. Started again with the same file, starting model and recipe, an interrupted run
            continues after the last epoch saved, on the same batches (they are seeded per epoch); a completed one
            returns its result at once. The caller removes it once it has saved the model. None: nothing saved.

    Returns:
        Top-1 on ``eval_split`` of the weights kept.

    Raises:
        CheckpointError: ``resume`` holds a run with another recipe or starting model.
    """
    state = make_state(model, config)
    path = Path(resume) if resume is not None else None
    recipe = ""  # what a resume file must match: the recipe and the starting model (hashed only when resuming)
    if path is not None:
        start = state_fingerprint(model)
        recipe = json.dumps({**asdict(config), "eval_split": eval_split, "start": start}, default=str, sort_keys=True)
    if saved := load_resume(path, recipe, "a fine-tuning run"):
        model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.epoch = int(saved["epoch"])
        state.history = [EpochLog(**row) for row in saved["history"]]
        best_top1, best_state = float(saved["best_top1"]), saved["best_state"]
        if progress:
            print(f"resuming fine-tuning from {path}: epoch {state.epoch}/{config.epochs} done", flush=True)
    else:
        best_top1 = evaluate(model, dataset, eval_split).top1
        best_state = copy.deepcopy(model.state_dict())

    def keep_best(state: TrainState) -> None:
        nonlocal best_top1, best_state
        if state.history[-1].val_top1 > best_top1:
            best_top1 = state.history[-1].val_top1
            best_state = copy.deepcopy(state.model.state_dict())
        if path is not None:
            save_torch(
                path,
                {
                    "settings": recipe,
                    "model": state.model.state_dict(),
                    "optimizer": state.optimizer.state_dict(),
                    "epoch": state.epoch,
                    "history": [asdict(row) for row in state.history],
                    "best_top1": best_top1,
                    "best_state": best_state,
                },
            )

    if config.epochs > 0:
        train(state, dataset, config, teacher=teacher, eval_split=eval_split, on_epoch_end=keep_best, progress=progress)
    model.load_state_dict(best_state)
    model.eval()
    return best_top1


def finetune(
    pruned: PrunedModel,
    dataset: ImageDataset,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    eval_split: str = "val",
    progress: bool = True,
    resume: str | os.PathLike[str] | None = None,
) -> PrunedModel:
    """Fine-tune ``pruned.model`` in place (see `finetune_model`, which also says what ``resume`` keeps);
    ``accuracy`` gains ``{eval_split}_finetuned``.

    Pruning masks (unstructured, N:M) stay in force during fine-tuning, so zeros stay zeros.
    """
    pruned.accuracy[f"{eval_split}_finetuned"] = finetune_model(
        pruned.model, dataset, config, teacher=teacher, eval_split=eval_split, progress=progress, resume=resume
    )
    return pruned


def prune_and_finetune(
    engine: PruningEngine,
    plan: PruningPlan,
    dataset: ImageDataset,
    *,
    bn_batches: int = 20,
    config: TrainConfig | None = None,
    distill: bool = False,
    progress: bool = True,
    resume: str | os.PathLike[str] | None = None,
) -> PrunedModel:
    """The full recipe every method ends with: apply, recalibrate BN, fine-tune; accuracies at each stage.

    ``accuracy`` gains ``{val,test}_pruned``, ``{val,test}_bn`` and, when ``config.epochs > 0``,
    ``val_finetuned`` and ``test_finetuned`` (the best epoch is chosen on val). ``resume``: a file that keeps the
    fine-tuning's state after every epoch, so that the same call made again after a stop goes on from there (the
    recalibration is seeded: the same plan starts from the same weights); see :func:`finetune_model`.
    """
    pruned = engine.apply(plan)
    for split in ("val", "test"):
        pruned.accuracy[f"{split}_pruned"] = evaluate(pruned.model, dataset, split).top1
    recalibrate_bn(pruned.model, dataset, batches=bn_batches)
    for split in ("val", "test"):
        pruned.accuracy[f"{split}_bn"] = evaluate(pruned.model, dataset, split).top1
    if config is not None and config.epochs > 0:
        teacher = engine.model if distill else None
        finetune(pruned, dataset, config, teacher=teacher, progress=progress, resume=resume)
        pruned.accuracy["test_finetuned"] = evaluate(pruned.model, dataset, "test").top1
    return pruned
