"""Latency of one conv + BN + ReLU layer over channel widths: the staircase behind a lookup table's granule.

CPU kernels block channels, so latency is not smooth in the width: this prints, for each width, the median latency
with PyTorch eager and with ONNX Runtime (1 thread, batch 1). Widths are measured one after another in a few
seconds; on a host whose speed drifts, run it twice and compare.

Usage:
    python -m scripts.channel_steps [--size 32] [--widths 16 17 24 31 32 33 40 47 48 56 60 63 64] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from hardware_models.measure import OrtLatency, TorchLatency


def layer(channels: int) -> nn.Module:
    """A 3x3 conv from ``channels`` to ``channels`` with BatchNorm and ReLU, as in a residual stage."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 17, 24, 31, 32, 33, 40, 47, 48, 56, 60, 63, 64])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for runtime in (TorchLatency("cpu", threads=1, runs=args.runs), OrtLatency(threads=1, runs=args.runs)):
        for width in args.widths:
            stats = runtime.measure(layer(width), (width, args.size, args.size))
            rows.append({"runtime": runtime.runtime, "channels": width, "p50_ms": stats.p50_ms})
    print(f"{'channels':>8} {'pytorch ms':>11} {'onnxruntime ms':>15}")
    for width in args.widths:
        by = {r["runtime"]: r["p50_ms"] for r in rows if r["channels"] == width}
        print(f"{width:>8} {by['pytorch']:>11.4f} {by['onnxruntime']:>15.4f}")
    if args.out is not None:
        args.out.write_text(json.dumps({"size": args.size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
