"""The one question this package answers: how long does this model take on that device."""

from __future__ import annotations

import enum
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import nn

from pruning_core.graph import ModelGraph


class DeviceKind(str, enum.Enum):
    """How a latency model knows its figures."""

    MEASURED = "measured"
    LOOKUP_TABLE = "lookup table"
    ANALYTIC = "analytic (estimate)"


@dataclass(frozen=True)
class Variant:
    """A pruned variant of a dense model, described without building it.

    Attributes:
        kept: Channels kept per group name (groups not named keep all of theirs).
        removed_blocks: Residual blocks removed entirely.
    """

    kept: Mapping[str, int] = field(default_factory=dict)
    removed_blocks: tuple[str, ...] = ()


@dataclass(frozen=True)
class LatencyStats:
    """Repeated timings of one model on one device, in milliseconds."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    runs: int
    device: str
    runtime: str
    threads: int | None
    batch_size: int

    @property
    def spread(self) -> float:
        """(p90 - p50) / p50: how far the slow tail sits from the median."""
        return (self.p90_ms - self.p50_ms) / self.p50_ms

    @classmethod
    def from_samples(
        cls, samples_ms: Sequence[float], *, device: str, runtime: str, threads: int | None, batch_size: int
    ) -> LatencyStats:
        """Summarise raw timings.

        >>> LatencyStats.from_samples([1.0, 2.0, 3.0], device="d", runtime="r", threads=1, batch_size=1).p50_ms
        2.0
        """
        ordered = sorted(samples_ms)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        return cls(
            p50_ms=statistics.median(ordered),
            p90_ms=p90,
            mean_ms=statistics.fmean(ordered),
            std_ms=statistics.pstdev(ordered),
            min_ms=ordered[0],
            runs=len(ordered),
            device=device,
            runtime=runtime,
            threads=threads,
            batch_size=batch_size,
        )


@runtime_checkable
class LatencyModel(Protocol):
    """Latency of a model, or of a pruned variant of it, on one device.

    Attributes:
        device: Device name as registered (``host-cpu``, ``jetson-orin-nano``, ``lut:PATH``, ...).
        runtime: What runs the model there (``pytorch``, ``onnxruntime``, ``tensorrt (estimate)``, ...).
        kind: Measured, lookup table or analytic estimate.
    """

    device: str
    runtime: str
    kind: DeviceKind

    def predict(self, model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1) -> float:
        """Latency in milliseconds of ``model`` for a batch of ``batch_size`` inputs of ``input_shape``."""
        ...

    def predict_variant(self, graph: ModelGraph, variant: Variant, *, batch_size: int = 1) -> float:
        """Latency in milliseconds of a pruned variant of ``graph.model``."""
        ...
