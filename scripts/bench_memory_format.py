"""Time a training step of a model pruned uniformly at several ratios, contiguous against channels-last.

Fine-tuning (``pruning_core.finetune.finetune_recipe``) and the search's score (``ScoreConfig.channels_last``) pick
their memory format from these figures.

Usage:
    python -m scripts.bench_memory_format [--model resnet56] [--ratios 0 0.25 0.5] [--threads 2] [--bf16]

Prints one line per ratio: the pruned widths and the median step time of each format.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from pruning_core.engine import PruningEngine
from pruning_core.models import build_model, default_input_shape
from pruning_core.plan import PruningPlan


def step_ms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, channels_last: bool, bf16: bool) -> float:
    """Median milliseconds of an SGD step (forward, backward, update) over 5 steps after 2 warm-up steps."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    images = images.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = default_input_shape(args.model)
    engine = PruningEngine(build_model(args.model), shape)
    images = torch.randn(args.batch_size, *shape)
    labels = torch.randint(0, 10, (args.batch_size,))
    for ratio in args.ratios:
        model = engine.apply(PruningPlan.uniform(engine.group_names, ratio, round_to=8)).model
        widths = sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)})
        contiguous = step_ms(model, images, labels, channels_last=False, bf16=args.bf16)
        channels_last = step_ms(model, images, labels, channels_last=True, bf16=args.bf16)
        print(
            f"uniform {ratio:g}: widths {widths}: contiguous {contiguous:.0f} ms, channels-last {channels_last:.0f} ms "
            f"({channels_last / contiguous:.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
