"""Searches on their own yardstick: the best val score after BN recalibration each finds at a budget, at equal
evaluations (the agents' probes and prior plan counted), and what each paid. Saves as it goes; run again to resume.

Usage:
    python -m scripts.search_yardstick --model resnet56 --data cifar10 --budget 0.7 \
        --methods sensitivity greedy-lut tpe random-search ppo --evaluations 100 445 --seeds 0 1 2 \
        --sensitivity --action-mapping scaled --reward residual --out runs/yardstick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from agents.compare import SEARCH_METHODS, YardstickConfig, compare_searches, write_tables
from agents.train import TrainRunConfig
from scripts.cli import add_executor_args, add_target_args, target_from_args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_args(parser)
    parser.add_argument("--methods", nargs="+", default=list(SEARCH_METHODS[:5]), choices=SEARCH_METHODS)
    parser.add_argument("--evaluations", type=int, nargs="+", default=[100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--sensitivity", action="store_true", help="the agents observe the probes")
    parser.add_argument("--action-mapping", default="clip", choices=["clip", "scaled"])
    parser.add_argument("--reward", default="accuracy")
    parser.add_argument("--action-std", type=float, default=None)
    parser.add_argument("--episodes-per-update", type=int, default=4)
    parser.add_argument("--centre-on-uniform", action="store_true")
    parser.add_argument("--learning-rate", type=float, default=None, help="PPO's learning rate (default 3e-4)")
    parser.add_argument(
        "--calibrate-latency", action="store_true", help="correct the lookup table by timings first (measured devices)"
    )
    parser.add_argument("--transfer-from", type=Path, default=None, help="a policy's run folder (method transfer)")
    add_executor_args(parser)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--tables-only", action="store_true", help="run nothing: write yardstick.md and the plot from yardstick.json"
    )
    args = parser.parse_args(argv)
    if args.tables_only:
        write_tables(args.out)
        print((args.out / "yardstick.md").read_text())
        return
    torch.set_num_threads(args.threads or 1)
    agent = TrainRunConfig(
        reward=args.reward,
        sensitivity=args.sensitivity,
        action_mapping=args.action_mapping,
        action_std=args.action_std,
        episodes_per_update=args.episodes_per_update,
        centre_on_uniform=args.centre_on_uniform,
        learning_rate=args.learning_rate,
    )
    cfg = YardstickConfig(
        target=target_from_args(args),
        methods=tuple(args.methods),
        evaluations=tuple(args.evaluations),
        seeds=tuple(args.seeds),
        val_images=args.val_images,
        agent=agent,
        transfer_from=str(args.transfer_from) if args.transfer_from else None,
        calibrate_latency=args.calibrate_latency,
        executor=args.executor,
        ray_address=args.ray_address,
        ray_workers=args.ray_workers,
        ray_threads=args.threads or 1,
    )
    compare_searches(cfg, args.out)


if __name__ == "__main__":
    main()
