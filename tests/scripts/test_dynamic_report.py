from __future__ import annotations

from scripts.dynamic_report import _by_blocks_table


def test_blocks_used_are_binned_with_image_weighted_accuracy_and_latency():
    by_used = {
        "0": {"images": 2, "top1": 1.0, "latency_ms": 1.0},
        "3": {"images": 2, "top1": 0.5, "latency_ms": 2.0},
        "27": {"images": 4, "top1": 0.25, "latency_ms": 4.0},
    }
    rows = _by_blocks_table(by_used, 27, bins=4)
    assert rows[2:] == ["| 0-6 | 4 | 0.7500 | 1.500 |", "| 21-27 | 4 | 0.2500 | 4.000 |"]  # empty ranges left out
    assert sum(int(r.split("|")[2]) for r in rows[2:]) == 8
