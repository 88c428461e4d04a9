"""Analytic (roofline) latency estimates for devices we cannot measure, from public spec-sheet figures.

Per layer: ``max(MACs / (peak MAC/s x efficiency), bytes moved / bandwidth) + launch overhead``, summed. Every
figure here is an ESTIMATE derived from the cited spec sheets; `efficiency` and `overhead` are rough assumptions
about achievable kernel efficiency, not measurements. Use a lookup table built on the device when you can reach it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from torch import nn

from hardware_models.base import DeviceKind, Variant
from pruning_core.errors import PruneGymError
from pruning_core.graph import ModelGraph
from pruning_core.metrics import LayerwiseCost, MacsCost, ParamsCost


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


BYTES = {Precision.FP32: 4, Precision.FP16: 2, Precision.INT8: 1}


@dataclass(frozen=True)
class DeviceProfile:
    """Spec-sheet figures of a device (peak rates are dense, per second).

    Attributes:
        name: Registry name.
        title: Human-readable device name.
        runtime: Runtime the figures assume.
        peak_macs: Peak multiply-accumulates per second per precision.
        bandwidth_gbs: Memory bandwidth, GB/s.
        overhead_us: Per-layer launch/dispatch overhead, microseconds (assumption).
        efficiency: Fraction of peak compute that real kernels reach at batch 1 (assumption).
        sparse_2_4_speedup: Compute speed-up of 2:4 sparse kernels (1.0: no sparse tensor cores).
        memory_bytes: Memory available for weights, or None when it is not a constraint.
        source: Where the figures come from.
    """

    name: str
    title: str
    runtime: str
    peak_macs: dict[Precision, float]
    bandwidth_gbs: float
    overhead_us: float
    efficiency: float
    sparse_2_4_speedup: float
    memory_bytes: int | None
    source: str


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            name="i7-10700k",
            title="Intel Core i7-10700K (8 cores, AVX2)",
            runtime="onnxruntime (estimate)",
            # 8 cores x 2 AVX2 FMA ports x 8 fp32 lanes x 4.7 GHz all-core turbo; int8 via vpmaddubsw at 2x, no VNNI.
            peak_macs={Precision.FP32: 601.6e9, Precision.FP16: 601.6e9, Precision.INT8: 1203.2e9},
            bandwidth_gbs=46.9,  # dual-channel DDR4-2933
            overhead_us=8.0,
            efficiency=0.35,
            sparse_2_4_speedup=1.0,
            memory_bytes=None,
            source="Intel ARK i7-10700K (8 cores, 3.8/5.1 GHz, DDR4-2933 x2); Intel optimization manual (2 FMA/cycle)",
        ),
        DeviceProfile(
            name="jetson-agx-xavier",
            title="NVIDIA Jetson AGX Xavier (Volta GPU, 512 CUDA cores, 64 tensor cores)",
            runtime="tensorrt (estimate)",
            # 1.41 TFLOPS fp32 = 0.705 TMAC/s; 11 TFLOPS fp16 and 22 TOPS int8 on tensor cores.
            peak_macs={Precision.FP32: 0.705e12, Precision.FP16: 5.5e12, Precision.INT8: 11e12},
            bandwidth_gbs=136.5,  # 256-bit LPDDR4x-4266
            overhead_us=15.0,
            efficiency=0.3,
            sparse_2_4_speedup=1.0,
            memory_bytes=32 * 2**30,
            source="NVIDIA Jetson AGX Xavier Series datasheet DS-09654 (GPU 1377 MHz; 137 GB/s)",
        ),
        DeviceProfile(
            name="jetson-orin-nano",
            title="NVIDIA Jetson Orin Nano 8GB (Ampere GPU, 1024 CUDA cores, 32 tensor cores)",
            runtime="tensorrt (estimate)",
            # 1.28 TFLOPS fp32 at 625 MHz; 20 TOPS int8 dense (40 with 2:4 sparsity); fp16 tensor at half of int8.
            peak_macs={Precision.FP32: 0.64e12, Precision.FP16: 5e12, Precision.INT8: 10e12},
            bandwidth_gbs=68.0,  # 128-bit LPDDR5
            overhead_us=15.0,
            efficiency=0.3,
            sparse_2_4_speedup=1.6,
            memory_bytes=8 * 2**30,
            source="NVIDIA Jetson Orin Nano Series datasheet DS-11105 (40 sparse INT8 TOPS, 68 GB/s)",
        ),
        DeviceProfile(
            name="pixel-a76",
            title="Pixel-class Arm Cortex-A76 core (one core, 2.84 GHz)",
            runtime="tflite/xnnpack (estimate)",
            # 2 x 128-bit NEON FMA pipes: 8 fp32 / 16 fp16 MAC per cycle; SDOT: 32 int8 MAC per cycle.
            peak_macs={Precision.FP32: 22.7e9, Precision.FP16: 45.4e9, Precision.INT8: 90.9e9},
            bandwidth_gbs=15.0,  # one core's share of LPDDR4X-2133 (34 GB/s for the chip)
            overhead_us=5.0,
            efficiency=0.5,
            sparse_2_4_speedup=1.0,
            memory_bytes=None,
            source="Arm Cortex-A76 Software Optimization Guide; Qualcomm Snapdragon 855 product brief (2.84 GHz)",
        ),
        DeviceProfile(
            name="stm32h747",
            title="STMicroelectronics STM32H747 (Cortex-M7, 480 MHz)",
            runtime="cmsis-nn (estimate)",
            # FPv5 single-precision FMA: 1 MAC/cycle; CMSIS-NN int8 with SMLAD: 2 MAC/cycle; no fp16 arithmetic.
            peak_macs={Precision.FP32: 0.48e9, Precision.FP16: 0.48e9, Precision.INT8: 0.96e9},
            bandwidth_gbs=1.9,  # 64-bit AXI SRAM at 240 MHz
            overhead_us=20.0,
            efficiency=0.5,
            sparse_2_4_speedup=1.0,
            memory_bytes=2 * 2**20,  # 2 MB flash for weights
            source="ST STM32H747xI/G datasheet DS12930; Arm Cortex-M7 TRM; Lai et al., CMSIS-NN, arXiv:1801.06601",
        ),
    )
}


class AnalyticLatency(LayerwiseCost):
    """Roofline latency estimate on a device profile.

    Args:
        profile: The device's figures.
        precision: Arithmetic precision of the deployed model.
        sparse_2_4: Whether layers run with 2:4 sparse kernels (counts only where the device has them).
        batch_size: Batch size the estimate is for.
    """

    kind = DeviceKind.ANALYTIC
    is_latency = True

    def __init__(
        self, profile: DeviceProfile, *, precision: str = "fp32", sparse_2_4: bool = False, batch_size: int = 1
    ) -> None:
        self.profile = profile
        self.batch_size = batch_size
        self.precision = Precision(precision)
        self.sparse_2_4 = sparse_2_4
        self.device = profile.name
        self.runtime = profile.runtime

    def layer_cost(self, graph: ModelGraph, name: str, c_in: int, c_out: int) -> float:
        """Estimated milliseconds of one conv/linear layer at batch ``self.batch_size``."""
        p = self.profile
        peak = p.peak_macs[self.precision] * p.efficiency
        if self.sparse_2_4:
            peak *= p.sparse_2_4_speedup
        record = graph.layers[name]
        macs = MacsCost().layer_cost(graph, name, c_in, c_out)
        weights = ParamsCost().layer_cost(graph, name, c_in, c_out)
        activations = c_in * record.input_hw[0] * record.input_hw[1] + c_out * record.output_hw[0] * record.output_hw[1]
        moved = BYTES[self.precision] * (self.batch_size * activations + weights)
        seconds = max(self.batch_size * macs / peak, moved / (p.bandwidth_gbs * 1e9)) + p.overhead_us * 1e-6
        return seconds * 1e3

    def predict_variant(self, graph: ModelGraph, variant: Variant, *, batch_size: int = 1) -> float:
        """Estimated milliseconds of a variant (an estimate from spec sheets, not a measurement)."""
        if batch_size != self.batch_size:
            return AnalyticLatency(
                self.profile, precision=self.precision.value, sparse_2_4=self.sparse_2_4, batch_size=batch_size
            ).predict_variant(graph, variant, batch_size=batch_size)
        return self.total(graph, variant.kept, variant.removed_blocks)

    def predict(self, model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1) -> float:
        return self.predict_variant(ModelGraph(model, input_shape), Variant(), batch_size=batch_size)

    def check_fits(self, params: int) -> None:
        """Raise when the weights do not fit the device's memory at this precision."""
        need = params * BYTES[self.precision]
        if self.profile.memory_bytes is not None and need > self.profile.memory_bytes:
            raise PruneGymError(
                f"weights need {need / 2**20:.1f} MiB at {self.precision.value}; "
                f"{self.profile.title} has {self.profile.memory_bytes / 2**20:.0f} MiB"
            )
