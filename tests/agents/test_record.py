"""A method's record: one set of names from ``finish_plan`` to ``results.json``, and older layouts read back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from agents import MethodRecord
from pruning_core.errors import PruneGymError

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RENAMED = {
    "val_pruned": "val_top1_pruned",
    "test_pruned": "test_top1_pruned",
    "val_bn": "val_top1",
    "test_bn": "test_top1_bn",
    "val_finetuned": "val_top1_finetuned",
    "test_finetuned": "test_top1_finetuned",
    "cost_predicted": "latency_ms_predicted",
    "dense_cost_predicted": "dense_latency_ms_predicted",
}
"""The report's old names that the committed benchmarks' records hold beside the benchmark's."""


def _record(**fields: object) -> MethodRecord:
    base = MethodRecord(
        method="uniform-l1",
        budget=0.5,
        device="host-cpu",
        budget_met=True,
        macs=500,
        params=50,
        dense_macs=1000,
        dense_params=100,
        val_top1_pruned=0.2,
        test_top1_pruned=0.21,
        val_top1=0.8,
        test_top1_bn=0.79,
        test_top1_finetuned=0.9,
        search_seconds=0.1,
        evaluations=0,
        bn_recalibration="augmented",
        sparsity={"conv1": 0.5},
    )
    return replace(base, **fields)


def test_a_record_round_trips_through_json_with_its_optional_fields_left_out_when_none():
    record = _record(check_ratios=(0.55, 0.49), latency_ratios_measured=(0.5, 0.48, 0.49), seed=2)
    saved = record.to_dict()
    assert saved["check_ratios"] == [0.55, 0.49] and saved["seed"] == 2
    assert "val_top1_finetuned" not in saved and "latency_ms_measured" not in saved
    assert MethodRecord.from_dict(json.loads(json.dumps(saved))) == record


@pytest.mark.parametrize("folder", ["resnet56_cifar10", "small_cnn_digits"])
def test_the_committed_benchmarks_records_read_back_under_one_set_of_names(folder):
    for old in json.loads((BENCHMARKS / folder / "results.json").read_text()):
        new = MethodRecord.from_dict(old).to_dict()
        assert new == {RENAMED.get(key, key): value for key, value in old.items()}  # every figure kept, once


def test_an_old_report_reads_back_with_the_benchmarks_names():
    old = _record().to_dict()
    for key in ("val_top1_pruned", "test_top1_pruned", "val_top1", "test_top1_bn", "test_top1_finetuned"):
        del old[key]
    # not fine-tuned: the old report had no test_finetuned, and the model delivered is the recalibrated one
    old.update(val_pruned=0.2, test_pruned=0.21, val_bn=0.8, test_bn=0.79, cost_predicted=1.5, test_gated=0.7)
    record = MethodRecord.from_dict(old)
    assert (record.val_top1, record.test_top1_bn, record.test_top1_finetuned) == (0.8, 0.79, 0.79)
    assert record.latency_ms_predicted == 1.5 and record.test_top1_gated == 0.7
    macs_budget = MethodRecord.from_dict({**old, "device": "MacsCost"})  # its cost_predicted counted MACs
    assert macs_budget.latency_ms_predicted is None


def test_a_record_with_unknown_or_missing_keys_is_refused():
    saved = _record().to_dict()
    with pytest.raises(PruneGymError, match=r"record has unknown keys \['speedup'\]; expected some of \["):
        MethodRecord.from_dict({**saved, "speedup": 2.0})
    del saved["device"], saved["sparsity"]
    with pytest.raises(PruneGymError, match=r"expected a record with \['device', 'sparsity'\]; got keys \["):
        MethodRecord.from_dict(saved)


def test_a_gated_records_measured_over_expected_ratio_needs_its_expectation_and_a_measurement():
    gated = _record(latency_ms_expected=6.0, dense_latency_ms_predicted=10.0, latency_ratio_final=0.63)
    assert gated.measured_over_expected == pytest.approx(1.05)
    assert replace(gated, latency_ratio_final=None).measured_over_expected is None  # not measured
    assert replace(gated, latency_ms_expected=None).measured_over_expected is None  # no gates
