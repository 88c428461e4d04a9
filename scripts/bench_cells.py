"""Time one budget and seed of a benchmark with the local executor and on Ray, and check that both search the same.

Both runs start from empty folders, with the same methods, budget, seed, episodes and fine-tune, at ``--threads``
torch threads per worker. Locally every cell runs after the other in this process. On Ray the agents' searches run
side by side as Ray tasks, greedy-lut's, random-search's and tpe's candidates are scored on Ray workers, and the
fine-tunes are Ray tasks at once. The budget checks and the fine-tuned models are timed in this process in both
runs, with nothing running on Ray. ``same_searches`` compares each cell's searched plan and evaluations with the
local run's (the kept plans may differ by the budget check's timing).

Usage:
    python -m scripts.bench_cells --model resnet56 --data cifar10 --device host-cpu --budget 0.7 \\
        --methods ppo dqn [--episodes 40] [--finetune-epochs 0] [--ray-workers 2] [--ray-address ADDR] \\
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from agents.benchmark import ALL_METHODS, BenchmarkConfig, run_benchmark
from scripts.cli import add_target_args, target_from_args


def timed_benchmark(config: BenchmarkConfig) -> dict[str, Any]:
    """One benchmark's wall seconds, and per method its search and finish seconds, evaluations and searched plan."""
    start = time.perf_counter()
    records = run_benchmark(config)
    cells = {
        r["method"]: {
            "search_s": r["search_seconds"],
            "finish_s": r["finish_seconds"],
            "evaluations": r["evaluations"],
            "sparsity_searched": r["sparsity_searched"],
            "test_top1": r["test_top1_finetuned"] if r.get("test_top1_finetuned") is not None else r["test_top1_bn"],
        }
        for r in records
    }
    return {"wall_s": time.perf_counter() - start, "cells": cells}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_args(parser)
    parser.add_argument("--methods", nargs="+", default=["ppo", "dqn"], choices=ALL_METHODS)
    parser.add_argument("--episodes", type=int, default=40, help="each agent's episodes, random-search's and tpe's")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--bn-batches", type=int, default=10)
    parser.add_argument("--finetune-steps", type=int, default=0, help="short fine-tune steps in the score (0: BN)")
    parser.add_argument("--ray-workers", type=int, default=None, help="scoring workers (default: one per CPU)")
    parser.add_argument("--ray-address", default=None, help="a running Ray cluster (default: start a local one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON (and a Markdown table)")
    args = parser.parse_args(argv)
    threads = args.threads or 1
    torch.set_num_threads(threads)  # the local run's, as each Ray worker's
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for executor in ("local", "ray"):
            config = BenchmarkConfig(
                target_from_args(args),
                Path(folder) / executor,
                methods=tuple(args.methods),
                episodes=args.episodes,
                finetune_epochs=args.finetune_epochs,
                val_images=args.val_images,
                bn_batches=args.bn_batches,
                finetune_steps=args.finetune_steps,
                executor=executor,
                ray_address=args.ray_address if executor == "ray" else None,
                ray_workers=args.ray_workers if executor == "ray" else None,
                ray_threads=threads,
            )
            row = {"executor": executor, **timed_benchmark(config)}
            local = rows[0]["cells"] if rows else row["cells"]
            searched = ("sparsity_searched", "evaluations")
            row["same_searches"] = all(
                [cell[k] for k in searched] == [local[m][k] for k in searched] for m, cell in row["cells"].items()
            )
            rows.append(row)
    title = (
        f"benchmark of {', '.join(args.methods)}, {args.model} on {args.device} at {args.budget:g}: {args.episodes} "
        f"episodes, {args.finetune_epochs} fine-tuning epochs, {threads} torch thread(s) per worker"
    )
    header = ["executor", "wall s", *(f"{m} search s" for m in args.methods), "finish s", "same searches"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        searches = [f"{row['cells'][m]['search_s']:.1f}" if m in row["cells"] else "-" for m in args.methods]
        finish = sum(cell["finish_s"] for cell in row["cells"].values())
        table.append(
            f"| {row['executor']} | {row['wall_s']:.1f} | {' | '.join(searches)} | {finish:.1f} | "
            f"{row['same_searches']} |"
        )
    if len(rows) == 2:
        table.append(f"\nspeed-up of the whole run on Ray: {rows[0]['wall_s'] / rows[1]['wall_s']:.2f}x")
    print(title)
    print("\n".join(table))
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
        args.out.with_suffix(".md").write_text("\n".join([f"{title}\n", *table]) + "\n")
    return rows


if __name__ == "__main__":
    main()
