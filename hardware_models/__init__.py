"""Latency of a model on a target device: measured, lookup tables, analytic profiles."""

from __future__ import annotations

from hardware_models.analytic import PROFILES, AnalyticLatency, DeviceProfile, Precision
from hardware_models.base import DeviceKind, LatencyModel, LatencyStats, Variant
from hardware_models.correction import CorrectedCost, calibrate_cost, load_or_calibrate
from hardware_models.dynamic import measure_parts, profile_dynamic
from hardware_models.lut import LookupTable, ValidationReport, build_lut, validate
from hardware_models.measure import (
    MEASURED_DEVICES,
    OrtLatency,
    TorchLatency,
    default_threads,
    interleaved_rounds,
    measurer_for,
    ratios_beside_dense,
    time_callable,
    time_interleaved,
    torch_threads,
)
from hardware_models.registry import DEVICES, DeviceEntry, check_device, get_latency_model, list_devices

__all__ = [
    "DEVICES",
    "MEASURED_DEVICES",
    "PROFILES",
    "AnalyticLatency",
    "CorrectedCost",
    "DeviceEntry",
    "DeviceKind",
    "DeviceProfile",
    "LatencyModel",
    "LatencyStats",
    "LookupTable",
    "OrtLatency",
    "Precision",
    "TorchLatency",
    "ValidationReport",
    "Variant",
    "build_lut",
    "calibrate_cost",
    "check_device",
    "default_threads",
    "get_latency_model",
    "interleaved_rounds",
    "list_devices",
    "load_or_calibrate",
    "measure_parts",
    "measurer_for",
    "profile_dynamic",
    "ratios_beside_dense",
    "time_callable",
    "time_interleaved",
    "torch_threads",
    "validate",
]
