"""Latency of a model on a target device: measured, lookup tables, analytic profiles."""

from __future__ import annotations

from hardware_models.base import DeviceKind, LatencyModel, LatencyStats, Variant
from hardware_models.registry import get_latency_model, list_devices

__all__ = ["DeviceKind", "LatencyModel", "LatencyStats", "Variant", "get_latency_model", "list_devices"]
