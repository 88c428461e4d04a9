"""Timing of gated models (:mod:`pruning_core.dynamic`): the parts of their expected latency, and a profile that
compares it with the latency measured image by image."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

import torch
from torch import nn

from hardware_models.measure import time_interleaved
from pruning_core.data import ImageDataset
from pruning_core.dynamic import DynamicParts, DynamicProfile, gated_blocks, profile_from_rows, time_per_image
from pruning_core.errors import PlanError


@torch.inference_mode()
def measure_parts(
    model: nn.Module, probe_input: torch.Tensor, *, repeats: int = 30, reference: nn.Module | None = None
) -> DynamicParts:
    """The parts of a gated model's expected latency, timed in turn, one call of each per round.

    Static part: the whole model with every block that may skip skipped (its gate still asked); blocks at threshold
    0 ask no gate and always run, so they belong to it. The whole model with every block run gives what the
    skippable blocks cost together, and each block's time alone, on the input it receives when every block runs,
    gives its share. (Differences between the model with one block forced to run and the static part, each a
    difference of two noisy medians, summed to twice the difference between running every block and none; with
    blocks timed alone and summed as they are, the expected figure fell 10-15% below the measured one.) Timed in the
    same rounds, a ``reference`` model gives the scale that carries the parts over to a pass timed at another moment,
    since a shared host's pace drifts. The thresholds are restored afterwards.
    """
    model.eval()
    blocks = dict(gated_blocks(model))
    thresholds = {name: block.threshold for name, block in blocks.items()}
    skippable = {name: block for name, block in blocks.items() if block.threshold > 0.0}
    inputs: dict[str, torch.Tensor] = {}

    def whole(run: bool) -> object:
        for block in skippable.values():
            block.force(run=run)
        return model(probe_input)

    try:
        handles = [
            block.register_forward_pre_hook(lambda _, args, name=name: inputs.__setitem__(name, args[0]))
            for name, block in skippable.items()
        ]
        try:
            whole(True)  # every block runs once: each one's own input
        finally:
            for handle in handles:
                handle.remove()
        fns: list[Callable[[], object]] = [lambda: whole(False), lambda: whole(True)]
        fns += [functools.partial(block.block, inputs[name]) for name, block in skippable.items()]
        if reference is not None:
            reference.eval()
            fns.append(lambda: reference(probe_input))
        medians = [statistics.median(t) for t in time_interleaved(fns, warmup=3, runs=repeats)]
    finally:
        for name, block in blocks.items():
            block.threshold = thresholds[name]
            block.reset_counters()
    static_ms, all_ms, alone = medians[0], medians[1], medians[2 : 2 + len(skippable)]
    share = max(0.0, all_ms - static_ms) / sum(alone) if alone else 0.0
    return DynamicParts(
        static_ms=static_ms,
        block_ms={name: ms * share for name, ms in zip(skippable, alone, strict=True)},
        all_ms=all_ms,
        reference_ms=medians[-1] if reference is not None else None,
    )


@torch.inference_mode()
def profile_dynamic(
    model: nn.Module, dataset: ImageDataset, split: str = "test", *, limit: int = 1000, repeats: int = 30
) -> DynamicProfile:
    """Time a gated model image by image (batch 1), and its parts, to compare measured with expected latency."""
    blocks = dict(gated_blocks(model))
    if not blocks:
        raise PlanError("expected a model with gated blocks; this one has none")
    for block in blocks.values():
        block.reset_counters()
    rows = time_per_image(model, dataset, split, limit=limit)
    rates = {name: block.execution_rate() for name, block in blocks.items()}
    probe_input = next(iter(dataset.batches(split, 1)))[0]
    return profile_from_rows(rows, rates, measure_parts(model, probe_input, repeats=repeats))
