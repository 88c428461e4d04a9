from __future__ import annotations

import json

import pytest
import torch

from scripts.bench_cells import main


@pytest.mark.slow  # two small benchmarks, one on Ray
def test_bench_cells_times_both_executors_and_finds_the_same_searches(tmp_path, capsys, ray_instance):
    before = torch.get_num_threads()
    argv = ["--device", "pixel-a76", "--budget", "0.6", "--methods", "ppo", "dqn", "uniform-l1", "--episodes", "3"]
    argv += ["--val-images", "100", "--bn-batches", "2", "--threads", "1", "--ray-workers", "2"]
    try:
        rows = main([*argv, "--out", str(tmp_path / "rows.json")])
    finally:
        torch.set_num_threads(before)
    assert [(r["executor"], sorted(r["cells"]), r["same_searches"]) for r in rows] == [
        ("local", ["dqn", "ppo", "uniform-l1"], True),
        ("ray", ["dqn", "ppo", "uniform-l1"], True),
    ]
    assert rows[0]["cells"]["ppo"]["evaluations"] == 3 and all(r["wall_s"] > 0 for r in rows)
    assert json.loads((tmp_path / "rows.json").read_text())[1]["cells"] == rows[1]["cells"]
    assert "speed-up of the whole run on Ray" in capsys.readouterr().out
    assert "| ray | " in (tmp_path / "rows.md").read_text()
