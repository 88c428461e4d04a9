"""Latency measured on this host: PyTorch eager (CPU or CUDA) and ONNX Runtime (CPU).

Timing on a shared machine is noisy: with 2 threads, batch-1 medians of the same model drift by up to 50% here,
with 1 thread by about 3%, and over minutes the whole host slows and speeds up by up to 2x. So CPU latency is
measured with an explicit thread count (1 by default), after a warm-up, over many runs, and reported as a median
with its spread; and models that are compared are timed interleaved (:meth:`TorchLatency.measure_interleaved`:
one call of each in turn), so a slow spell of the host falls on all of them alike and their ratio stays true.

What a process did before it times also shows: a resnet56 plan timed beside dense, 15 rounds, read 0.515-0.540 of
dense in a process that had just run eight 2-thread search episodes, and 0.494-0.502 in a fresh worker process the
same minutes (two runs of ``python -m scripts.bench_timing_worker``, two pairs each, each side first in turn; a fresh
1-thread process read 0.503-0.517). So verdicts on a budget are timed in a fresh worker process
(:func:`interleaved_rounds`), started once and doing nothing else.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from hardware_models.base import DeviceKind, LatencyStats, Variant
from hardware_models.messages import read_message, write_message
from pruning_core.engine import prune_channels, remove_blocks, top_channels
from pruning_core.errors import PruneGymError
from pruning_core.graph import ModelGraph


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (unchanged when None), then restore."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise PruneGymError(f"threads must be >= 1; got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_callable(
    fn: Callable[[], object],
    *,
    warmup: int,
    runs: int,
    min_seconds: float = 0.0,
    sync: Callable[[], None] | None = None,
) -> list[float]:
    """Milliseconds per call of ``fn``: ``warmup`` untimed calls, then at least ``runs`` (and ``min_seconds``)."""
    return time_interleaved([fn], warmup=warmup, runs=runs, min_seconds=min_seconds, sync=sync)[0]


def time_interleaved(
    fns: list[Callable[[], object]],
    *,
    warmup: int,
    runs: int,
    min_seconds: float = 0.0,
    sync: Callable[[], None] | None = None,
) -> list[list[float]]:
    """Milliseconds per call of each of ``fns``, timed in turn (one call of each per round): ``warmup`` untimed
    calls of each, then at least ``runs`` rounds (and ``min_seconds``)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    if sync is not None:
        sync()
    samples: list[list[float]] = [[] for _ in fns]
    deadline = time.perf_counter() + min_seconds
    while len(samples[0]) < runs or time.perf_counter() < deadline:
        for fn, times in zip(fns, samples, strict=True):
            start = time.perf_counter_ns()
            fn()
            if sync is not None:
                sync()
            times.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def build_variant(graph: ModelGraph, variant: Variant) -> nn.Module:
    """A real pruned copy of ``graph.model`` with the variant's widths (the first channels of each group kept; of
    each slice where grouped convolutions split a group, so that the slices stay equal)."""
    model = copy.deepcopy(graph.model)
    remove_blocks(model, variant.removed_blocks)
    first = {g.name: -torch.arange(g.channels, dtype=torch.float32) for g in graph.groups}  # earlier scores higher
    kept = {
        g.name: top_channels(first[g.name], variant.kept.get(g.name, g.channels), g.channel_groups)
        for g in graph.groups
        if g.block not in variant.removed_blocks
    }
    prune_channels(model, graph.input_shape, kept)
    return model.eval()


class _MeasuredBase:
    """Shared parts of measured latency models: ``predict_variant`` builds the variant and measures it."""

    kind = DeviceKind.MEASURED
    device: str
    runtime: str
    threads: int | None

    def measure(self, model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1) -> LatencyStats:
        raise NotImplementedError

    def predict(self, model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1) -> float:
        return self.measure(model, input_shape, batch_size=batch_size).p50_ms

    def predict_variant(self, graph: ModelGraph, variant: Variant, *, batch_size: int = 1) -> float:
        return self.predict(build_variant(graph, variant), graph.input_shape, batch_size=batch_size)

    def measure_interleaved(
        self, models: list[nn.Module], input_shape: tuple[int, ...], *, batch_size: int = 1
    ) -> list[LatencyStats]:
        """Several models timed in turn, one call of each per round, so host-speed drift hits them alike."""
        raise NotImplementedError

    def _stats(self, samples: list[float], batch_size: int) -> LatencyStats:
        return LatencyStats.from_samples(
            samples, device=self.device, runtime=self.runtime, threads=self.threads, batch_size=batch_size
        )


class TorchLatency(_MeasuredBase):
    """PyTorch eager latency on this host's CPU (``host-cpu``) or GPU (``cuda``).

    Args:
        device: ``cpu`` or ``cuda``.
        threads: CPU intra-op threads while timing (CPU only).
        warmup: Untimed calls first.
        runs: Timed calls at least.
        min_seconds: Keep timing at least this long.
    """

    runtime = "pytorch"

    def __init__(
        self,
        device: str = "cpu",
        *,
        threads: int | None = 1,
        warmup: int = 10,
        runs: int = 50,
        min_seconds: float = 0.0,
    ) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise PruneGymError("device 'cuda' needs a CUDA GPU; none is available here")
        self.torch_device = torch.device(device)
        self.device = "host-cpu" if device == "cpu" else "cuda"
        self.threads = threads if device == "cpu" else None
        self.warmup, self.runs, self.min_seconds = warmup, runs, min_seconds

    def _on_device(self, model: nn.Module) -> nn.Module:
        """The model in eval mode on the timed device; a copy there when that is the GPU, so the caller's model
        stays where it was."""
        model = model.eval()
        first = next(model.parameters(), None)
        if self.torch_device.type != "cuda" or (first is not None and first.device.type == "cuda"):
            return model
        return copy.deepcopy(model).to(self.torch_device)

    def measure(self, model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1) -> LatencyStats:
        """Median and spread of ``runs`` timed forward passes under ``torch.inference_mode()``."""
        model = self._on_device(model)
        inputs = torch.randn(batch_size, *input_shape, device=self.torch_device)
        cuda = self.torch_device.type == "cuda"
        with torch_threads(self.threads), torch.inference_mode():
            if cuda:
                samples = self._time_cuda(model, inputs)
            else:
                samples = time_callable(
                    lambda: model(inputs), warmup=self.warmup, runs=self.runs, min_seconds=self.min_seconds
                )
        return self._stats(samples, batch_size)

    def measure_interleaved(
        self, models: list[nn.Module], input_shape: tuple[int, ...], *, batch_size: int = 1
    ) -> list[LatencyStats]:
        inputs = torch.randn(batch_size, *input_shape, device=self.torch_device)
        models = [self._on_device(m) for m in models]
        sync = torch.cuda.synchronize if self.torch_device.type == "cuda" else None
        with torch_threads(self.threads), torch.inference_mode():
            fns: list[Callable[[], object]] = [functools.partial(m, inputs) for m in models]
            samples = time_interleaved(fns, warmup=self.warmup, runs=self.runs, min_seconds=self.min_seconds, sync=sync)
        return [self._stats(s, batch_size) for s in samples]

    def _time_cuda(self, model: nn.Module, inputs: torch.Tensor) -> list[float]:
        """CUDA events around each call, synchronised, so asynchronous launches are not mistaken for speed."""
        for _ in range(self.warmup):
            model(inputs)
        torch.cuda.synchronize()
        samples = []
        for _ in range(self.runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(inputs)
            end.record()
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
        return samples


def export_for_timing(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, path: Path) -> None:
    """A quick ONNX export for timing (TorchScript exporter: about ten times faster than the dynamo one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.randn(batch_size, *input_shape),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            opset_version=17,
        )


class OrtLatency(_MeasuredBase):
    """ONNX Runtime latency on this host's CPU (``host-cpu-ort``), a real deployment runtime.

    Args:
        threads: ONNX Runtime intra-op threads.
        warmup: Untimed calls first.
        runs: Timed calls at least.
        min_seconds: Keep timing at least this long.
    """

    device = "host-cpu-ort"
    runtime = "onnxruntime"
    threads: int

    def __init__(self, *, threads: int = 1, warmup: int = 10, runs: int = 50, min_seconds: float = 0.0) -> None:
        self.threads, self.warmup, self.runs, self.min_seconds = threads, warmup, runs, min_seconds

    def runner(self, model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> Callable[[], object]:
        """One inference of ``model`` in an ONNX Runtime session."""
        from pruning_core.export import ort_session

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_for_timing(model, input_shape, batch_size, path)
            session = ort_session(path, threads=self.threads)
        feed = {
            session.get_inputs()[0].name: np.random.default_rng(0)
            .standard_normal((batch_size, *input_shape))
            .astype(np.float32)
        }
        return lambda: session.run(None, feed)

    def measure(self, model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1) -> LatencyStats:
        run = self.runner(model, input_shape, batch_size)
        samples = time_callable(run, warmup=self.warmup, runs=self.runs, min_seconds=self.min_seconds)
        return self._stats(samples, batch_size)

    def measure_interleaved(
        self, models: list[nn.Module], input_shape: tuple[int, ...], *, batch_size: int = 1
    ) -> list[LatencyStats]:
        fns = [self.runner(m, input_shape, batch_size) for m in models]
        samples = time_interleaved(fns, warmup=self.warmup, runs=self.runs, min_seconds=self.min_seconds)
        return [self._stats(s, batch_size) for s in samples]


def default_threads() -> int:
    """Threads for host measurement: ``$PRUNEGYM_LATENCY_THREADS`` or 1 (the only setting that is stable here)."""
    return int(os.environ.get("PRUNEGYM_LATENCY_THREADS", "1"))


@dataclass(frozen=True)
class MeasuredDevice:
    """A device this host can time: its runtime, and how to build its measurer from a thread count and runs."""

    runtime: str
    factory: Callable[[int, int, float], TorchLatency | OrtLatency]
    uses_threads: bool = True


MEASURED_DEVICES: dict[str, MeasuredDevice] = {
    "host-cpu": MeasuredDevice(
        "pytorch", lambda threads, runs, least: TorchLatency("cpu", threads=threads, runs=runs, min_seconds=least)
    ),
    "host-cpu-ort": MeasuredDevice(
        "onnxruntime", lambda threads, runs, least: OrtLatency(threads=threads, runs=runs, min_seconds=least)
    ),
    "cuda": MeasuredDevice(
        "pytorch", lambda threads, runs, least: TorchLatency("cuda", runs=runs, min_seconds=least), uses_threads=False
    ),
}
"""The devices this host can time (``host-cpu``, ``host-cpu-ort``, ``cuda``)."""


MEASURE_MIN_SECONDS = 0.25
"""Time per measurement, at least, of the measured latency an environment reports (a finished model's latency,
taken as the median of several such measurements beside the dense model): a small model's 50 calls are otherwise
over in a few hundredths of a second."""


def measurer_for(
    device: str, *, threads: int | None = None, runs: int = 50, min_seconds: float = 0.0
) -> TorchLatency | OrtLatency:
    """The measured latency model of a device this host can time.

    Args:
        device: A key of :data:`MEASURED_DEVICES`.
        threads: CPU threads while timing (:func:`default_threads` when None; ignored on ``cuda``).
        runs: Timed calls per measurement, at least.
        min_seconds: Time per measurement, at least (for small models, whose ``runs`` calls are over in
            milliseconds: 50 calls of small_cnn take about 0.03 s here).
    """
    if device not in MEASURED_DEVICES:
        raise PruneGymError(f"measured device must be one of {', '.join(MEASURED_DEVICES)}; got {device!r}")
    return MEASURED_DEVICES[device].factory(default_threads() if threads is None else threads, runs, min_seconds)


def time_rounds(
    measurer: TorchLatency | OrtLatency,
    models: list[nn.Module],
    input_shape: tuple[int, ...],
    rounds: int,
    batch_size: int = 1,
) -> list[list[LatencyStats]]:
    """``rounds`` calls of ``measurer.measure_interleaved`` on ``models``, in this process."""
    return [measurer.measure_interleaved(models, input_shape, batch_size=batch_size) for _ in range(rounds)]


class _TimingWorker:
    """The fresh process of :mod:`hardware_models.timing_worker`, spoken to through its stdin and stdout."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])  # importable from wherever the caller runs
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hardware_models.timing_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def time(self, request: bytes) -> list[list[LatencyStats]] | None:
        """The worker's reply to one request; None when it has stopped."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            write_message(self.process.stdin, request)
        except (BrokenPipeError, OSError):
            return None
        reply = read_message(self.process.stdout)
        if reply is None:
            return None
        status, value = pickle.loads(reply)
        if status != "ok":
            raise PruneGymError(f"the timing worker could not time the models: {value}")
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the worker exits at the end of its input
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


_WORKER: _TimingWorker | None = None


def _stop_worker() -> None:
    global _WORKER
    if _WORKER is not None:
        _WORKER.close()
        _WORKER = None


atexit.register(_stop_worker)


class Rounds(NamedTuple):
    """Interleaved measurements of several models: per round, one :class:`LatencyStats` per model, and whether they
    were taken in the timing worker process (``False``: in this process)."""

    stats: list[list[LatencyStats]]
    in_worker: bool


def interleaved_rounds(
    measurer: TorchLatency | OrtLatency,
    models: list[nn.Module],
    input_shape: tuple[int, ...],
    *,
    rounds: int,
    batch_size: int = 1,
    in_worker: bool = True,
) -> Rounds:
    """``rounds`` interleaved measurements of ``models``, timed in a fresh worker process where possible.

    The worker (:mod:`hardware_models.timing_worker`) is started on first use (a few seconds: it imports torch) and
    kept: a process that has trained or searched before it times reads pruned models as slower, relative to dense,
    than a fresh one (see the module docstring). Models reach it as a plain pickle, a copy; a model that cannot be
    pickled (a lambda in it, say), and every GPU measurement, is timed here instead, with a warning for the former.

    Args:
        measurer: How to time (its device, runtime, threads, runs).
        models: Models timed in turn in each round.
        input_shape: One input's shape, without the batch dimension.
        rounds: Measurements of all models.
        batch_size: Inputs per call.
        in_worker: False to time in this process.

    Raises:
        PruneGymError: The worker could not time the models (a model's forward pass failed there).
    """
    global _WORKER
    if in_worker and not (isinstance(measurer, TorchLatency) and measurer.torch_device.type == "cuda"):
        try:
            models = [m.eval() for m in models]
            request = pickle.dumps(
                (measurer, models, input_shape, rounds, batch_size), protocol=pickle.HIGHEST_PROTOCOL
            )
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            warnings.warn(
                f"timing in this process: the models cannot be pickled for the timing worker ({exc})", stacklevel=2
            )
        else:
            if _WORKER is None:
                _WORKER = _TimingWorker()
            stats = _WORKER.time(request)
            if stats is not None:
                return Rounds(stats, True)
            _stop_worker()
            warnings.warn(
                "timing in this process: the timing worker stopped (its error is printed above)", stacklevel=2
            )
    return Rounds(time_rounds(measurer, models, input_shape, rounds, batch_size), False)


class BesideDense(NamedTuple):
    """Models timed beside a dense one (:func:`ratios_beside_dense`): per model its ratio to dense and its latency
    (ms) in each round, the dense model's latency per round (the mean of its two readings), and whether the timing
    worker took them."""

    ratios: list[list[float]]
    model_ms: list[list[float]]
    dense_ms: list[float]
    in_worker: bool


def ratios_beside_dense(
    measurer: TorchLatency | OrtLatency,
    dense: nn.Module,
    models: list[nn.Module],
    input_shape: tuple[int, ...],
    *,
    rounds: int,
    in_worker: bool = True,
) -> BesideDense:
    """Each model's latency relative to ``dense``, in every round of one interleaved pass.

    Every round times the dense model first and last and ``models`` in turn between (:func:`interleaved_rounds`,
    in the timing worker unless ``in_worker`` is False); a model's ratio is to the dense reading interpolated at its
    place in the round, since the host's pace drifts within a round of many models.
    """
    timed = [dense, *models, copy.deepcopy(dense)]
    last = len(timed) - 1
    taken = interleaved_rounds(measurer, timed, input_shape, rounds=rounds, in_worker=in_worker)
    stats = taken.stats
    return BesideDense(
        ratios=[
            [r[i].p50_ms / (r[0].p50_ms + (r[last].p50_ms - r[0].p50_ms) * i / last) for r in stats]
            for i in range(1, last)
        ],
        model_ms=[[r[i].p50_ms for r in stats] for i in range(1, last)],
        dense_ms=[(r[0].p50_ms + r[last].p50_ms) / 2 for r in stats],
        in_worker=taken.in_worker,
    )
