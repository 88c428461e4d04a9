"""Does the search's cheap score rank plans the way fine-tuning will?

For ``plans`` random plans just under the budget, compute each scoring option's val accuracy (adaptive BN alone;
adaptive BN plus a short fine-tune of ``--steps`` SGD steps, plain or distilled from the dense model) and its cost
in seconds, then fine-tune each plan for
``--epochs`` epochs and record val accuracy. Prints the Spearman correlation of each option with the fine-tuned
accuracy. Each plan's row is saved as soon as it is done; re-running resumes.

With ``--records``, the plans are those a benchmark fine-tuned (each record's plan after the measured check) and the
reference is the test top-1 they reached; the options are adaptive BN on ``--val-images`` and on every val image,
and adaptive BN plus ``--steps`` steps. Spearman is printed per budget, over all records and over the searches'
(agents, greedy-lut, random-search, tpe, transfer).

Usage:
    python -m scripts.score_correlation --model resnet20 --data cifar10 --budget 0.5 --plans 20 --out runs/corr.json
    python -m scripts.score_correlation --model resnet56 --data cifar10 --budget 0.7 --threads 1 \
        --records benchmarks/resnet56_cifar10/results.json --out runs/corr_records.json
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
from tqdm import tqdm

from agents.benchmark import SEARCHES, load_records, record_plan
from agents.train import ALGOS
from envs.layer_prune import LayerPruneEnv
from pruning_core.baselines import plan_from_kept
from pruning_core.data import atomic_write_bytes
from pruning_core.finetune import finetune_recipe, prune_and_finetune
from pruning_core.scoring import PlanScorer, ScoreConfig
from pruning_core.search import random_candidate
from scripts.cli import add_target_args, env_from_args

SEARCHED = (*ALGOS, *SEARCHES, "transfer")
"""Methods whose plan a search or a learned policy chose (the rest are one-shot heuristics)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_args(parser)
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50, help="SGD steps of the short fine-tune option")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of the reference accuracy")
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument(
        "--records",
        type=Path,
        nargs="+",
        help="score the plans these benchmark results fine-tuned, against the test top-1 they reached",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or 2)
    env = env_from_args(args, val_images=args.val_images)
    if args.records:
        score_records(args, env)
    else:
        score_random_plans(args, env)


def score_records(args: argparse.Namespace, env: LayerPruneEnv) -> None:
    """Each option's score of every plan the records fine-tuned, and its Spearman with their test top-1."""
    dataset, engine = env.scorer.dataset, env.engine
    every = len(dataset.val.labels)
    configs = {
        "adaptive_bn": ScoreConfig(val_images=args.val_images, finetune_steps=0),
        f"adaptive_bn_{every}_images": ScoreConfig(val_images=every, finetune_steps=0),
        f"bn_plus_{args.steps}_steps": ScoreConfig(val_images=args.val_images, finetune_steps=args.steps),
    }
    options = {name: PlanScorer(engine, dataset, config) for name, config in configs.items()}
    records = [
        (f"{path}#{i}", record)
        for path in args.records
        for i, record in enumerate(load_records(path))
        if record.get("sparsity") and record.get("val_top1_finetuned") is not None  # fine-tuned
    ]
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {row["record"] for row in rows}
    for key, record in tqdm([r for r in records if r[0] not in done], desc="records", unit="plan"):
        plan = record_plan(record, env.granule)
        row = {"record": key, "method": record["method"], "budget": record["budget"], "seed": record["seed"]}
        row["test_top1_finetuned"] = record["test_top1_finetuned"]
        for name, scorer in options.items():
            score = scorer.score(plan)
            row[name], row[name + "_seconds"] = score.top1, score.seconds
        rows.append(row)
        atomic_write_bytes(args.out, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)))
    summary = []
    for budget in sorted({row["budget"] for row in rows}, reverse=True):
        at_budget = [r for r in rows if r["budget"] == budget]
        median = float(np.median([r["test_top1_finetuned"] for r in at_budget]))
        subsets = {
            "all": at_budget,
            "searches": [r for r in at_budget if r["method"] in SEARCHED],
            "upper half": [r for r in at_budget if r["test_top1_finetuned"] >= median],
        }
        for subset, chosen in subsets.items():
            if len(chosen) < 3:
                continue
            target = [r["test_top1_finetuned"] for r in chosen]
            spearman = {name: float(spearmanr([r[name] for r in chosen], target).statistic) for name in options}
            summary.append({"budget": budget, "records": subset, "plans": len(chosen), **spearman})
    # a plan met again (the same plan fine-tuned with another seed) is a cache hit that took no time
    paid = {name: [r[name + "_seconds"] for r in rows if r[name + "_seconds"] > 0] for name in options}
    seconds = {name: float(np.median(paid[name])) if paid[name] else 0.0 for name in options}
    print(json.dumps({"spearman": summary, "seconds_median": seconds}, indent=1))
    lines = [
        f"Spearman of each score with the test top-1 the plans reached after fine-tuning ({len(rows)} records of "
        + ", ".join(str(p) for p in args.records)
        + ")",
        "",
        "| budget | records | plans | " + " | ".join(options) + " |",
        "|---|---|---|" + "---|" * len(options),
        *(
            f"| {row['budget']:g} | {row['records']} | {row['plans']} | "
            + " | ".join(f"{row[name]:.3f}" for name in options)
            + " |"
            for row in summary
        ),
        "| seconds per plan (median) | | | " + " | ".join(f"{seconds[name]:.1f}" for name in options) + " |",
    ]
    table = "\n".join(lines) + "\n"
    atomic_write_bytes(args.out.with_suffix(".md"), lambda tmp: tmp.write_text(table))


def score_random_plans(args: argparse.Namespace, env: LayerPruneEnv) -> None:
    """Each option's score of ``--plans`` random plans under the budget, each then fine-tuned for ``--epochs``."""
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
