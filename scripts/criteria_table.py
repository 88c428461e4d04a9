"""Compare importance criteria at one uniform channel sparsity: MACs, parameters and test top-1 right after
pruning, after BatchNorm recalibration and after fine-tuning.

Usage:
    python -m scripts.criteria_table --checkpoint checkpoints/resnet56_cifar10.pt --data cifar10 \\
        --sparsity 0.5 --finetune-epochs 5 --out runs/criteria_resnet56.json

Each criterion's row is saved as soon as it is done; re-running skips the rows already in --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pruning_core.checkpoint import load_checkpoint
from pruning_core.data import atomic_write_bytes, load_dataset
from pruning_core.engine import PruningEngine, recalibrate_bn
from pruning_core.finetune import finetune, finetune_recipe
from pruning_core.importance import CRITERIA
from pruning_core.plan import PruningPlan
from pruning_core.training import evaluate


def markdown(rows: list[dict[str, float | str]]) -> str:
    head = "| criterion | MACs before → after | params before → after | top-1 pruned | after BN | fine-tuned |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['criterion']} | {r['macs_before'] / 1e6:.1f}M → {r['macs_after'] / 1e6:.1f}M "
            f"| {r['params_before'] / 1e3:.0f}K → {r['params_after'] / 1e3:.0f}K "
            f"| {r['test_top1_pruned']:.4f} | {r['test_top1_bn']:.4f} | {r['test_top1_finetuned']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    parser.add_argument("--bn-batches", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, args.data_root)
    dense = load_checkpoint(args.checkpoint).build()
    engine = PruningEngine(dense, dataset.input_shape, dataset=dataset)
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {r["criterion"] for r in rows}
    for criterion in args.criteria:
        if criterion in done:
            continue
        torch.manual_seed(0)
        pruned = engine.apply(PruningPlan.uniform(engine.group_names, args.sparsity, criterion=criterion))
        row: dict[str, float | str] = {
            "criterion": criterion,
            "sparsity": args.sparsity,
            "macs_before": engine.base_cost.macs,
            "macs_after": pruned.cost.macs,
            "params_before": engine.base_cost.params,
            "params_after": pruned.cost.params,
            "test_top1_pruned": evaluate(pruned.model, dataset, "test").top1,
        }
        recalibrate_bn(pruned.model, dataset, batches=args.bn_batches)
        row["test_top1_bn"] = evaluate(pruned.model, dataset, "test").top1
        config = finetune_recipe(args.finetune_epochs, lr=args.lr)
        finetune(pruned, dataset, config)
        row["val_top1_finetuned"] = pruned.accuracy["val_finetuned"]
        row["test_top1_finetuned"] = evaluate(pruned.model, dataset, "test").top1
        rows.append(row)
        atomic_write_bytes(args.out, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)))
        print(json.dumps(row), flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
