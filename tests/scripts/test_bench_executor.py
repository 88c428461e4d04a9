from __future__ import annotations

import json

import pytest

from scripts.bench_executor import main


@pytest.mark.slow  # Ray workers start
def test_bench_executor_times_each_executor_and_finds_the_same_plan(tmp_path, capsys, ray_instance):
    argv = ["--device", "pixel-a76", "--val-images", "100", "--bn-batches", "2", "--steps", "3", "--workers", "1"]
    rows = main([*argv, "--kill-worker-after", "0.1", "--out", str(tmp_path / "rows.json")])
    assert [(r["executor"], r["workers"], r["same_plan"]) for r in rows] == [
        ("local", 1, True),
        ("ray", 1, True),
        ("ray-kill", 1, True),  # its worker killed mid-search: the plan it held scored again, the same plan found
    ]
    assert [r["nodes"] for r in rows] == [0, 1, 1] and rows[1]["retried"] == []
    assert [(retry["worker"], retry["attempt"]) for retry in rows[2]["retried"]] == [(0, 1)]
    assert all(r["wall_s"] > 0 and r["scoring_s"] > 0 and r["evaluations"] > 3 for r in rows)
    assert json.loads((tmp_path / "rows.json").read_text())[1]["found"] == rows[0]["found"]
    table = (tmp_path / "rows.md").read_text()
    assert "| ray-kill | 1 | 1 |" in table and "scored again on worker 0 (attempt 1" in table
    assert "same_plan" in capsys.readouterr().out
    # on a cluster started later: the local row taken from that run, not run again
    again = main([*argv, "--local-from", str(tmp_path / "rows.json")])
    assert [(r["executor"], r["same_plan"]) for r in again] == [("local", True), ("ray", True)]
    assert again[0]["wall_s"] == rows[0]["wall_s"] and again[1]["speedup"] == rows[0]["wall_s"] / again[1]["wall_s"]
