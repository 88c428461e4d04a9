"""Time an agent's search with its environments in processes (``SubprocVecEnv``) and on Ray actors (``RayVecEnv``),
and check that the same seed gives the same episodes.

Both runs train the same agent from scratch, each environment with ``--threads`` torch threads. ``start_s`` is the
time to build the environments and the agent (each environment loads the model, its data and its latency table);
``episodes_per_min`` counts the search alone.

Usage:
    python -m scripts.bench_vec_env --model resnet56 --data cifar10 --device host-cpu --budget 0.7 \\
        [--algo ppo] [--episodes 40] [--n-envs 2] [--ray-address ADDR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from agents.train import TrainRunConfig, train_agent
from pruning_core.executor import Executor, LocalExecutor, RayExecutor
from scripts.cli import add_target_args, target_from_args


def timed_run(config: TrainRunConfig, executor: Executor, out: Path) -> dict[str, Any]:
    """One search's start and search seconds, episodes per minute and episodes (reward, top-1, cost per episode)."""
    start = time.perf_counter()
    result = train_agent(config, out, progress=True, executor=executor)
    total = time.perf_counter() - start
    return {
        "start_s": total - result.seconds,
        "search_s": result.seconds,
        "episodes": result.state.episodes,
        "episodes_per_min": 60 * result.state.episodes / result.seconds,
        "best_top1": result.state.best_top1,
        "history": [(row["reward"], row["top1"], row["cost_ratio"]) for row in result.state.history],
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_args(parser)
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--n-envs", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--bn-batches", type=int, default=10)
    parser.add_argument("--finetune-steps", type=int, default=0, help="short fine-tune steps in the score (0: BN)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ray-address", default=None, help="a running Ray cluster (default: start a local one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    threads = args.threads or 1
    torch.set_num_threads(threads)  # SubprocVecEnv's environments take this process's threads
    config = TrainRunConfig(
        target=target_from_args(args),
        algo=args.algo,
        episodes=args.episodes,
        n_envs=args.n_envs,
        seed=args.seed,
        val_images=args.val_images,
        bn_batches=args.bn_batches,
        finetune_steps=args.finetune_steps,
    )
    runs: list[tuple[str, Executor]] = [
        ("subproc", LocalExecutor()),
        ("ray", RayExecutor(workers=args.n_envs, threads=threads, address=args.ray_address)),
    ]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for name, executor in runs:
            try:
                row = timed_run(config, executor, Path(folder) / name)
            finally:
                executor.close()
            row.update(vec_env=name, n_envs=args.n_envs)
            row["same_episodes"] = row["history"] == (rows[0]["history"] if rows else row["history"])
            rows.append(row)
    title = (
        f"{args.algo}, {args.model} on {args.device} at {args.budget:g}: {args.episodes} episodes, "
        f"{args.n_envs} environments of {threads} torch thread(s)"
    )
    print(title)
    print(f"{'vec_env':>8} {'start_s':>7} {'search_s':>8} {'episodes/min':>12} {'best_top1':>9} same_episodes")
    for row in rows:
        print(
            f"{row['vec_env']:>8} {row['start_s']:>7.1f} {row['search_s']:>8.1f} {row['episodes_per_min']:>12.1f} "
            f"{row['best_top1']:>9.4f} {row['same_episodes']}"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
        table = [
            "| environments | start s | search s | episodes/min | best val top-1 | same episodes |",
            "|---|---|---|---|---|---|",
        ]
        table += [
            f"| {row['vec_env']} | {row['start_s']:.1f} | {row['search_s']:.1f} | {row['episodes_per_min']:.1f} | "
            f"{row['best_top1']:.4f} | {row['same_episodes']} |"
            for row in rows
        ]
        args.out.with_suffix(".md").write_text("\n".join([f"{title}\n", *table]) + "\n")
    return rows


if __name__ == "__main__":
    main()
