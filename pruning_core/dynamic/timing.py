"""Per-image timing of gated models and what it is compared with: execution rates, the expected latency from the
measured parts, and the per-image profile.

Measuring the parts themselves needs the host's timers and lives in :mod:`hardware_models.dynamic`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from pruning_core.data import ImageDataset
from pruning_core.dynamic.gates import gated_blocks
from pruning_core.errors import PlanError


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
