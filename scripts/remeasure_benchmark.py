"""Time every finished cell of a benchmark again, all in one pass beside the dense model.

The benchmark times each cell when it finishes, hours apart, and this host's relative speed of two models drifts
over minutes: the same resnet56 plan read 0.498 of dense in one cell of the CIFAR-10 benchmark and 0.395 in another,
hours later (records ``check_ratios``). Since the measured budget check moves a plan by what it reads, cells finished
at different times are checked against different yardsticks. This pass times the architecture each cell fine-tuned
(its record's ``sparsity``: the plan after the check) side by side: every round times the dense model and every
cell's model in turn, and the dense model again at the end (a cell's ratio is to the dense reading interpolated at its
place in the round), in the fresh timing worker, one thread. Weights are the checkpoint's, pruned: fine-tuning
does not change a model's speed.

Usage::

    python -m scripts.remeasure_benchmark --checkpoint checkpoints/resnet56_cifar10.pt \\
        --out benchmarks/resnet56_cifar10 [--rounds 15]

Prints one line per cell (its ratio when it finished, now, and whether it is within its budget now) and adds them as
one more pass to ``remeasured.json`` beside ``results.json``. Passes hours apart read the same plans several percent
apart (the whole yardstick moves with the host), so every pass is kept, the drift from the previous one printed, and
the benchmark's tables take each cell's median over the passes that timed its current record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.benchmark import load_passes
from hardware_models.measure import MEASURE_MIN_SECONDS, measurer_for, ratios_beside_dense
from pruning_core.checkpoint import load_checkpoint
from pruning_core.data import atomic_write_bytes
from pruning_core.engine import PruningEngine
from pruning_core.errors import PruneGymError
from pruning_core.plan import PruningPlan


def remeasure(
    records: Sequence[dict[str, Any]], checkpoint: Path, *, device: str = "host-cpu", rounds: int = 15, granule: int = 8
) -> list[dict[str, Any]]:
    """Each record's fine-tuned architecture timed beside the dense model in one interleaved pass.

    Args:
        records: Benchmark records with ``sparsity`` (static channel plans, no removed blocks).
        checkpoint: The dense model's checkpoint.
        device: A device this host measures.
        rounds: Interleaved rounds; each model's ratio is the median of its rounds'.
        granule: The channel step the plans' widths were rounded to (the latency table's).

    Returns:
        One row per record: ``method``, ``budget``, ``seed``, ``ratio_then`` (the record's verdict),
        ``ratio_now``, ``spread_now`` (the rounds' interquartile range) and ``within_budget_now``.
    """
    if not records:
        raise PruneGymError("expected benchmark records with a per-group sparsity; got none")
    ckpt = load_checkpoint(checkpoint)
    engine = PruningEngine(ckpt.build(), tuple(ckpt.meta["input_shape"]))
    models = [engine.apply(PruningPlan(sparsity=record["sparsity"], round_to=granule)).model for record in records]
    measurer = measurer_for(device, min_seconds=MEASURE_MIN_SECONDS)
    per_model = ratios_beside_dense(measurer, engine.model, models, engine.input_shape, rounds=rounds).ratios
    rows = []
    for record, read in zip(records, per_model, strict=True):
        ratios = sorted(read)
        quartiles = statistics.quantiles(ratios, n=4)
        now = statistics.median(ratios)
        rows.append(
            {
                "method": record["method"],
                "budget": record["budget"],
                "seed": record["seed"],
                "ratio_then": record.get("latency_ratio_measured"),
                "ratio_now": now,
                "spread_now": quartiles[2] - quartiles[0],
                "within_budget_now": now <= record["budget"],
                "macs": record.get("macs"),
                "finished": record.get("finished"),  # which record of the cell was timed
            }
        )
    return rows


def drift(previous: dict[str, Any], rows: Sequence[dict[str, Any]]) -> tuple[float, int] | None:
    """Median ratio of this pass's reading to the previous pass's, over the records both timed, and their number.

    >>> old = {"cells": [{"method": "a", "budget": 0.5, "seed": 0, "ratio_now": 0.4, "finished": None}]}
    >>> drift(old, [{"method": "a", "budget": 0.5, "seed": 0, "ratio_now": 0.5, "finished": None}])
    (1.25, 1)
    """
    before = {(c["method"], c["budget"], c["seed"], c.get("finished")): c["ratio_now"] for c in previous["cells"]}
    moved = [
        r["ratio_now"] / before[key]
        for r in rows
        if (key := (r["method"], r["budget"], r["seed"], r.get("finished"))) in before
    ]
    return (statistics.median(moved), len(moved)) if moved else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the dense model's checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="the benchmark folder (holds results.json)")
    parser.add_argument("--device", default="host-cpu", help="a device this host measures (default host-cpu)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--granule", type=int, default=8, help="the plans' channel step (default 8, the table's)")
    args = parser.parse_args(argv)
    path = args.out / "results.json"
    if not path.is_file():
        parser.error(f"expected a benchmark folder holding results.json; got {args.out}")
    records = [r for r in json.loads(path.read_text()) if "sparsity" in r]
    stale = [r for r in records if r.get("check_steps", 0) > 0 and "sparsity_searched" not in r]
    if stale:  # their "sparsity" is the searched plan's, not the one the check moved and fine-tuning used
        parser.error(
            f"expected records that keep the plan fine-tuned; got {len(stale)} written before that: run the "
            "benchmark command once more to bring them up to date (it replays their checks)"
        )
    start = time.perf_counter()
    rows = remeasure(records, args.checkpoint, device=args.device, rounds=args.rounds, granule=args.granule)
    seconds = time.perf_counter() - start
    print(f"{len(rows)} cells and the dense model, {args.rounds} interleaved rounds, {seconds:.0f} s")
    print("budget  method            seed  MACs     then    now     IQR     within now")
    for row in sorted(rows, key=lambda r: (-r["budget"], r["method"], r["seed"])):
        then = f"{row['ratio_then']:.3f}" if row["ratio_then"] is not None else "  -  "
        print(
            f"{row['budget']:<7g} {row['method']:<17} {row['seed']:<5} {row['macs'] / 1e6:6.2f}M  {then}   "
            f"{row['ratio_now']:.3f}   {row['spread_now']:.3f}   {'yes' if row['within_budget_now'] else 'NO'}"
        )
    saved_path = args.out / "remeasured.json"
    passes = load_passes(saved_path)
    moved = drift(passes[-1], rows) if passes else None
    if moved is not None:
        print(f"against the previous pass ({passes[-1]['written']}): cells read {moved[0]:.3f}x (median of {moved[1]})")
    spread = statistics.median(r["spread_now"] for r in rows)
    passes.append(
        {"written": time.strftime("%Y-%m-%dT%H:%M:%S"), "rounds": args.rounds, "seconds": seconds, "cells": rows}
    )
    print(f"median IQR {spread:.3f}; pass {len(passes)} saved in {saved_path}")
    atomic_write_bytes(saved_path, lambda tmp: tmp.write_text(json.dumps({"passes": passes}, indent=1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
