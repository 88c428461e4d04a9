"""Per-block threshold search: a threshold per gated block, chosen greedily on a split (NetAdapt-style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from pruning_core.data import ImageDataset
from pruning_core.dynamic.gates import GatedBlock, _logit, gated_blocks
from pruning_core.dynamic.timing import DynamicParts, expected_latency
from pruning_core.errors import PlanError

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


@dataclass(frozen=True)
class GateRecord:
    """Per image of a split: whether the model got it right, and each gated block's gate logit and decision."""

    correct: torch.Tensor
    logits: dict[str, torch.Tensor]
    ran: dict[str, torch.Tensor]

    def taken(self, index: torch.Tensor) -> GateRecord:
        """The record of the images at ``index`` alone."""
        return GateRecord(
            self.correct[index],
            {k: v[index] for k, v in self.logits.items()},
            {k: v[index] for k, v in self.ran.items()},
        )

    def replaced(self, index: torch.Tensor, redone: GateRecord) -> GateRecord:
        """This record with the images at ``index`` as ``redone`` recorded them."""

        def put(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            out = old.clone()
            out[index] = new
            return out

        return GateRecord(
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
    record: GateRecord
    block: str


def record_gates(
    model: nn.Module,
    blocks: dict[str, GatedBlock],
    images: torch.Tensor,
    labels: torch.Tensor,
    index: torch.Tensor,
    batch_size: int,
) -> GateRecord:
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
    return GateRecord(
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
    kept = {name: block.threshold for name, block in blocks.items()}
    try:
        return _ThresholdSearch(model, blocks, parts, order, images, labels, batch_size).run(stop_ms, progress)
    finally:
        for name, block in blocks.items():
            block.threshold = kept[name]
            block.reset_counters()


class _ThresholdSearch:
    """One greedy search of :func:`search_thresholds`: the gated model, the split's images, the levels, and how a
    raise is tried, scored and carried from one step to the next.

    Args:
        model: The gated model, in eval mode; the search sets its thresholds (the caller restores them).
        blocks: Its gated blocks by name.
        parts: Its measured parts (a time for every gated block).
        order: The levels a block may take, increasing.
        images: The split's images, on the model's device.
        labels: Their labels, on the same device.
        batch_size: Images per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: dict[str, GatedBlock],
        parts: DynamicParts,
        order: list[float],
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
    ) -> None:
        self.model = model
        self.blocks = blocks
        self.static_ms = parts.static_ms
        self.block_ms = {name: parts.block_ms[name] for name in blocks}
        self.order = order
        self.images = images
        self.labels = labels
        self.batch_size = batch_size

    def run(self, stop_ms: float | None, progress: bool) -> list[ThresholdStep]:
        """The search's path: every block at the lowest level, then the cheapest raise at each step, until the
        expected latency is at or below ``stop_ms`` or no raise saves anything."""
        from tqdm import tqdm

        for block in self.blocks.values():
            block.threshold = self.order[0]
        every = torch.arange(len(self.labels), device=self.labels.device)
        state = self._record(every)
        point = self.point_of(dict.fromkeys(self.blocks, self.order[0]), state)
        path = [point]
        tried: dict[str, _Raise | None] = {}  # each block's raise from the current point
        total = len(self.blocks) * (len(self.order) - 1)
        with tqdm(total=total, desc="thresholds", unit="raise", disable=not progress) as bar:
            while stop_ms is None or point.expected_ms > stop_ms:
                best = self.best(tried, point, state)
                if best is None:
                    break
                point, state = best.point, best.record
                path.append(point)
                raised = best.block
                moved = {
                    n: self.carried(old, point, state, raised)
                    for n, old in tried.items()
                    if old is not None and n != raised
                }
                tried = {n: kept_raise for n, kept_raise in moved.items() if kept_raise is not None}
                bar.update(best.levels)
                bar.set_postfix(top1=f"{point.top1:.4f}", expected_ms=f"{point.expected_ms:.3f}")
        return path

    def best(self, tried: dict[str, _Raise | None], point: ThresholdStep, state: GateRecord) -> _Raise | None:
        """The raise from ``point`` that loses the least accuracy per ms saved (the first such block on a tie), or
        None when none saves anything; ``tried`` gains every block's raise it lacked."""
        best: _Raise | None = None
        for name in self.blocks:
            if name not in tried:
                tried[name] = self.fresh(name, point, state)
            trial = tried[name]
            if trial is not None and (best is None or trial.cost < best.cost):
                best = trial
        return best

    def point_of(self, thresholds: dict[str, float], state: GateRecord) -> ThresholdStep:
        """The point at ``thresholds``, the split's record there being ``state``."""
        seen = len(self.labels)
        rates = {name: int(state.ran[name].sum()) / seen for name in self.blocks}
        expected = expected_latency(self.static_ms, self.block_ms, rates, 0.0)
        return ThresholdStep(dict(thresholds), int(state.correct.sum()) / seen, expected, rates)

    @staticmethod
    def changed(state: GateRecord, name: str, level: float) -> torch.Tensor:
        """The images that ran block ``name`` and would skip it at ``level``: the only ones a raise changes."""
        return torch.nonzero(state.ran[name] & (state.logits[name] < _logit(level))).squeeze(1)

    def rerun(self, record: GateRecord, index: torch.Tensor, thresholds: dict[str, float]) -> GateRecord:
        """``record`` with the images at ``index`` run again at ``thresholds``."""
        if index.numel() == 0:
            return record
        for name, level in thresholds.items():
            self.blocks[name].threshold = level
        return record.replaced(index, self._record(index))

    def scored(self, name: str, level: float, up: int, point: ThresholdStep, after: GateRecord) -> _Raise | None:
        """Raising ``name`` to ``level`` from ``point``, which leaves ``after``; None if it saves nothing."""
        trial = self.point_of({**point.thresholds, name: level}, after)
        saved = point.expected_ms - trial.expected_ms
        return _Raise((point.top1 - trial.top1) / saved, up, trial, after, name) if saved > 1e-9 else None

    def fresh(self, name: str, point: ThresholdStep, state: GateRecord) -> _Raise | None:
        """The block's next level that saves anything, scored on the images it changes."""
        here = self.order.index(point.thresholds[name])
        for up, level in enumerate(self.order[here + 1 :], 1):
            # Only the images that ran the block and score below the new level change; the others reach every
            # block with the same input and decide as before.
            index = self.changed(state, name, level)
            if index.numel():
                after = self.rerun(state, index, {**point.thresholds, name: level})
                tried = self.scored(name, level, up, point, after)
                if tried is not None:
                    return tried
        return None

    def carried(self, old: _Raise, point: ThresholdStep, state: GateRecord, raised: str) -> _Raise | None:
        """``old``, tried at the previous point, brought to ``point`` (reached by raising ``raised``) as
        :func:`search_thresholds`'s docstring says; None when it must be tried afresh."""
        name, level = old.block, old.point.thresholds[old.block]
        here, there = self.order.index(point.thresholds[name]), self.order.index(level)
        if any(self.changed(state, name, lower).numel() for lower in self.order[here + 1 : there]):
            return None  # a lower level now skips some input: the search tries it first
        if not self.changed(state, name, level).numel():
            return None
        moved = self.changed(old.record, raised, point.thresholds[raised])
        both = state.ran[name][moved] & (state.logits[name][moved] < _logit(level))
        after = old.record.replaced(moved[~both], state.taken(moved[~both]))
        after = self.rerun(after, moved[both], {**point.thresholds, name: level})
        return self.scored(name, level, there - here, point, after)

    def _record(self, index: torch.Tensor) -> GateRecord:
        """The images at ``index`` run at the model's current thresholds, every gate recorded."""
        return record_gates(self.model, self.blocks, self.images, self.labels, index, self.batch_size)
