"""Save a pruned model, reload it, and compare outputs; then show that a weights file holding a pickled object is
refused. The figures #3 asks for, on any checkpoint.

Usage: python -m scripts.roundtrip_report --checkpoint runs/resnet56_cifar10.pt [--sparsity 0.5] [--images 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from pruning_core.checkpoint import load_checkpoint
from pruning_core.engine import PruningEngine
from pruning_core.errors import CheckpointError
from pruning_core.models import default_input_shape
from pruning_core.plan import PruningPlan
from pruning_core.serialize import load_pruned, max_abs_difference, save_pruned


class _Payload:
    """An arbitrary Python object, as a tampered weights file would carry."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--images", type=int, default=256, help="random inputs compared")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    dense = checkpoint.build()
    input_shape = default_input_shape(checkpoint.meta["model"], int(checkpoint.meta["in_channels"]))
    engine = PruningEngine(dense, input_shape)
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, args.sparsity))
    torch.manual_seed(0)
    inputs = torch.randn(args.images, *input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pruned"
        save_pruned(folder, pruned, base_model=checkpoint.meta["model"], classes=list(checkpoint.meta["classes"]))
        loaded = load_pruned(folder)
        record: dict[str, object] = {
            "checkpoint": str(args.checkpoint),
            "sparsity": args.sparsity,
            "params": sum(p.numel() for p in loaded.model.parameters()),
            "max_abs_diff_reloaded": max_abs_difference(pruned.model.eval(), loaded.model.eval(), inputs),
        }
        torch.save({"conv1.weight": _Payload()}, folder / "weights.pt")
        try:
            load_pruned(folder)
            record["pickled_weights"] = "LOADED (defect)"
        except CheckpointError as exc:
            record["pickled_weights"] = f"refused: {exc}"
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
