"""Device names and the latency model behind each."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hardware_models.analytic import PROFILES, AnalyticLatency
from hardware_models.base import DeviceKind, LatencyModel
from hardware_models.lut import LookupTable
from hardware_models.measure import OrtLatency, TorchLatency, default_threads
from pruning_core.errors import PruneGymError

LUT_PREFIX = "lut:"


@dataclass(frozen=True)
class DeviceEntry:
    """One registered device."""

    name: str
    kind: DeviceKind
    description: str
    factory: Callable[[], LatencyModel]


def _entries() -> dict[str, DeviceEntry]:
    entries = [
        DeviceEntry(
            "host-cpu",
            DeviceKind.MEASURED,
            "this machine's CPU, PyTorch eager (1 thread by default)",
            lambda: TorchLatency("cpu", threads=default_threads()),
        ),
        DeviceEntry(
            "host-cpu-ort",
            DeviceKind.MEASURED,
            "this machine's CPU, ONNX Runtime (1 thread by default)",
            lambda: OrtLatency(threads=default_threads()),
        ),
        DeviceEntry(
            "cuda",
            DeviceKind.MEASURED,
            "this machine's CUDA GPU, PyTorch eager with CUDA events",
            lambda: TorchLatency("cuda"),
        ),
    ]
    for profile in PROFILES.values():
        entries.append(
            DeviceEntry(
                profile.name,
                DeviceKind.ANALYTIC,
                f"{profile.title}; ESTIMATE from spec sheets",
                functools.partial(AnalyticLatency, profile),
            )
        )
    return {e.name: e for e in entries}


DEVICES = _entries()


def check_device(name: str) -> str:
    """``name`` if it names a device: a registered one, or ``lut:PATH`` with a file at PATH (not read here).

    >>> check_device("pixel-a76")
    'pixel-a76'
    """
    if name.startswith(LUT_PREFIX):
        if not Path(name[len(LUT_PREFIX) :]).is_file():
            raise PruneGymError(f"expected lut:PATH with a lookup table at PATH; got {name!r} (no such file)")
        return name
    if name not in DEVICES:
        raise PruneGymError(f"device must be one of {', '.join(DEVICES)} or lut:PATH; got {name!r}")
    return name


def get_latency_model(name: str) -> LatencyModel:
    """The latency model of a device name (``host-cpu``, ``host-cpu-ort``, ``cuda``, a profile, or ``lut:PATH``).

    >>> get_latency_model("jetson-orin-nano").kind.value
    'analytic (estimate)'
    """
    if check_device(name).startswith(LUT_PREFIX):
        return LookupTable.load(name[len(LUT_PREFIX) :])
    return DEVICES[name].factory()


def list_devices() -> list[DeviceEntry]:
    """Every registered device (lookup tables are named by path, ``lut:PATH``)."""
    return list(DEVICES.values())
