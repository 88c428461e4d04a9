"""A model's per-group sensitivity probes at a budget beside each benchmark method's plan there, as a plot.

Usage:
    python -m scripts.sensitivity_report --model resnet56 --data cifar10 --budget 0.5 \
        --benchmark benchmarks/resnet56_cifar10 --out benchmarks/resnet56_cifar10/sensitivity_b0.5.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from agents.compare import plot_sensitivity
from scripts.cli import add_target_args, env_from_args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_args(parser)
    parser.add_argument("--benchmark", type=Path, default=None, help="a benchmark folder: plot its plans (seed 0)")
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True, help="the plot (PNG)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or 1)
    env = env_from_args(args, val_images=args.val_images, finetune_steps=0, sensitivity=True, progress=True)
    plans: dict[str, dict[str, float]] = {}
    if args.benchmark is not None:
        for record in json.loads((args.benchmark / "results.json").read_text()):
            if record["budget"] == args.budget and record["seed"] == 0 and "sparsity" in record:
                plans[record["method"]] = record["sparsity"]
    probes = env.sensitivity
    assert probes is not None
    plot_sensitivity(probes, plans, args.out, title=f"{args.model}: sensitivity probes and plans at {args.budget:g}")
    for group in probes.probes:
        print(
            f"{group:<20} floor {probes.drop(group, 'floor'):.3f}  uniform {probes.drop(group, 'uniform'):.3f}  "
            f"per cost {probes.drop_per_cost(group):.3f}"
        )
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
