"""Time one lookup-table prediction of a random pruned variant (the cost the environment pays per step).

Usage: python -m scripts.lut_predict_timing --lut runs/lut/resnet56_host-cpu.json --model resnet56 [--calls 1000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from hardware_models.lut import LookupTable, random_variant
from pruning_core.graph import ModelGraph
from pruning_core.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    lut = LookupTable.load(args.lut)
    shape = tuple(lut.meta.get("input_shape", (3, 32, 32)))
    graph = ModelGraph(build_model(args.model, in_channels=shape[0]), shape)
    rng = random.Random(0)
    variants = [random_variant(graph, rng, granule=lut.granule) for _ in range(args.calls)]
    lut.predict_variant(graph, variants[0])  # maps layers to tables once per graph
    times = []
    for variant in variants:
        start = time.perf_counter_ns()
        lut.predict_variant(graph, variant)
        times.append((time.perf_counter_ns() - start) / 1e6)
    print(
        f"{args.model}: {len(graph.layers)} layers, {args.calls} predictions: median "
        f"{statistics.median(times):.3f} ms, p90 {sorted(times)[int(0.9 * len(times))]:.3f} ms per call"
    )


if __name__ == "__main__":
    main()
