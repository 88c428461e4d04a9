from __future__ import annotations

import json

import pytest

from agents.benchmark import load_passes
from pruning_core.checkpoint import load_checkpoint
from pruning_core.engine import PruningEngine
from scripts.remeasure_benchmark import main

CHECKPOINT = "checkpoints/small_cnn_digits.pt"


def test_every_cell_is_timed_again_beside_the_dense_model(tmp_path, capsys):
    ckpt = load_checkpoint(CHECKPOINT)
    names = PruningEngine(ckpt.build(), tuple(ckpt.meta["input_shape"])).group_names
    cell = {"budget": 0.6, "seed": 0, "macs": 1e6, "latency_ratio_measured": 0.58}
    thin = {**cell, "method": "uniform-l1", "sparsity": dict.fromkeys(names, 0.9)}
    dense = {**cell, "method": "random-search", "sparsity": dict.fromkeys(names, 0.0)}
    unfinished = {"method": "dqn", "budget": 0.6, "seed": 0}  # no plan: not timed
    (tmp_path / "results.json").write_text(json.dumps([thin, dense, unfinished]))
    assert main(["--checkpoint", CHECKPOINT, "--out", str(tmp_path), "--rounds", "3"]) == 0
    rows = {r["method"]: r for r in load_passes(tmp_path / "remeasured.json")[-1]["cells"]}
    assert set(rows) == {"uniform-l1", "random-search"}
    # a dense "plan" times as the dense model does, within the host's noise; the thinnest plan is faster
    assert 0.8 < rows["random-search"]["ratio_now"] < 1.25 and not rows["random-search"]["within_budget_now"]
    assert rows["uniform-l1"]["ratio_now"] < rows["random-search"]["ratio_now"]
    assert "2 cells and the dense model, 3 interleaved rounds" in capsys.readouterr().out
    # a second pass is kept beside the first, and how far it moved from it printed
    assert main(["--checkpoint", CHECKPOINT, "--out", str(tmp_path), "--rounds", "3"]) == 0
    passes = load_passes(tmp_path / "remeasured.json")
    assert len(passes) == 2 and [len(p["cells"]) for p in passes] == [2, 2]
    assert "against the previous pass" in capsys.readouterr().out


def test_records_from_before_the_checked_plan_was_kept_are_refused(tmp_path, capsys):
    old = {"method": "ppo", "budget": 0.6, "seed": 0, "sparsity": {"a": 0.5}, "check_steps": 2}
    (tmp_path / "results.json").write_text(json.dumps([old]))
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", CHECKPOINT, "--out", str(tmp_path)])
    assert exc.value.code == 2 and "run the benchmark command once more" in capsys.readouterr().err
