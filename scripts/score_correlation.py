"""Does the search's cheap score rank plans the way fine-tuning will?

For ``plans`` random plans just under the budget, compute each scoring option's val accuracy (adaptive BN alone;
adaptive BN plus a short fine-tune of ``--steps`` SGD steps, plain or distilled from the dense model) and its cost
in seconds, then fine-tune each plan for
``--epochs`` epochs and record val accuracy. Prints the Spearman correlation of each option with the fine-tuned
accuracy. Each plan's row is saved as soon as it is done; re-running resumes.

Usage:
    python -m scripts.score_correlation --model resnet20 --data cifar10 --budget 0.5 --plans 20 --out runs/corr.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from pruning_core.baselines import plan_from_kept
from pruning_core.data import atomic_write_bytes
from pruning_core.finetune import finetune_recipe, prune_and_finetune
from pruning_core.scoring import PlanScorer, ScoreConfig
from pruning_core.search import random_candidate
from scripts.cli import add_target_args, env_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_args(parser)
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50, help="SGD steps of the short fine-tune option")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of the reference accuracy")
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads or 2)
    env = env_from_args(args, val_images=args.val_images)
    dataset, engine = env.scorer.dataset, env.engine
    problem = env.budget_problem()
    options = {
        "adaptive_bn": PlanScorer(engine, dataset, ScoreConfig(val_images=args.val_images, finetune_steps=0)),
        f"bn_plus_{args.steps}_steps": PlanScorer(
            engine, dataset, ScoreConfig(val_images=args.val_images, finetune_steps=args.steps)
        ),
        f"bn_plus_{args.steps}_steps_distilled": PlanScorer(
            engine, dataset, ScoreConfig(val_images=args.val_images, finetune_steps=args.steps, distill=0.5)
        ),
    }
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    rng = random.Random(0)
    plans = []
    while len(plans) < args.plans:
        kept = random_candidate(problem, rng)
        if problem.meets(kept):
            plans.append(plan_from_kept(problem, kept, "l1"))
    for i, plan in enumerate(plans[len(rows) :], start=len(rows)):
        row: dict[str, float] = {"plan": i}
        for name, scorer in options.items():
            score = scorer.score(plan)
            row[name], row[name + "_seconds"] = score.top1, score.seconds
        start = time.perf_counter()
        pruned = prune_and_finetune(
            engine,
            plan,
            dataset,
            config=finetune_recipe(args.epochs),
            progress=False,
        )
        row["finetuned_val"] = pruned.accuracy["val_finetuned"]
        row["finetune_seconds"] = time.perf_counter() - start
        rows.append(row)
        atomic_write_bytes(args.out, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)))
        print(json.dumps(row), flush=True)
    target = [r["finetuned_val"] for r in rows]
    summary = {
        name: {
            "spearman": float(spearmanr([r[name] for r in rows], target).statistic),
            "seconds_median": float(np.median([r[name + "_seconds"] for r in rows])),
        }
        for name in options
    }
    print(json.dumps({"plans": len(rows), "epochs": args.epochs, **summary}))


if __name__ == "__main__":
    main()
