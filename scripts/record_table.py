"""The table of pruned models that ``prunegym apply``, ``prunegym baseline`` and the demo print."""

from __future__ import annotations

from collections.abc import Sequence

from agents.record import MethodRecord


def print_records(records: Sequence[MethodRecord]) -> None:
    """Print pruned models' records (``MethodResult.record``) as one table: cost, latency and accuracy."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="pruned models (cost: the budget model's prediction; measured: side by side with the dense model)"
    )
    for column in ("method", "cost / dense", "measured / dense", "MACs", "val (BN)", "test (BN)", "test (FT)"):
        table.add_column(column)
    for r in records:
        predicted = r.latency_ms_predicted
        dense = r.dense_latency_ms_predicted
        table.add_row(
            r.method,
            f"{predicted / dense:.3f}" if predicted is not None and dense is not None else "-",
            f"{r.latency_ratio_measured:.3f} ({r.latency_ms_measured:.2f} ms)"
            + (", over budget" if r.budget_met_measured is False else "")
            if r.latency_ratio_measured is not None
            else "-",
            f"{r.macs / 1e6:.2f}M",
            f"{r.val_top1:.4f}",
            f"{r.test_top1_bn:.4f}",
            f"{r.test_top1_finetuned:.4f}" if r.val_top1_finetuned is not None else "-",
        )
    console = Console()
    console.print(table)
    for r in records:  # a gated model: how often each block ran, and the latency that implies against the measured
        if r.exec_rate_test:
            rates = ", ".join(f"{block} {rate:.2f}" for block, rate in r.exec_rate_test.items())
            console.print(f"{r.method}: blocks executed on test (fraction of images): {rates}")
        if (expected := r.latency_ratio_expected) is not None:
            ratio, line = r.measured_over_expected, f"{r.method}: expected at those rates {expected:.3f} of dense"
            if ratio is not None:
                line += f", measured {r.latency_ratio_final:.3f}: measured/expected {ratio:.3f}"
            console.print(line)
