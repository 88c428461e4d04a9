"""How noisy is latency measurement on this host? Repeat the same measurement of one model and report the spread.

Usage: python -m scripts.latency_noise --model resnet56 --repeats 10 [--threads 1] [--device host-cpu|host-cpu-ort|cuda]
       [--batch-size 1]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from hardware_models.measure import MEASURED_DEVICES, measurer_for
from pruning_core.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="host-cpu", choices=list(MEASURED_DEVICES))
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    measurer = measurer_for(args.device, threads=args.threads, runs=args.runs)
    medians = []
    for _ in range(args.repeats):
        stats = measurer.measure(model, (3, 32, 32), batch_size=args.batch_size)
        medians.append(stats.p50_ms)
        print(
            f"median {stats.p50_ms:.3f} ms  p90 {stats.p90_ms:.3f}  min {stats.min_ms:.3f}  "
            f"(p90-p50)/p50 {stats.spread:.1%}",
            flush=True,
        )
    print(
        json.dumps(
            {
                "model": args.model,
                "device": args.device,
                "runtime": MEASURED_DEVICES[args.device].runtime,
                "threads": args.threads if MEASURED_DEVICES[args.device].uses_threads else None,
                "batch_size": args.batch_size,
                "runs": args.runs,
                "medians_ms": [round(m, 3) for m in medians],
                "min_median_ms": min(medians),
                "max_median_ms": max(medians),
                "max_over_min": max(medians) / min(medians),
                "median_of_medians_ms": statistics.median(medians),
            }
        )
    )


if __name__ == "__main__":
    main()
