"""The dynamic-skip report from Python (:mod:`agents.dynamic`), on the committed small_cnn and digits."""

from __future__ import annotations

import json

import pytest

from agents import DynamicReportConfig, run_dynamic_report
from envs import Target
from pruning_core.errors import CheckpointError, PlanError, PruneGymError


def test_the_report_runs_from_python_says_its_rows_and_refuses_other_settings(tmp_path):
    target = Target(device="pixel-a76")
    config = DynamicReportConfig(
        target, tmp_path / "dyn", uniform=0.2, finetune_epochs=1, gate_epochs=1, thresholds=(0.5,), latency_images=20
    )
    lines: list[str] = []
    result = run_dynamic_report(config, log=lines.append)
    assert result.stage == "timed" and result.out == tmp_path / "dyn"
    assert result.report == json.loads((tmp_path / "dyn" / "report.json").read_text())
    assert result.report["timing"]["interleaved"] == ["static", "t=0.5"]
    (row,) = result.report["dynamic"]
    assert row["threshold"] == 0.5 and sum(r["images"] for r in row["by_blocks_used"].values()) == 20
    assert result.table == (tmp_path / "dyn" / "table.md").read_text() and result.table.startswith("| model |")
    assert lines[0] == "timing 2 models, taking turns, on 20 test images, 1 thread"
    assert lines[1].startswith("threshold 0.50: top-1 ") and len(lines) == 2
    assert run_dynamic_report(config).report == result.report  # resumed: nothing trained or timed again

    other = r"other settings \(gate_epochs, latency_images\); expected .*, got gate_epochs=2, latency_images=2000: use"
    with pytest.raises(CheckpointError, match=other):
        run_dynamic_report(DynamicReportConfig(target, tmp_path / "dyn", uniform=0.2, finetune_epochs=1))
    with pytest.raises(CheckpointError, match="compare expected a report folder with a static model"):
        run_dynamic_report(DynamicReportConfig(target, tmp_path / "other", uniform=0.2, compare=(tmp_path,)))
    assert not (tmp_path / "other").exists()  # refused before anything was made


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({}, PlanError, "expected exactly one of a plan \\(JSON\\) or a uniform sparsity; got plan None"),
        ({"uniform": 0.2, "plan": "p.json"}, PlanError, "got plan p.json and uniform 0.2"),
        ({"uniform": 0.2, "thresholds": (0.5, 1.5)}, PlanError, r"each in \[0, 1\]; got \[0.5, 1.5\]"),
        ({"uniform": 0.2, "latency_images": 0}, PruneGymError, "latency_images must be >= 1; got 0"),
        ({"uniform": 0.2, "search_device": "tpu"}, PruneGymError, "search_device must be one of cpu, cuda; got 'tpu'"),
    ],
)
def test_bad_settings_are_refused_when_the_config_is_built(tmp_path, fields, error, message):
    with pytest.raises(error, match=message):
        DynamicReportConfig(Target(device="pixel-a76"), tmp_path, **fields)


def test_numbers_and_paths_are_kept_as_the_command_line_gives_them(tmp_path):
    config = DynamicReportConfig(Target(), str(tmp_path), uniform=0, thresholds=[1, 0.5], compare=[str(tmp_path)])
    assert config.out == tmp_path and config.compare == (tmp_path,) and config.thresholds == (1.0, 0.5)
    assert config.settings()["uniform"] == 0.0 and isinstance(config.settings()["uniform"], float)
