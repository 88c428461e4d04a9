"""The ``prunegym`` command line. It parses arguments and calls library code, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pruning_core.errors import PruneGymError

Handler = Callable[[argparse.Namespace], int]


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="digits",
        choices=["digits", "cifar10", "imagefolder"],
        help="dataset (default: digits, embedded in scikit-learn)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="ImageFolder root with train/ and test/ (cifar10 defaults to $PRUNEGYM_CIFAR10)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="resize imagefolder images to this size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _load_data(args: argparse.Namespace, progress: bool = True):
    from pruning_core.data import load_dataset

    kwargs: dict[str, object] = {"progress": progress}
    if args.data == "imagefolder" and args.image_size is not None:
        kwargs["image_size"] = args.image_size
    return load_dataset(args.data, args.data_root, **kwargs)


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise PruneGymError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pruning_core.models import build_model
    from pruning_core.training import TrainConfig, pretrain

    _set_threads(args)
    torch.manual_seed(args.seed)
    dataset = _load_data(args)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        bf16=args.bf16,
        channels_last=args.channels_last,
    )
    model = build_model(args.model, num_classes=dataset.num_classes, in_channels=dataset.input_shape[0])
    command = "prunegym " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("prunegym") else None
    _, meta = pretrain(
        model,
        args.model,
        dataset,
        config,
        args.out,
        resume=args.resume,
        extra_meta={"command": command} if command else None,
    )
    print(
        f"{args.model} on {dataset.name}: test top-1 {meta['test_top1']:.4f} on {meta['test_n']} images; "
        f"saved {args.out}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pruning_core.checkpoint import load_checkpoint
    from pruning_core.metrics import count_cost
    from pruning_core.training import evaluate

    _set_threads(args)
    checkpoint = load_checkpoint(args.checkpoint)
    if args.model is not None and args.model != checkpoint.meta["model"]:
        raise PruneGymError(f"--model is {args.model} but {args.checkpoint} holds {checkpoint.meta['model']}")
    dataset = _load_data(args, progress=not args.json)
    if list(dataset.classes) != list(checkpoint.meta["classes"]):
        raise PruneGymError(
            f"{args.checkpoint} was trained on classes {checkpoint.meta['classes'][:5]}...; "
            f"the dataset has {list(dataset.classes)[:5]}..."
        )
    model = checkpoint.build()
    result = evaluate(model, dataset, args.split)
    cost = count_cost(model, dataset.input_shape)
    record = {
        "top1": result.top1,
        "top5": result.top5,
        "n": result.n,
        "macs": cost.macs,
        "params": cost.params,
        "model": checkpoint.meta["model"],
        "split": args.split,
        "dataset": dataset.name,
    }
    if args.json:
        print(json.dumps(record))
    else:
        top5 = f"  top-5 {result.top5:.4f}" if result.top5 is not None else ""
        print(
            f"{record['model']} on {dataset.name}/{args.split}: top-1 {result.top1:.4f}{top5}  n={result.n}  "
            f"MACs {cost.macs / 1e6:.2f}M  params {cost.params / 1e3:.1f}K"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunegym", description="Hardware-aware RL pruning of PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train a dense model (resumable)")
    p.add_argument("--model", required=True, help="zoo name (resnet20, resnet56, small_cnn, ...) or tv:<name>")
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on CPUs with AMX)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--resume", action="store_true", help="continue from <out>.resume")
    p.set_defaults(handler=cmd_pretrain)

    p = sub.add_parser("evaluate", help="top-1 accuracy, MACs and parameters of a checkpoint")
    p.add_argument("--model", default=None, help="expected model name (checked against the checkpoint)")
    p.add_argument("--checkpoint", type=Path, required=True)
    _add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunegym`` command."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except PruneGymError as exc:
        print(f"prunegym {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
