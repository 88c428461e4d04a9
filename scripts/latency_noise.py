"""How noisy is latency measurement on this host? Repeat the same measurement of one model and report the spread.

Usage: python -m scripts.latency_noise --model resnet56 --repeats 10 [--threads 1] [--runtime pytorch|onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from hardware_models.measure import OrtLatency, TorchLatency
from pruning_core.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtime", default="pytorch", choices=["pytorch", "onnxruntime"])
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    measurer = (
        TorchLatency("cpu", threads=args.threads, runs=args.runs)
        if args.runtime == "pytorch"
        else OrtLatency(threads=args.threads, runs=args.runs)
    )
    medians = []
    for _ in range(args.repeats):
        stats = measurer.measure(model, (3, 32, 32))
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
                "runtime": args.runtime,
                "threads": args.threads,
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
