"""Time greedy-lut with the local executor and on Ray workers, and check that every run finds the same plan.

Each run scores with a fresh scorer (nothing cached between runs). Ray's start (the instance, when none is running
or given, and the workers building their scorer) is timed apart from the search. Per evaluation, ``overhead_ms`` is
the worker time not spent scoring, ``(wall * workers - scoring) / evaluations``: the driver's search work, Ray's
transfers, and workers idle while a round's last candidates finish. Torch threads are ``--threads`` here and on every
worker, so that the scores, and the plans, are the same.

With ``--kill-worker-after S``, one more Ray run (at the largest worker count) has its first worker's process killed
(SIGKILL) S seconds into the search: Ray restarts it, the plan it held is scored again (``retried`` lists them), and
the search must still find the local executor's plan. ``nodes`` counts the Ray nodes the workers ran on (2 on a
two-node cluster given by ``--ray-address``).

With ``--local-from`` the local executor's row is read from an earlier ``--out`` of the same search (on a cluster
started for the purpose, the local run need not be repeated).

Usage:
    python -m scripts.bench_executor --device pixel-a76 --budget 0.5 [--workers 1 2] [--ray-address ADDR]
        [--kill-worker-after 30] [--local-from EARLIER.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from envs.factory import make_env
from pruning_core.executor import Executor, LocalExecutor, RayExecutor
from pruning_core.scoring import PlanScorer
from pruning_core.search import greedy_search
from scripts.cli import add_target_args, target_from_args


def timed_search(
    env: Any, executor: Executor, log: Path, *, steps: int, kill_after: float | None = None
) -> dict[str, Any]:
    """greedy-lut with a fresh scorer on ``executor``: its wall seconds, the scoring seconds summed over the plans
    (where they ran), its evaluations and what it found; ``kill_after``: kill the first Ray worker's process that
    many seconds into the search."""
    scorer = PlanScorer(env.engine, env.scorer.dataset, env.scorer.config)
    start_seconds, nodes, timer = 0.0, 0, None
    if isinstance(executor, RayExecutor):
        import ray

        start = time.perf_counter()
        executor.start(scorer)
        start_seconds = time.perf_counter() - start
        nodes = len(set(ray.get([actor.node.remote() for actor in executor.actors])))
        if kill_after is not None:
            pid = ray.get(executor.actors[0].pid.remote())
            timer = threading.Timer(kill_after, os.kill, (pid, signal.SIGKILL))
    with scorer.logging_to(log, {"bench": "executor"}):
        start = time.perf_counter()
        if timer is not None:
            timer.start()
        try:
            result = greedy_search(env.budget_problem(), scorer, steps=steps, executor=executor)
        finally:  # a search that ends first (or fails) leaves no kill behind
            if timer is not None:
                timer.cancel()
        wall = time.perf_counter() - start
    rows = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    return {
        "start_s": start_seconds,
        "wall_s": wall,
        "scoring_s": sum(row["seconds"] for row in rows),
        "evaluations": result.evaluations,
        "nodes": nodes,
        "retried": [asdict(retry) for retry in getattr(executor, "retried", [])],
        # as JSON reads it back, so that a row of an earlier run (--local-from) compares
        "found": json.loads(json.dumps([result.plan.to_json(), result.val_top1, result.evaluations, result.history])),
    }


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['executor']:>8} {row['workers']:>7} {row['start_s']:>7.1f} {row['wall_s']:>7.1f} "
        f"{row['scoring_s']:>9.1f} {row['evaluations']:>5} {row['overhead_ms']:>11.0f} {row['speedup']:>7.2f} "
        f"{row['nodes']:>5} {len(row['retried']):>7} {row['same_plan']}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_args(parser)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--bn-batches", type=int, default=10)
    parser.add_argument("--finetune-steps", type=int, default=0, help="short fine-tune steps in the score (0: BN)")
    parser.add_argument("--steps", type=int, default=10, help="greedy-lut's rounds to reach the budget")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to time")
    parser.add_argument("--ray-address", default=None, help="a running Ray cluster (default: start one per count)")
    parser.add_argument(
        "--kill-worker-after", type=float, default=None, metavar="S", help="add a Ray run whose first worker is killed"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--local-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="take the local executor's row from an earlier --out of the same search instead of running it again",
    )
    args = parser.parse_args(argv)
    threads = args.threads or 1
    torch.set_num_threads(threads)
    env = make_env(
        target_from_args(args),
        val_images=args.val_images,
        bn_batches=args.bn_batches,
        finetune_steps=args.finetune_steps,
        progress=True,
    )
    earlier = json.loads(args.local_from.read_text()) if args.local_from is not None else []
    local = [row for row in earlier if row["executor"] == "local"]
    if args.local_from is not None and not local:
        raise SystemExit(f"expected a row of the local executor in {args.local_from}; got none")
    runs: list[tuple[str, int, Executor]] = [] if local else [("local", 1, LocalExecutor())]
    runs += [("ray", n, RayExecutor(workers=n, threads=threads, address=args.ray_address)) for n in args.workers]
    if args.kill_worker_after is not None:
        n = max(args.workers)
        runs.append(("ray-kill", n, RayExecutor(workers=n, threads=threads, address=args.ray_address)))
    rows: list[dict[str, Any]] = [{**local[0], "from": str(args.local_from)}] if local else []
    title = f"greedy-lut, {args.model} on {args.device} at {args.budget:g}, {threads} torch thread(s) per worker"
    if args.ray_address is not None:
        title += f", Ray cluster at {args.ray_address}"
    print(title)
    print(
        f"{'executor':>8} {'workers':>7} {'start_s':>7} {'wall_s':>7} {'scoring_s':>9} {'evals':>5} "
        f"{'overhead_ms':>11} {'speedup':>7} {'nodes':>5} {'retried':>7} same_plan"
    )
    if local:
        _print_row(rows[0])
    with tempfile.TemporaryDirectory() as folder:
        for name, workers, executor in runs:
            try:
                kill_after = args.kill_worker_after if name == "ray-kill" else None
                log = Path(folder) / f"{name}{workers}.jsonl"
                row = timed_search(env, executor, log, steps=args.steps, kill_after=kill_after)
            finally:
                executor.close()
            row.update(executor=name, workers=workers)
            row["overhead_ms"] = 1000 * (row["wall_s"] * workers - row["scoring_s"]) / row["evaluations"]
            row["speedup"] = rows[0]["wall_s"] / row["wall_s"] if rows else 1.0
            row["same_plan"] = row["found"] == (rows[0]["found"] if rows else row["found"])
            rows.append(row)
            _print_row(row)
    for row in rows:
        for retry in row["retried"]:
            print(
                f"{row['executor']}{row['workers']}: retried plan #{retry['index']} of a batch on worker "
                f"{retry['worker']} (attempt {retry['attempt']}, {retry['error']}): {retry['plan'][:80]}"
            )
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
        args.out.with_suffix(".md").write_text(markdown(rows, title))
    return rows


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The rows as a Markdown table under ``title``, with the retried plans below it."""
    header = "| executor | workers | nodes | start s | wall s | scoring s | evaluations | overhead ms/eval | speedup "
    lines = [f"{title}\n", header + "| retried | same plan |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['executor']} | {row['workers']} | {row['nodes']} | {row['start_s']:.1f} | {row['wall_s']:.1f} | "
            f"{row['scoring_s']:.1f} | {row['evaluations']} | {row['overhead_ms']:.0f} | {row['speedup']:.2f} | "
            f"{len(row['retried'])} | {row['same_plan']} |"
        )
    retried = [(row, retry) for row in rows for retry in row["retried"]]
    if retried:
        lines.append("")
    for row, retry in retried:
        lines.append(
            f"- {row['executor']} ({row['workers']} workers): plan #{retry['index']} of a batch scored again on "
            f"worker {retry['worker']} (attempt {retry['attempt']}, {retry['error']})"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
