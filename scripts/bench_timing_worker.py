"""Does a process's past change how it times? One plan's latency ratio to dense, read in a process that has just
searched and, the same minute, in the fresh timing worker.

The benchmark process searches and fine-tunes with two threads, then times finished models with one. This script
reproduces that: it runs ``--episodes`` random search episodes (adaptive BN, fine-tuning steps, val) with
``--threads`` threads, then reads the plan's ratio (median of :data:`~agents.apply.LATENCY_ROUNDS` interleaved rounds
beside dense) here and in the worker (:func:`~hardware_models.measure.interleaved_rounds`), ``--pairs`` times, each
first in every other pair. Run it a few times: the host drifts between runs.

Usage:
    python -m scripts.bench_timing_worker --model resnet56 --checkpoint checkpoints/resnet56_cifar10.pt \\
        --data cifar10 --data-root ../shared/data/cifar10 --plan PLAN.json --budget 0.5 [--episodes 8] [--pairs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from pruning_core.plan import PruningPlan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--data-root")
    parser.add_argument("--plan", required=True, help="a plan's JSON (best_plan.json of a run, or a plan file)")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--episodes", type=int, default=8, help="search episodes before timing")
    parser.add_argument("--threads", type=int, default=2, help="threads of the search")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--out", help="write the readings here as JSON")
    args = parser.parse_args(argv)

    from agents.apply import measured_ratios
    from envs.factory import make_env

    torch.set_num_threads(args.threads)
    env = make_env(
        model=args.model,
        checkpoint=args.checkpoint,
        data=args.data,
        data_root=args.data_root,
        device="host-cpu",
        budget=args.budget,
        val_images=1000,
        bn_batches=10,
    )
    text = Path(args.plan).read_text()
    saved = json.loads(text)
    plan = PruningPlan.from_json(saved.get("plan", text))  # a benchmark plan file, or a plan
    env.action_space.seed(0)
    for _ in range(args.episodes):
        env.reset(seed=0)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    model = env.engine.apply(plan).model

    def ratio(in_worker: bool) -> float:
        return statistics.median(measured_ratios(env, model, in_worker=in_worker).ratios)

    readings: dict[str, list[float]] = {"this_process": [], "worker": []}
    for pair in range(args.pairs):  # in turn, each first every other pair, so that drift favours neither
        for in_worker in (pair % 2 == 1, pair % 2 == 0):
            readings["worker" if in_worker else "this_process"].append(ratio(in_worker))
    print(json.dumps({key: [round(r, 4) for r in values] for key, values in readings.items()}))
    if args.out:
        Path(args.out).write_text(json.dumps(readings, indent=1))


if __name__ == "__main__":
    main()
