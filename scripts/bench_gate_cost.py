"""Time what asking the skip gates costs at batch 1, side by side with the static model (1 thread).

Reads a dynamic report folder (``scripts.dynamic_report``: ``static/`` and ``gates.pt``) and times, one call of each
per round on one test-shaped input:

- the static model;
- the gated model at threshold 0 (the wrappers only: no gate is asked);
- the gated model with every gate asked and every block run (the cost skipping has to win back);
- per gated block, the gate's decision alone: pooling, linear layer and ``.item()`` as written in
  :class:`~pruning_core.dynamic.SkipGate`, against the folded dot product the eval path uses.

Usage:
    python -m scripts.bench_gate_cost --report runs/dynamic_resnet56 [--rounds 40] [--calls 20] [--out gate_cost.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from hardware_models.measure import time_interleaved, torch_threads
from pruning_core.checkpoint import load_torch
from pruning_core.dynamic import add_gates, gated_blocks
from pruning_core.serialize import load_pruned


def _interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median ms per call of each function, timed in turn by the shared :func:`time_interleaved`."""
    samples = time_interleaved(list(fns.values()), warmup=3, runs=runs)
    return {name: statistics.median(times) for name, times in zip(fns, samples, strict=True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True, help="a dynamic report folder with static/ and gates.pt")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    for needed in (args.report / "static" / "structure.json", args.report / "gates.pt"):
        if not needed.exists():
            raise SystemExit(f"expected a dynamic report folder with static/ and gates.pt; {needed} is missing")

    loaded = load_pruned(args.report / "static")
    static = loaded.model.eval()
    asked = add_gates(static)
    asked.load_state_dict(load_torch(args.report / "gates.pt"))
    asked.eval()
    wrappers = copy.deepcopy(asked)  # threshold 0: no gate is asked
    for _, block in gated_blocks(asked):
        block.threshold = 0.5
        block.force(run=True)
    x = torch.randn(1, *loaded.input_shape)

    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        block.register_forward_pre_hook(lambda module, args, name=name: inputs.__setitem__(name, args[0]))
        for name, block in gated_blocks(asked)
    ]
    with torch.inference_mode(), torch_threads(1):
        asked(x)
        for hook in hooks:
            hook.remove()
        whole = _interleaved(
            {"static": lambda: static(x), "wrappers": lambda: wrappers(x), "gates_asked": lambda: asked(x)},
            args.rounds * args.calls,
        )
        per_gate = {}
        for name, block in gated_blocks(asked):
            h = inputs[name]
            fc = block.gate.fc
            flat = block._fold(h)[5]
            per_gate[name] = _interleaved(
                {
                    "pool_linear_item": lambda h=h, fc=fc: F.linear(h.mean(dim=(2, 3)), fc.weight, fc.bias).item(),
                    "folded_dot_item": lambda h=h, flat=flat: torch.dot(h.reshape(-1), flat).item(),
                },
                args.rounds * args.calls * 10,
            )
    us = {k: statistics.median(v[k] for v in per_gate.values()) * 1e3 for k in ("pool_linear_item", "folded_dot_item")}
    figures = {
        "static_ms": whole["static"],
        "wrappers_over_static": whole["wrappers"] / whole["static"],
        "gates_asked_over_static": whole["gates_asked"] / whole["static"],
        "gates": len(per_gate),
        "median_gate_us": us,
    }
    print(
        f"{args.report}: static {whole['static']:.3f} ms; wrappers only {figures['wrappers_over_static']:.3f}x, "
        f"every gate asked and every block run {figures['gates_asked_over_static']:.3f}x of static "
        f"(medians of {args.rounds * args.calls} calls each, in turn, 1 thread)\n"
        f"one gate's decision, median over {len(per_gate)} gates: pooling + linear + item "
        f"{us['pool_linear_item']:.1f} us, folded dot + item {us['folded_dot_item']:.1f} us"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
