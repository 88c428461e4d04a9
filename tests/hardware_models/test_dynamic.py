from __future__ import annotations

import pytest
import torch

from pruning_core.checkpoint import load_checkpoint
from pruning_core.dynamic import add_gates, gated_blocks, set_thresholds


def test_profile_counts_blocks_used_and_restores_thresholds(digits):
    from hardware_models.dynamic import profile_dynamic

    gated = add_gates(load_checkpoint("checkpoints/small_cnn_digits.pt").build()).eval()
    blocks = dict(gated_blocks(gated))
    with torch.no_grad():
        blocks["block1"].gate.fc.bias.fill_(-5.0)  # never reaches 0.5: always skipped
    set_thresholds(gated, {"block1": 0.5, "block2": 0.0})
    profile = profile_dynamic(gated, digits, "test", limit=20, repeats=3)
    assert profile.exec_rate == {"block1": 0.0, "block2": 1.0}
    assert profile.by_blocks_used.keys() == {1} and profile.by_blocks_used[1]["images"] == 20
    assert {name: b.threshold for name, b in blocks.items()} == {"block1": 0.5, "block2": 0.0}
    assert profile.latency_ms_measured > 0 and profile.latency_ms_expected > 0


def test_profile_dynamic_measures_real_skipping(digits):
    from hardware_models.dynamic import profile_dynamic

    gated = add_gates(load_checkpoint("checkpoints/small_cnn_digits.pt").build())
    set_thresholds(gated, {"block1": 0.0, "block2": 1.0})  # block2 never runs
    profile = profile_dynamic(gated, digits, limit=40, repeats=5)
    assert profile.exec_rate == {"block1": 1.0, "block2": 0.0}
    assert set(profile.by_blocks_used) == {1} and profile.by_blocks_used[1]["images"] == 40
    assert profile.latency_ms_measured > 0 and profile.latency_ms_expected > 0
    assert dict(gated_blocks(gated))["block2"].threshold == 1.0  # thresholds restored after timing the parts


def test_parts_time_each_block_alone_and_restore_thresholds(digits):
    from hardware_models.dynamic import measure_parts

    gated = add_gates(load_checkpoint("checkpoints/small_cnn_digits.pt").build()).eval()
    set_thresholds(gated, {"block1": 0.5, "block2": 0.0})  # block2 never skips: part of the static part
    probe = next(iter(digits.batches("test", 1)))[0]
    parts = measure_parts(gated, probe, repeats=5, reference=load_checkpoint("checkpoints/small_cnn_digits.pt").build())
    # small_cnn's block1 costs about as much as the timing noise (it measured 0.0 once, all_ms under static_ms): its
    # share is never negative, and the parts add up to the whole
    assert parts.static_ms > 0 and set(parts.block_ms) == {"block1"} and parts.block_ms["block1"] >= 0
    assert parts.reference_ms is not None and parts.reference_ms > 0
    assert parts.static_ms + parts.block_ms["block1"] == pytest.approx(max(parts.all_ms, parts.static_ms))
    blocks = dict(gated_blocks(gated))
    assert {name: b.threshold for name, b in blocks.items()} == {"block1": 0.5, "block2": 0.0}
    assert not blocks["block1"]._forward_pre_hooks  # the hooks that caught each block's input are gone
