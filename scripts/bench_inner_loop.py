"""Time the search's inner loop: apply a plan, recalibrate BatchNorm on K batches, evaluate on N val images.

It times the environment's own scorer (:class:`pruning_core.scoring.PlanScorer`), step by step.

Usage:
    python -m scripts.bench_inner_loop --model resnet56 --checkpoint C --data cifar10 [--runs 10] [--threads 2]

Without --checkpoint the model is randomly initialised (the timing does not depend on the weights; the accuracy
printed then means nothing). Prints one line per run and the median, and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from pruning_core.checkpoint import load_checkpoint
from pruning_core.data import load_dataset
from pruning_core.engine import PruningEngine
from pruning_core.models import build_model
from pruning_core.plan import PruningPlan
from pruning_core.scoring import PlanScorer, ScoreConfig
from pruning_core.training import resolve_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--bn-batches", type=int, default=10)
    parser.add_argument("--bn-batch-size", type=int, default=64)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="SGD steps of the score's short fine-tune (default 0: apply + BN + evaluation alone; the environment's "
        "score adds pruning_core.scoring.DEFAULT_FINETUNE_STEPS)",
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recalibrate and evaluate under bfloat16 autocast (default: where the CPU runs it natively, as the env)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="score in channels-last (default off, as the environment)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, args.data_root, progress=False)
    if args.checkpoint is not None:
        model = load_checkpoint(args.checkpoint).build()
    else:
        model = build_model(args.model, num_classes=dataset.num_classes, in_channels=dataset.input_shape[0])
    engine = PruningEngine(model, dataset.input_shape)
    bf16 = resolve_bf16(args.bf16)
    scorer = PlanScorer(
        engine,
        dataset,
        ScoreConfig(
            val_images=args.val_images,
            bn_batches=args.bn_batches,
            bn_batch_size=args.bn_batch_size,
            finetune_steps=args.finetune_steps,
            bf16=bf16,
            channels_last=args.channels_last,
        ),
    )
    generator = torch.Generator().manual_seed(0)
    timings = []
    for run in range(args.runs + 1):  # the first run warms caches and is not counted
        ratios = (torch.rand(len(engine.groups), generator=generator) * 2 * args.sparsity).clamp(max=0.9)
        plan = PruningPlan(sparsity=dict(zip(engine.group_names, ratios.tolist(), strict=True)))
        score = scorer.score(plan)
        if run == 0:
            continue
        row = {
            "apply_s": score.timings["apply"],
            "adapt_s": score.timings["adapt"],  # BN recalibration, and the short fine-tune if any
            "eval_s": score.timings["evaluate"],
            "total_s": score.seconds,
            "macs_ratio": score.macs / engine.base_cost.macs,
            "val_top1": score.top1,
        }
        timings.append(row)
        print(" ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    summary = {key: statistics.median(r[key] for r in timings) for key in timings[0]}
    summary.update(
        {
            "runs": args.runs,
            "threads": args.threads,
            "model": args.model,
            "bn_batches": args.bn_batches,
            "bn_batch_size": args.bn_batch_size,
            "finetune_steps": args.finetune_steps,
            "val_images": args.val_images,
            "bf16": bf16,
            "channels_last": args.channels_last,
        }
    )
    print("median " + json.dumps(summary))
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "runs": timings}, indent=2))


if __name__ == "__main__":
    main()
