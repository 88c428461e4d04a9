"""Per-layer latency lookup tables (NetAdapt, ECCV 2018), built by profiling on the target device.

A table holds, for each distinct layer shape of a model (kind, kernel, stride, input size, widest channel counts),
the latency of that layer (conv + BatchNorm + ReLU, or linear) on a grid of input and output channel counts.
A prediction sums the layers of a variant, interpolating bilinearly between grid points, and maps the sum through a
calibration fitted on whole models measured while building the table (dense, every group at 90% sparsity, and 24
random variants): ``latency = curvature * sum**2 + scale * sum + overhead``. The calibration carries what per-layer
sums miss (residual additions, pooling, per-call dispatch, weights that stay in cache when a layer is timed alone).
Measured here, whole-model latency is slightly concave in the layer sum: a straight line through the dense model
and the thinnest variant under-predicted typical pruned variants relative to dense by 3-7%. The quadratic term is
kept only where it stays increasing over the calibrated range; otherwise the fit falls back to a line. Outside the
calibrated range (table sums below the thinnest calibration model's or above the dense model's) the calibration
continues as the straight line tangent to it at the range's end: a quadratic fitted to a range bends on beyond it.
The thinnest calibration model has every group at the environment's largest sparsity (0.9), so a search stays
inside the range: with the thinnest at 80%, plans at a budget of 0.5 on small_cnn went below it, where the concave
curve fell away, and measured 0.53-0.55 of dense against a predicted 0.50.

Layer grids are blended with a cost model fitted to each (``a + b c_in c_out + c c_in + d c_out``,
:func:`fit_layer_grid`). Each grid point is one noisy measurement, and its error reaches every variant that uses
the layer at that width: on resnet56 with PyTorch the measured grids ranked 50 validated variants with Spearman 0.93
and the fitted ones with 0.96, while with ONNX Runtime, whose kernel choice makes real steps in width, the measured
grids ranked better (0.92 against 0.87). A build therefore chooses the blend (:data:`TABLE_FIT_WEIGHTS`) whose
calibration predicts each calibration model best when that model is left out of the fit, and records the choice
and the measured grids in the table.

A table is JSON with its device, runtime, threads, batch size, library versions and schema version, so it can be
built on any machine that has PyTorch (or ONNX Runtime) and copied back.

Channel granule. CPU kernels block channels: measured here, a 3x3 conv at 32x32 costs the same for 33 and 48
channels with PyTorch (oneDNN blocks of 16), and with ONNX Runtime 63 channels cost 50% more than 64 (widths that
are not a multiple of 8 leave the blocked NCHWc kernels). Latency is a staircase in width, which no interpolation
between sparse grid points follows. A table therefore profiles widths that are multiples of its ``granule`` and
searches keep every pruned width a multiple of it (:attr:`LookupTable.granule`; a quarter of the group for narrow
groups, whose small convolutions run unblocked and smoothly): the table is exact where the search goes, and no
channel is pruned for a width the hardware does not run faster.

Channel blocks. Wide layers are profiled at coarser steps than the granule (``grid_points`` per dimension), and
interpolating between two profiled widths assumes latency is smooth between them. Where the kernels compute channels
in blocks of 16, a width of 40 costs what 48 costs, not the midpoint of 32 and 48. A table may therefore read every
width rounded up to a multiple of :attr:`LookupTable.block` (capped at the layer's full width). A build chooses the
block from :data:`TABLE_BLOCKS` on whole models, as it chooses the blend: measured here on the session-5 tables and
their validation sets, rounding to 16 brought mobilenetv2's calibration leave-one-out error from 3.3% to 2.7% and its
Spearman on 50 variants from 0.881 to 0.901, while on resnet56, whose narrow layers run unblocked, it raised the
error from 2.7% to 6.9%, so resnet56 keeps block 1. A table with a block keeps searches to widths it tells apart:
its granule becomes a multiple of the block (the granule it was profiled at stays in ``meta``).
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hardware_models.base import DeviceKind, Variant
from hardware_models.measure import (
    MEASURED_DEVICES,
    OrtLatency,
    build_variant,
    default_threads,
    measurer_for,
    time_callable,
    torch_threads,
)
from pruning_core.data import atomic_write_bytes
from pruning_core.engine import group_kept, width_step
from pruning_core.errors import PruneGymError
from pruning_core.graph import ModelGraph
from pruning_core.metrics import LayerRecord, LayerwiseCost

LUT_SCHEMA_VERSION = 3
"""2: layer tables may carry ``measured_ms`` beside a blended ``latency_ms``; 3: a channel ``block``. Older tables
still load (block 1)."""
DEFAULT_GRANULE = 8
"""Channel step of a table unless told otherwise (see the module's notes)."""
DEFAULT_CALIBRATION_VARIANTS = 24
"""Random pruned variants measured whole for a table's calibration, beside the dense and the thinnest model."""
BUILD_METHOD = 8
"""Version of how tables are profiled and calibrated (3: round-robin sweeps, quadratic calibration on 26 models;
4: layer grids blended with their fitted cost model, the blend chosen on the calibration models; 5: the fit's
channel terms bounded at zero; 6: the channel block chosen on the calibration models; 7: the thinnest calibration
model at the search's largest sparsity, 0.9, instead of 0.8; 8: each calibration model timed at least
:data:`CALIBRATION_MIN_SECONDS`); caches of built tables include it in their key, so a better method replaces tables
built by an older one."""
CALIBRATION_MIN_SECONDS = 0.5
"""Each calibration model is timed (beside the dense model) for at least this long. Its ``calibration_runs`` calls
alone take about 0.07 s for small_cnn, and the tables calibrated so under-predicted the plans that the digits
benchmark searched at a budget of 0.6 by 8-10% (median measured / predicted of 27 plans, two tables); timed half a
second, by 4-6%. Larger models take longer than this anyway."""
THINNEST_SPARSITY = 0.9
"""Sparsity of every group in the thinnest calibration model: the environment's default ``max_sparsity``, so that
the plans a search makes stay inside the calibrated range."""
TABLE_FIT_WEIGHTS = (0.0, 0.5, 1.0)
"""Blends of the measured layer grids with their fitted cost models that a build chooses among (0: as measured)."""
TABLE_BLOCKS = (1, 16)
"""Channel blocks a build chooses among (see the module's notes; 1: widths read as they are)."""


def grid_counts(channels: int, points: int, granule: int = 1, *, channel_groups: int = 1) -> list[int]:
    """Channel counts profiled for a layer of ``channels``: about ``points`` even steps that are multiples of the
    group's width step (:func:`~pruning_core.engine.width_step`), the smallest width a search keeps and the full one.
    A grouped convolution's counts are multiples of its ``channel_groups``.

    >>> grid_counts(64, 4), grid_counts(64, 8, granule=8), grid_counts(144, 8, granule=8), grid_counts(16, 8, 8)
    ([1, 16, 32, 48, 64], [8, 16, 24, 32, 40, 48, 56, 64], [8, 16, 32, 48, 64, 80, 96, 112, 128, 144], [4, 8, 12, 16])
    >>> grid_counts(128, 4, 8, channel_groups=32)
    [32, 64, 96, 128]
    """
    unit = width_step(channels, granule, channel_groups=channel_groups)
    if unit == 1:
        return sorted({1, *(max(1, round(channels * i / points)) for i in range(1, points + 1))})
    step = unit * max(1, round(channels / (points * unit)))
    return sorted({unit, *range(step, channels, step), channels})


def layer_signature(record: LayerRecord, kind: str, variable_in: bool, variable_out: bool) -> str:
    """Key of a layer shape in the table: equal signatures share one grid of measurements."""
    return (
        f"{kind}:k{record.kernel}:s{record.stride}:in{record.input_hw[0]}x{record.input_hw[1]}"
        f":out{record.output_hw[0]}x{record.output_hw[1]}:c{record.in_channels}x{record.out_channels}"
        f":var{int(variable_in)}{int(variable_out)}" + (f":g{record.groups}" if kind == "gconv" else "")
    )


def _layer_kind(graph: ModelGraph, name: str) -> str:
    module = graph.model.get_submodule(name)
    if isinstance(module, nn.Linear):
        return "linear"
    record = graph.layers[name]
    if record.groups > 1 and record.groups == record.in_channels:
        return "dwconv"
    return "gconv" if record.groups > 1 else "conv"  # grouped: pruned widths keep its groups


@dataclass
class LayerTable:
    """Latency (ms) of one layer shape over a grid of (input, output) channel counts: as measured, or blended with
    its fitted cost model (then ``measured_ms`` holds the measurement)."""

    kind: str
    kernel: int
    stride: int
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    in_counts: list[int]
    out_counts: list[int]
    latency_ms: list[list[float]]  # [len(in_counts)][len(out_counts)]; depthwise: in == out, one row
    measured_ms: list[list[float]] | None = None
    """The grid as profiled, where ``latency_ms`` is blended with its fitted cost model (see :func:`fit_layer_grid`)."""

    def lookup(self, c_in: float, c_out: float) -> float:
        """Bilinear interpolation on the grid (clamped to its ends); pure Python, as it runs at every env step."""
        grid = self.latency_ms
        if self.kind == "dwconv" or len(self.in_counts) == 1:
            return _interp(c_out, self.out_counts, grid[0])
        if len(self.out_counts) == 1:
            return _interp(c_in, self.in_counts, [row[0] for row in grid])
        i, tx = _bracket(c_in, self.in_counts)
        j, ty = _bracket(c_out, self.out_counts)
        top = grid[i][j] * (1 - ty) + grid[i][j + 1] * ty
        bottom = grid[i + 1][j] * (1 - ty) + grid[i + 1][j + 1] * ty
        return top * (1 - tx) + bottom * tx


def fit_layer_grid(table: LayerTable) -> list[list[float]]:
    """The layer's grid as a least-squares cost model: ``a + b * c_in * c_out + c * c_in + d * c_out`` (depthwise
    and one-dimensional grids: ``a + b * c``), which follows MACs and per-channel memory traffic but not the noise of
    single measurements. The channel terms are bounded at zero, so a thinner layer is never fitted slower (the
    budget guarantee relies on it), also where a launch-bound grid is flat or noisy.

    >>> exact = [[0.76, 1.24], [1.16, 1.96], [1.56, 2.68]]  # 0.2 + 0.005 c_in c_out + 0.01 c_in + 0.02 c_out
    >>> t = LayerTable("conv", 3, 1, (8, 8), (8, 8), [8, 16, 24], [8, 16], exact)
    >>> [[round(v, 2) for v in row] for row in fit_layer_grid(t)]
    [[0.76, 1.24], [1.16, 1.96], [1.56, 2.68]]
    """
    grid = np.asarray(table.latency_ms if table.measured_ms is None else table.measured_ms, dtype=float)
    ins = np.asarray(table.in_counts, dtype=float)
    outs = np.asarray(table.out_counts, dtype=float)
    if table.kind == "dwconv" or grid.shape[0] == 1:
        features = [np.broadcast_to(outs, grid.shape)]
    elif grid.shape[1] == 1:
        features = [np.broadcast_to(ins[:, None], grid.shape)]
    else:
        c_in, c_out = np.meshgrid(ins, outs, indexing="ij")
        features = [c_in * c_out, c_in, c_out]
    design = np.stack([f.ravel() for f in features] + [np.ones(grid.size)], axis=1)
    if grid.size <= design.shape[1]:
        return grid.tolist()  # too few points to fit: keep the measurement
    from scipy.optimize import lsq_linear

    lower = [0.0] * (design.shape[1] - 1) + [-np.inf]  # channel terms >= 0, the intercept free
    coefs = lsq_linear(design, grid.ravel(), bounds=(lower, np.inf)).x
    return (design @ coefs).reshape(grid.shape).tolist()


def _bracket(x: float, points: list[int]) -> tuple[int, float]:
    """Index ``i`` of the grid cell ``[points[i], points[i + 1]]`` holding ``x`` and the position inside it.

    >>> _bracket(24, [8, 16, 32]), _bracket(100, [8, 16, 32])
    ((1, 0.5), (1, 1.0))
    """
    i = min(max(bisect.bisect_right(points, x) - 1, 0), len(points) - 2)
    t = (x - points[i]) / (points[i + 1] - points[i])
    return i, min(max(t, 0.0), 1.0)


def _interp(x: float, points: list[int], values: list[float]) -> float:
    if len(points) == 1:
        return values[0]
    i, t = _bracket(x, points)
    return values[i] * (1 - t) + values[i + 1] * t


def _unit(kind: str, record: LayerRecord, c_in: int, c_out: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The module profiled for one grid point and the shape of its input (without batch)."""
    if kind == "linear":
        return nn.Linear(c_in, c_out), (c_in,)
    groups = {"dwconv": c_in, "gconv": record.groups}.get(kind, 1)
    conv = nn.Conv2d(c_in, c_out, record.kernel, record.stride, record.kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)).eval(), (c_in, *record.input_hw)


@dataclass
class LookupTable(LayerwiseCost):
    """A latency lookup table for one device and runtime.

    Attributes:
        device: Device the table was profiled on.
        runtime: ``pytorch`` or ``onnxruntime``.
        threads: Threads used while profiling.
        batch_size: Batch size profiled.
        tables: Layer tables keyed by layer signature.
        scale: Calibration slope (whole-model latency per ms of summed layer latency). Outside the range of table
            sums in ``calibration`` the calibration continues as its tangent at the range's end.
        overhead_ms: Calibration intercept: per-model time the layer sum misses (negative where the layer sums
            over-count, as for mobilenetv2's many small layers).
        curvature: Calibration's quadratic term (per ms of summed layer latency, squared); 0 for a line.
        calibration: Whole-model measurements the calibration was fitted on.
        meta: Library versions, host, model, build time.
        granule: Widths are profiled at multiples of this; searches keep pruned widths at multiples of it.
        block: Widths are read rounded up to a multiple of this, capped at the layer's full width (see the module's
            notes on channel blocks).
        schema_version: JSON layout version.
    """

    is_latency = True
    device: str
    runtime: str
    threads: int | None
    batch_size: int
    tables: dict[str, LayerTable]
    scale: float = 1.0
    overhead_ms: float = 0.0
    curvature: float = 0.0
    calibration: list[dict[str, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    granule: int = 1
    block: int = 1
    schema_version: int = LUT_SCHEMA_VERSION
    kind = DeviceKind.LOOKUP_TABLE

    def __post_init__(self) -> None:
        self._plans: dict[int, dict[str, LayerTable]] = {}
        sums = [point["table_sum_ms"] for point in self.calibration]
        self._range = (min(sums), max(sums)) if sums else None

    def calibrate(self, sums: np.ndarray, measured: np.ndarray) -> None:
        """Fit the calibration (:func:`fit_calibration`) to whole models' table sums and measured latencies (ms),
        and keep them: their range is where the quadratic holds."""
        self.curvature, self.scale, self.overhead_ms = fit_calibration(sums, measured)
        self.calibration = [
            {"table_sum_ms": float(total), "measured_ms": float(ms)} for total, ms in zip(sums, measured, strict=True)
        ]
        self._range = (float(sums.min()), float(sums.max()))

    def _tables_of(self, graph: ModelGraph) -> dict[str, LayerTable]:
        """Each layer of ``graph`` with its table (computed once per graph)."""
        key = id(graph)
        if key not in self._plans:
            rows = {}
            for name, record in sorted(graph.layers.items(), key=lambda item: item[1].order):
                signature = layer_signature(
                    record, _layer_kind(graph, name), name in graph.in_group, name in graph.out_group
                )
                if signature not in self.tables:
                    raise PruneGymError(
                        f"lookup table lacks layer {name} ({signature}); build one for this model with "
                        f"`prunegym lut build --model ...`"
                    )
                rows[name] = self.tables[signature]
            self._plans[key] = rows
        return self._plans[key]

    def layer_cost(self, graph: ModelGraph, name: str, c_in: int, c_out: int) -> float:
        """Table latency (ms) of one layer at the given widths, before calibration."""
        if self.block > 1:
            record = graph.layers[name]
            c_in = min(record.in_channels, math.ceil(c_in / self.block) * self.block)
            c_out = min(record.out_channels, math.ceil(c_out / self.block) * self.block)
        return self._tables_of(graph)[name].lookup(c_in, c_out)

    def combine(self, raw_sum: float) -> float:
        """The calibrated latency of a table sum: the quadratic inside the calibrated range, its tangent beyond."""
        end = raw_sum
        if self._range is not None:
            end = min(max(raw_sum, self._range[0]), self._range[1])
        at_end = (self.curvature * end + self.scale) * end + self.overhead_ms
        return at_end + (2 * self.curvature * end + self.scale) * (raw_sum - end)

    def raw_sum(self, graph: ModelGraph, variant: Variant) -> float:
        return sum(self.layer_costs(graph, variant.kept, variant.removed_blocks).values())

    def predict_variant(self, graph: ModelGraph, variant: Variant, *, batch_size: int = 1) -> float:
        """Calibrated latency (ms) of a variant."""
        if batch_size != self.batch_size:
            raise PruneGymError(f"lookup table was profiled at batch size {self.batch_size}; got {batch_size}")
        return self.total(graph, variant.kept, variant.removed_blocks)

    def predict(self, model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1) -> float:
        """Latency of an arbitrary model whose layer shapes are in the table."""
        return self.predict_variant(ModelGraph(model, input_shape), Variant(), batch_size=batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "device": self.device,
            "runtime": self.runtime,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "scale": self.scale,
            "overhead_ms": self.overhead_ms,
            "curvature": self.curvature,
            "granule": self.granule,
            "block": self.block,
            "calibration": self.calibration,
            "meta": self.meta,
            "tables": {key: asdict(table) for key, table in self.tables.items()},
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as JSON, atomically."""
        atomic_write_bytes(Path(path), lambda tmp: tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LookupTable:
        path = Path(path)
        if not path.is_file():
            raise PruneGymError(f"lookup table {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PruneGymError(f"lookup table {path} is not valid JSON: {exc}") from None
        version = data.get("schema_version", 0)
        if version > LUT_SCHEMA_VERSION or "tables" not in data:
            raise PruneGymError(f"{path} is not a lookup table of schema <= {LUT_SCHEMA_VERSION}; got {version}")
        tables = {
            key: LayerTable(**{**t, "input_hw": tuple(t["input_hw"]), "output_hw": tuple(t["output_hw"])})
            for key, t in data["tables"].items()
        }
        table = cls(
            device=data["device"],
            runtime=data["runtime"],
            threads=data["threads"],
            batch_size=data["batch_size"],
            tables=tables,
            scale=data["scale"],
            overhead_ms=data["overhead_ms"],
            curvature=float(data.get("curvature", 0.0)),
            calibration=data["calibration"],
            meta=data.get("meta", {}),
            granule=int(data.get("granule", 1)),
            block=int(data.get("block", 1)),
            schema_version=version,
        )
        table.meta.setdefault("path", str(path))
        return table


def random_variant(graph: ModelGraph, rng: random.Random, max_sparsity: float = 0.8, granule: int = 1) -> Variant:
    """Per-group sparsity uniform in [0, max_sparsity], the kept width rounded to a multiple of ``granule``."""
    return Variant(kept={g.name: group_kept(g, rng.uniform(0, max_sparsity), granule) for g in graph.groups})


def profile_units(
    units: list[tuple[nn.Module, tuple[int, ...]]],
    *,
    runtime: str,
    threads: int | None,
    batch_size: int,
    device: str = "cpu",
    sweeps: int = 5,
    runs: int = 5,
    min_seconds: float = 0.004,
    progress: Callable[[], None] | None = None,
) -> list[float]:
    """Median milliseconds of each unit module, timed in ``sweeps`` round-robin passes over all of them.

    The host's speed drifts over seconds (see ``scripts/latency_noise.py``). Timing each unit once, one after the
    other, would hand a slow spell to whichever layers were being profiled then, and bias every variant that keeps
    those layers wide. Timing all units in several passes and taking each unit's median over the passes spreads
    a spell over every unit alike.

    Args:
        units: Modules and the shape of one input.
        runtime: ``pytorch`` (eager) or ``onnxruntime``.
        threads: Threads while timing.
        batch_size: Inputs per call.
        device: Torch device of the ``pytorch`` runtime (``cpu`` or ``cuda``; on ``cuda`` every call is timed to
            its synchronisation, so asynchronous launches are not mistaken for speed).
        sweeps: Passes over all units.
        runs: Timed calls of a unit per pass (at least; and at least ``min_seconds``).
        min_seconds: Time of a unit per pass, at least.
        progress: Called once per unit and pass.
    """
    fns: list[Callable[[], object]]
    sync: Callable[[], None] | None = None
    if runtime == "pytorch":
        fns = [
            functools.partial(module.eval().to(device), torch.randn(batch_size, *shape, device=device))
            for module, shape in units
        ]
        if torch.device(device).type == "cuda":
            sync = torch.cuda.synchronize
    elif runtime == "onnxruntime":
        ort = OrtLatency(threads=threads or 1)
        fns = [ort.runner(module, shape, batch_size) for module, shape in units]
    else:
        raise PruneGymError(f"runtime must be pytorch or onnxruntime; got {runtime!r}")
    medians: list[list[float]] = [[] for _ in fns]
    with torch_threads(threads), torch.inference_mode():
        for sweep in range(sweeps):
            for fn, unit_medians in zip(fns, medians, strict=True):
                samples = time_callable(
                    fn, warmup=3 if sweep == 0 else 1, runs=runs, min_seconds=min_seconds, sync=sync
                )
                unit_medians.append(float(np.median(samples)))
                if progress is not None:
                    progress()
    return [float(np.median(m)) for m in medians]


def build_lut(
    graph: ModelGraph,
    *,
    device: str,
    threads: int | None = 1,
    batch_size: int = 1,
    grid_points: int = 8,
    granule: int = DEFAULT_GRANULE,
    calibration_variants: int = DEFAULT_CALIBRATION_VARIANTS,
    sweeps: int = 5,
    calibration_runs: int = 60,
    seed: int = 0,
    progress: bool = True,
    model_name: str | None = None,
) -> LookupTable:
    """Profile every layer shape of ``graph.model`` on this host and calibrate on whole models.

    Args:
        graph: The dense model's graph.
        device: ``host-cpu`` (PyTorch eager), ``host-cpu-ort`` (ONNX Runtime) or ``cuda`` (PyTorch eager on this
            host's GPU); recorded in the table.
        threads: CPU threads while profiling and calibrating (:func:`~hardware_models.measure.default_threads` when
            None; ignored on ``cuda``).
        batch_size: Batch size profiled.
        grid_points: Channel counts profiled per dimension (about; plus the smallest and the full width).
        granule: Profiled widths are multiples of this (see the module's notes); 1 profiles any width.
        calibration_variants: Random pruned variants measured whole, beside the dense model, for the calibration.
        sweeps: Round-robin passes over all layer entries (see :func:`profile_units`).
        calibration_runs: Timed calls of each calibration model (interleaved with the dense model's).
        seed: Seed of those variants.
        progress: Show a progress bar.
        model_name: Name recorded in the table's metadata.
    """
    from tqdm import tqdm

    if device not in MEASURED_DEVICES:
        raise PruneGymError(f"device must be one of {', '.join(MEASURED_DEVICES)}; got {device!r}")
    if calibration_variants < 2:
        raise PruneGymError(f"calibration_variants must be >= 2; got {calibration_variants}")
    if sweeps < 1 or calibration_runs < 1:
        raise PruneGymError(f"sweeps and calibration_runs must be >= 1; got {sweeps} and {calibration_runs}")
    runtime = MEASURED_DEVICES[device].runtime
    torch_device = "cuda" if device == "cuda" else "cpu"
    # profiling and calibration run with the same threads, and the table records them
    threads = (default_threads() if threads is None else threads) if MEASURED_DEVICES[device].uses_threads else None
    # the measurer checks the device first: a table for a GPU this host lacks fails before any profiling
    measurer = measurer_for(device, threads=threads, runs=calibration_runs, min_seconds=CALIBRATION_MIN_SECONDS)
    start = time.perf_counter()
    todo: dict[str, tuple[str, LayerRecord, list[int], list[int]]] = {}
    for name, record in graph.layers.items():
        kind = _layer_kind(graph, name)
        var_in, var_out = name in graph.in_group, name in graph.out_group
        signature = layer_signature(record, kind, var_in, var_out)
        if signature in todo:
            continue
        slices = record.groups if kind == "gconv" else 1
        outs = (
            grid_counts(record.out_channels, grid_points, granule, channel_groups=slices)
            if var_out
            else [record.out_channels]
        )
        ins = (
            [0]
            if kind == "dwconv"
            else (
                grid_counts(record.in_channels, grid_points, granule, channel_groups=slices)
                if var_in
                else [record.in_channels]
            )
        )
        todo[signature] = (kind, record, ins, outs)
    entries = [
        (signature, c_in, c_out) for signature, (_, _, ins, outs) in todo.items() for c_in in ins for c_out in outs
    ]
    units = []
    for signature, c_in, c_out in entries:
        kind, record = todo[signature][:2]
        units.append(_unit(kind, record, c_out if kind == "dwconv" else c_in, c_out))
    with tqdm(
        total=len(units) * sweeps, desc=f"profiling layers on {device}", unit="entry", disable=not progress
    ) as bar:
        times = profile_units(
            units,
            runtime=runtime,
            threads=threads,
            batch_size=batch_size,
            device=torch_device,
            sweeps=sweeps,
            progress=bar.update,
        )
    measured_entries = dict(zip(entries, times, strict=True))
    tables: dict[str, LayerTable] = {}
    for signature, (kind, record, ins, outs) in todo.items():
        tables[signature] = LayerTable(
            kind,
            record.kernel,
            record.stride,
            record.input_hw,
            record.output_hw,
            outs if kind == "dwconv" else ins,
            outs,
            [[measured_entries[(signature, c_in, c_out)] for c_out in outs] for c_in in ins],
        )
    total = len(entries)
    lut = LookupTable(
        device=device, runtime=runtime, threads=threads, batch_size=batch_size, tables=tables, granule=granule
    )
    rng = random.Random(seed)
    # Anchor both ends of the range the search explores (dense, and every group at the search's largest sparsity)
    # so the fitted per-model overhead cannot drift far from what the thinnest variants really take.
    thinnest = Variant(kept={g.name: group_kept(g, THINNEST_SPARSITY, granule) for g in graph.groups})
    variants = [
        Variant(),
        thinnest,
        *(random_variant(graph, rng, granule=granule) for _ in range(calibration_variants)),
    ]
    models = [build_variant(graph, variant) for variant in variants]
    # Each variant is timed in turn with the dense model (as a budget compares them, and as `validate` does), and
    # its latency taken as its ratio to that dense measurement times the dense model's median: a slow spell of the
    # host cancels out of every point, and only two models share the caches, as when one model runs alone.
    pairs = [
        [s.p50_ms for s in measurer.measure_interleaved([models[0], m], graph.input_shape, batch_size=batch_size)]
        for m in tqdm(models[1:], desc="calibrating", disable=not progress)
    ]
    dense_ms = float(np.median([dense for dense, _ in pairs]))
    measured = np.array([dense_ms] + [dense_ms * ms / dense for dense, ms in pairs])
    weight, errors = choose_table_fit(lut, graph, variants, measured)
    lut.block, block_errors = choose_block(lut, graph, variants, measured)
    # searches keep widths the table tells apart: with channel blocks, a width between two blocks costs the upper one
    lut.granule = math.lcm(lut.granule, lut.block)
    lut.calibrate(np.array([lut.raw_sum(graph, v) for v in variants]), measured)
    lut.meta = {
        "model": model_name,
        "input_shape": list(graph.input_shape),
        "entries": total,
        "sweeps": sweeps,
        "calibration_runs": calibration_runs,
        "build_seconds": time.perf_counter() - start,
        "host": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "versions": _versions(runtime),
        **({"gpu": torch.cuda.get_device_name()} if device == "cuda" else {}),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "table_fit": {  # chosen with block 1, before the block
            "weight": weight,
            "leave_one_out_rel_rmse": {str(w): e for w, e in errors.items()},
        },
        "profiled_granule": granule,
        "block_fit": {"block": lut.block, "leave_one_out_rel_rmse": {str(b): e for b, e in block_errors.items()}},
    }
    return lut


def choose_table_fit(
    lut: LookupTable, graph: ModelGraph, variants: list[Variant], measured: np.ndarray
) -> tuple[float, dict[float, float]]:
    """Blend ``lut``'s layer grids with their fitted cost models (:func:`fit_layer_grid`) at the weight of
    :data:`TABLE_FIT_WEIGHTS` that predicts the ``measured`` whole-model latencies of ``variants`` best, each left
    out of its own calibration (:func:`leave_one_out_error`); ties go to the measured grids.

    Single layer measurements carry the host's noise into every variant that uses them, where a fitted cost model
    per layer shape does not (but misses real steps, as ONNX Runtime's kernel choices): which predicts whole models
    better is decided on whole models. Returns the weight and the error of every weight tried.
    """
    measured_grids = {
        signature: table.latency_ms if table.measured_ms is None else table.measured_ms
        for signature, table in lut.tables.items()
    }
    fitted_grids = {signature: fit_layer_grid(table) for signature, table in lut.tables.items()}

    def blend(weight: float) -> None:
        for signature, table in lut.tables.items():
            grid = weight * np.asarray(fitted_grids[signature]) + (1 - weight) * np.asarray(measured_grids[signature])
            table.latency_ms = grid.tolist()
            table.measured_ms = measured_grids[signature] if weight > 0 else None

    errors: dict[float, float] = {}
    for weight in TABLE_FIT_WEIGHTS:
        blend(weight)
        errors[weight] = _calibration_error(lut, graph, variants, measured)
    best = min(TABLE_FIT_WEIGHTS, key=lambda w: errors[w])
    blend(best)
    return best, errors


def choose_block(
    lut: LookupTable, graph: ModelGraph, variants: list[Variant], measured: np.ndarray
) -> tuple[int, dict[int, float]]:
    """The channel block of :data:`TABLE_BLOCKS` whose table sums predict the ``measured`` whole-model latencies of
    ``variants`` best, each left out of its own calibration (:func:`leave_one_out_error`); ties go to block 1.

    Returns the block and the error of every block tried; ``lut.block`` is left as it was.
    """
    before = lut.block
    errors: dict[int, float] = {}
    try:
        for block in TABLE_BLOCKS:
            lut.block = block
            errors[block] = _calibration_error(lut, graph, variants, measured)
    finally:
        lut.block = before
    return min(TABLE_BLOCKS, key=lambda b: errors[b]), errors


def _calibration_error(lut: LookupTable, graph: ModelGraph, variants: list[Variant], measured: np.ndarray) -> float:
    """How well ``lut``'s layer sums, calibrated, predict the measured variants (:func:`leave_one_out_error`)."""
    return leave_one_out_error(np.array([lut.raw_sum(graph, v) for v in variants]), measured)


def leave_one_out_error(sums: np.ndarray, measured: np.ndarray) -> float:
    """Root mean square relative error of each model's latency predicted by the calibration fitted on the others.

    >>> sums = np.array([1.0, 2.0, 3.0, 4.0])
    >>> round(leave_one_out_error(sums, 2 * sums + 1), 6)
    0.0
    """
    if len(sums) < 4:
        raise PruneGymError(f"expected at least 4 calibration models to leave one out; got {len(sums)}")
    errors = []
    for i in range(len(sums)):
        keep = np.arange(len(sums)) != i
        curvature, scale, overhead = fit_calibration(sums[keep], measured[keep])
        errors.append(((curvature * sums[i] + scale) * sums[i] + overhead) / measured[i] - 1)
    return float(np.sqrt(np.mean(np.square(errors))))


def fit_calibration(sums: np.ndarray, measured: np.ndarray) -> tuple[float, float, float]:
    """``(curvature, scale, overhead)`` mapping summed layer latencies to measured whole-model latencies.

    The layers and the whole models are timed seconds apart and the host's speed drifts between the two, so the
    slope is fitted, not assumed to be 1. A quadratic is tried first (with 6 points or more), then a line; a fit is
    accepted only if it is increasing and positive from half the smallest sum to the largest (a thinner model must
    never be predicted slower, and the budget guarantee relies on it). Failing both, a line through the origin.

    Args:
        sums: Table sums (ms) of the calibration models.
        measured: Their measured latencies (ms).
    """
    if len(sums) != len(measured) or len(sums) == 0:
        raise PruneGymError(
            f"expected as many sums as measurements (at least one); got {len(sums)} and {len(measured)}"
        )
    low, high = 0.5 * float(sums.min()), float(sums.max())
    for degree in (2, 1):
        if len(sums) < 3 * degree:
            continue
        coefs = np.polyfit(sums, measured, degree)
        curvature, scale, overhead = (float(c) for c in (coefs if degree == 2 else (0.0, *coefs)))
        increasing = all(2 * curvature * s + scale > 0 for s in (low, high))
        if increasing and (curvature * low + scale) * low + overhead > 0:
            return curvature, scale, overhead
    return 0.0, float((sums * measured).sum() / (sums**2).sum()), 0.0


def _versions(runtime: str) -> dict[str, str]:
    versions = {"torch": str(torch.__version__), "python": platform.python_version()}
    if runtime == "onnxruntime":
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions


@dataclass(frozen=True)
class ValidationReport:
    """How well a latency predictor ranks and sizes measured variants."""

    mape: float
    within_10pct: float
    spearman: float
    macs_mape: float
    macs_within_10pct: float
    macs_spearman: float
    samples: int
    rows: list[dict[str, float]]
    relative: dict[str, float] = field(default_factory=dict)
    """The same figures for latency relative to the dense model measured just before each variant."""
    repeatability: dict[str, float] = field(default_factory=dict)
    """The measurement against itself: the first round's relative latencies as a "prediction" of the last round's
    (``mape``, ``within_10pct``, ``spearman``). This is the host's noise: a predictor that agrees with the measured
    medians about as well as one round agrees with another is as good as this host can show. With 4 rounds or more,
    also the median of the first half of the rounds against the median of the second half (``halves_mape``,
    ``halves_within_10pct``, ``halves_spearman``): how well the median of half the rounds ranks the median of the
    other half, about the best a predictor can score against a median of half the rounds (the median of all of them
    is somewhat more precise)."""
    others: dict[str, dict[str, float]] = field(default_factory=dict)
    """Other predictors scored on the same measurements, relative to dense (``mape``, ``within_10pct``,
    ``spearman``), by name: for example other builds of a table, whose spread from build to build this shows at no
    extra measurement."""


def validate(
    predict: Callable[[Variant], float],
    graph: ModelGraph,
    measure: Callable[[list[nn.Module]], list[float]],
    *,
    samples: int,
    seed: int = 0,
    granule: int = 1,
    rounds: int = 3,
    others: Mapping[str, Callable[[Variant], float]] | None = None,
    progress: bool = True,
) -> ValidationReport:
    """Measure ``samples`` random variants and compare with ``predict`` and with MACs as a latency proxy.

    Variants keep widths that are multiples of ``granule`` (the table's, for the variants a search produces; 1 for
    arbitrary widths). ``measure`` times a list of models interleaved (see
    :meth:`~hardware_models.measure.TorchLatency.measure_interleaved`) and returns their latencies in ms: each
    variant is timed together with the dense model, in ``rounds`` passes over all variants, and the report also
    compares latency relative to the dense model (what a budget is), which the host's speed drift cancels out of.
    The MACs proxy predicts ``dense latency x variant MACs / dense MACs``. Each of ``others`` (by name) predicts
    the same variants and is scored on the same measurements, relative to dense.
    """
    from tqdm import tqdm

    from pruning_core.metrics import count_cost

    rng = random.Random(seed)
    variants = [random_variant(graph, rng, granule=granule) for _ in range(samples)]
    models = [build_variant(graph, v) for v in variants]
    absolute: list[list[float]] = [[] for _ in models]
    relative: list[list[float]] = [[] for _ in models]
    dense_runs: list[float] = []
    with tqdm(total=rounds * len(models), desc="measuring", disable=not progress) as bar:
        for _ in range(rounds):
            for i, model in enumerate(models):
                dense, ms = measure([graph.model, model])
                dense_runs.append(dense)
                absolute[i].append(ms)
                relative[i].append(ms / dense)
                bar.update(1)
    dense_ms, dense_macs = float(np.median(dense_runs)), graph.total_macs
    dense_predicted = predict(Variant())
    rows = []
    for variant, model, times, ratios in zip(variants, models, absolute, relative, strict=True):
        macs = count_cost(model, graph.input_shape).macs
        predicted = predict(variant)
        rows.append(
            {
                "measured_ms": float(np.median(times)),
                "predicted_ms": predicted,
                "macs_proxy_ms": dense_ms * macs / dense_macs,
                "measured_ratio": float(np.median(ratios)),
                "predicted_ratio": predicted / dense_predicted,
                "macs_ratio": macs / dense_macs,
                "macs": macs,
            }
        )
    mape, within, rho = _agreement(rows, "measured_ms", "predicted_ms")
    macs_mape, macs_within, macs_rho = _agreement(rows, "measured_ms", "macs_proxy_ms")
    keys = ("mape", "within_10pct", "spearman")
    relative_report = {
        **dict(zip(keys, _agreement(rows, "measured_ratio", "predicted_ratio"), strict=True)),
        **dict(zip(("macs_" + k for k in keys), _agreement(rows, "measured_ratio", "macs_ratio"), strict=True)),
    }
    repeat = [{"first": r[0], "last": r[-1]} for r in relative]
    repeatability = dict(zip(keys, _agreement(repeat, "last", "first"), strict=True)) if rounds > 1 else {}
    others_report = {}
    for name, other in (others or {}).items():
        dense_other = other(Variant())
        guesses = [{**row, "other": other(v) / dense_other} for row, v in zip(rows, variants, strict=True)]
        others_report[name] = dict(zip(keys, _agreement(guesses, "measured_ratio", "other"), strict=True))
    if rounds >= 4:
        half = rounds // 2
        halves = [{"first": float(np.median(r[:half])), "second": float(np.median(r[half:]))} for r in relative]
        agreement = _agreement(halves, "second", "first")
        repeatability.update(zip(("halves_" + k for k in keys), agreement, strict=True))
    return ValidationReport(
        mape,
        within,
        rho,
        macs_mape,
        macs_within,
        macs_rho,
        samples,
        rows,
        relative_report,
        repeatability,
        others_report,
    )


def _agreement(rows: list[dict[str, float]], truth: str, guess: str) -> tuple[float, float, float]:
    """Mean absolute percentage error, share within 10 %, and Spearman correlation of ``guess`` against ``truth``.

    The correlation is NaN when either side is constant (it has no ranking to compare), as scipy would say with a
    warning.
    """
    from scipy.stats import spearmanr

    measured = np.array([r[truth] for r in rows])
    predicted = np.array([r[guess] for r in rows])
    error = np.abs(predicted - measured) / measured
    constant = np.ptp(measured) == 0 or np.ptp(predicted) == 0
    rho = float("nan") if constant else float(spearmanr(predicted, measured).statistic)
    return float(error.mean()), float((error <= 0.10).mean()), rho
