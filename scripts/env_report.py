"""Environment figures: step timings and random-episode statistics.

Usage:
    python -m scripts.env_report --model resnet20 --data cifar10 --budget 0.5 --episodes 200 --out runs/env_r20.json

Runs ``episodes`` episodes with uniformly random actions and prints the median time of a non-terminal and of a
terminal step (terminal steps whose plan was already scored are answered from the score cache and counted apart),
the share of episodes that met the budget, and the spread of rewards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from scripts.cli import add_target_args, env_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_args(parser)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--bn-batches", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--score-bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score plans under bfloat16 autocast (default: where the CPU runs it natively)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads or 2)
    env = env_from_args(args, val_images=args.val_images, bn_batches=args.bn_batches, score_bf16=args.score_bf16)
    env.action_space.seed(args.seed)
    step_ms: list[float] = []
    terminal_ms: list[float] = []
    cached_ms: list[float] = []
    seen: set[str] = set()
    rewards: list[float] = []
    met: list[bool] = []
    for episode in range(args.episodes):
        env.reset(seed=args.seed + episode)
        done = False
        while not done:
            action = env.action_space.sample()
            start = time.perf_counter()
            _, reward, done, _, info = env.step(action)
            elapsed = (time.perf_counter() - start) * 1e3
            if not done:
                step_ms.append(elapsed)
            elif info["plan"] in seen:
                cached_ms.append(elapsed)
            else:
                terminal_ms.append(elapsed)
                seen.add(info["plan"])
        rewards.append(float(reward))
        met.append(bool(info["budget_met"]))
        if (episode + 1) % 20 == 0:
            print(f"{episode + 1} episodes: best reward {max(rewards):.4f}", flush=True)
    summary = {
        "model": args.model,
        "data": args.data,
        "device": args.device,
        "budget": args.budget,
        "episodes": args.episodes,
        "threads": torch.get_num_threads(),
        "score_bf16": env.scorer.config.bf16,
        "step_ms_median": statistics.median(step_ms),
        "terminal_ms_median": statistics.median(terminal_ms),
        "terminal_scored": len(terminal_ms),
        "terminal_cached": len(cached_ms),
        "terminal_cached_ms_median": statistics.median(cached_ms) if cached_ms else None,
        "budget_met_share": float(np.mean(met)),
        "reward_mean": float(np.mean(rewards)),
        "reward_std": float(np.std(rewards)),
        "reward_min": float(np.min(rewards)),
        "reward_max": float(np.max(rewards)),
        "reward_p10": float(np.percentile(rewards, 10)),
        "reward_p90": float(np.percentile(rewards, 90)),
    }
    print(json.dumps(summary))
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "rewards": rewards}, indent=1))


if __name__ == "__main__":
    main()
