from __future__ import annotations

import json

from pruning_core.checkpoint import load_checkpoint
from pruning_core.engine import PruningEngine
from scripts.score_correlation import main

CHECKPOINT = "checkpoints/small_cnn_digits.pt"


def finetuned(top1: float) -> dict[str, float]:
    return {"test_top1_finetuned": top1, "val_top1_finetuned": top1}


def test_records_plans_are_scored_and_ranked_per_budget(tmp_path, capsys):
    ckpt = load_checkpoint(CHECKPOINT)
    names = PruningEngine(ckpt.build(), tuple(ckpt.meta["input_shape"])).group_names
    cell = {"budget": 0.6, "seed": 0, "device": "host-cpu", "budget_met": True, "search_seconds": 0, "evaluations": 0}
    cell.update(macs=1, params=1, dense_macs=1, dense_params=1, bn_recalibration="augmented")
    cell.update(val_top1_pruned=0, test_top1_pruned=0, val_top1=0, test_top1_bn=0)
    records = [
        {**cell, "method": "uniform-l1", "sparsity": dict.fromkeys(names, s), **finetuned(1 - s)}
        for s in (0.1, 0.3, 0.5, 0.8)
    ]
    records.append({**cell, "method": "taylor", "sparsity": dict.fromkeys(names, 0.3), **finetuned(0.7)})
    records.append({**cell, "method": "ppo", "sparsity": dict.fromkeys(names, 0.2)})  # not fine-tuned: left out
    (tmp_path / "results.json").write_text(json.dumps(records))
    out = tmp_path / "corr.json"
    argv = ["--checkpoint", CHECKPOINT, "--budget", "0.6", "--threads", "1", "--steps", "2", "--val-images", "50"]
    main([*argv, "--records", str(tmp_path / "results.json"), "--out", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["uniform-l1"] * 4 + ["taylor"]
    # thinner plans score lower on every option: the ranking follows the fine-tuned accuracy
    for option in ("adaptive_bn", "adaptive_bn_287_images", "bn_plus_2_steps"):
        scores = [r[option] for r in rows[:4]]
        assert scores[0] > scores[3], option
    # a second run resumes: nothing is scored again
    main([*argv, "--records", str(tmp_path / "results.json"), "--out", str(out)])
    assert json.loads(out.read_text()) == rows
    summary = json.loads(printed[printed.index('{\n "spearman"') :])
    # 5 plans at 0.6, every one a heuristic's: no "searches" row; the upper half by fine-tuned top-1: 0.9, 0.7, 0.7
    rows_printed = [(r["budget"], r["records"], r["plans"]) for r in summary["spearman"]]
    assert rows_printed == [(0.6, "all", 5), (0.6, "upper half", 3)]
    table = out.with_suffix(".md").read_text()
    assert "| 0.6 | upper half | 3 |" in table and "seconds per plan (median)" in table
