from __future__ import annotations

import json

from scripts.lut_summary import summary


def test_summary_has_a_row_per_table_and_per_build_scored_beside_it(tmp_path):
    figures = {"mape": 0.015, "within_10pct": 1.0, "spearman": 0.958}
    record = {
        "mape": 0.06,
        "within_10pct": 0.96,
        "spearman": 0.951,
        "relative": {**figures, "macs_mape": 0.48, "macs_within_10pct": 0.0, "macs_spearman": 0.948},
        "repeatability": {"halves_spearman": 0.994},
        "others": {"out/m_build2.json": {"mape": 0.014, "within_10pct": 1.0, "spearman": 0.956}},
    }
    (tmp_path / "m.validate.json").write_text(json.dumps(record))
    (tmp_path / "m.build.log").write_text("profiling...\nbuild wall 56.73 s\n")
    rows = summary(tmp_path).splitlines()[2:]
    assert rows == [
        "| m | 56.73 | 6.0% | 96% | 0.951 | 1.5% / 100% / 0.958 | 0% / 0.948 | 0.994 |",
        "| m_build2 (same measurements) | | | | | 1.4% / 100% / 0.956 | | |",
    ]
