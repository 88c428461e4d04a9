"""Write the model card of a committed checkpoint: how it was trained, its test accuracy and its sha256.

Usage: python -m scripts.model_card CHECKPOINT --data D [--data-root R]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pruning_core.checkpoint import load_checkpoint, sha256
from pruning_core.data import load_dataset
from pruning_core.metrics import count_cost
from pruning_core.training import evaluate


def _init_line(meta: dict) -> str:
    source = meta["init_from"]
    how = (
        "a warm start from its weights"
        if source["model"] == meta["model"]
        else "its blocks copied into this deeper network, every other block starting as the identity"
    )
    line = f"- Initialised from `{source['checkpoint']}` ({source['model']}, sha256 `{source['sha256']}`): {how}"
    path = Path(source["checkpoint"])
    if path.is_file() and sha256(path) == source["sha256"]:  # the earlier stage is at hand: say how it was trained
        earlier = load_checkpoint(path).meta
        line += (
            f". That checkpoint: {earlier['epochs']} epochs, test top-1 {earlier['test_top1']:.4f}, trained with "
            f"`{earlier.get('command') or 'command not recorded'}`"
        )
        if "init_from" in earlier:
            line += "\n  " + _init_line(earlier)
    return line


def render(checkpoint: Path, data: str, data_root: str | None) -> str:
    """Evaluate ``checkpoint`` on the test split and return its card as Markdown."""
    ckpt = load_checkpoint(checkpoint)
    dataset = load_dataset(data, data_root, progress=False)
    model = ckpt.build()
    test = evaluate(model, dataset, "test")
    cost = count_cost(model, dataset.input_shape)
    meta = ckpt.meta
    lines = [
        f"# {meta['model']} on {meta['dataset']}",
        "",
        f"- File: `{checkpoint.name}` ({checkpoint.stat().st_size / 1e6:.2f} MB), sha256 `{sha256(checkpoint)}`",
        f"- Test top-1: **{test.top1:.4f}** on {test.n} images"
        + (f" (top-5 {test.top5:.4f})" if test.top5 is not None else ""),
        f"- Val top-1 at the last epoch: {meta.get('val_top1')}",
        f"- MACs (batch 1): {cost.macs:,}; parameters: {cost.params:,}",
        f"- Epochs: {meta['epochs']}, seed {meta['seed']}",
        f"- Trained with: `{meta.get('command') or 'prunegym pretrain (command not recorded)'}`",
        *([_init_line(meta)] if "init_from" in meta else []),
        *(
            [
                f"- Distilled from `{meta['distilled_from']['checkpoint']}` ({meta['distilled_from']['model']}, "
                f"test top-1 {meta['distilled_from']['test_top1']}, sha256 `{meta['distilled_from']['sha256']}`)"
            ]
            if "distilled_from" in meta
            else []
        ),
        f"- Recipe: `{json.dumps(meta.get('config', {}))}`",
        f"- Library versions: `{json.dumps(meta.get('versions', {}))}`",
        "",
        "Loads with `torch.load(path, weights_only=True)`; `prunegym evaluate --checkpoint` reproduces the accuracy.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    card = render(args.checkpoint, args.data, args.data_root)
    args.checkpoint.with_suffix(".md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
