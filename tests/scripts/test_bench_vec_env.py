from __future__ import annotations

import json

import pytest
import torch

from scripts.bench_vec_env import main


@pytest.mark.slow  # two searches, one on Ray actors
def test_bench_vec_env_times_both_and_finds_the_same_episodes(tmp_path, capsys, ray_instance):
    before = torch.get_num_threads()
    argv = ["--device", "pixel-a76", "--val-images", "100", "--bn-batches", "2", "--episodes", "4", "--threads", "1"]
    try:
        rows = main([*argv, "--out", str(tmp_path / "rows.json")])
    finally:
        torch.set_num_threads(before)
    assert [(r["vec_env"], r["n_envs"], r["episodes"], r["same_episodes"]) for r in rows] == [
        ("subproc", 2, 4, True),
        ("ray", 2, 4, True),
    ]
    assert all(r["episodes_per_min"] > 0 and r["start_s"] > 0 and len(r["history"]) == 4 for r in rows)
    assert json.loads((tmp_path / "rows.json").read_text())[1]["history"] == [list(h) for h in rows[0]["history"]]
    assert "episodes/min" in capsys.readouterr().out
    assert "| ray | " in (tmp_path / "rows.md").read_text()
