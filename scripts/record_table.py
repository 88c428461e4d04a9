"""The table of pruned models that ``prunegym apply``, ``prunegym baseline`` and the demo print."""

from __future__ import annotations


def print_records(records: list[dict]) -> None:
    """Print pruned models' records (``MethodResult.record``) as one table: cost, latency and accuracy."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="pruned models (cost: the budget model's prediction; measured: side by side with the dense model)"
    )
    for column in ("method", "cost / dense", "measured / dense", "MACs", "val (BN)", "test (BN)", "test (FT)"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r["method"],
            f"{r['cost_predicted'] / r['dense_cost_predicted']:.3f}",
            f"{r['latency_ratio_measured']:.3f} ({r['latency_ms_measured']:.2f} ms)"
            + ("" if r.get("budget_met_measured", True) else ", over budget")
            if "latency_ratio_measured" in r
            else "-",
            f"{r['macs'] / 1e6:.2f}M",
            f"{r['val_bn']:.4f}",
            f"{r['test_bn']:.4f}",
            f"{r['test_finetuned']:.4f}" if "test_finetuned" in r else "-",
        )
    Console().print(table)
