from __future__ import annotations

import json

import pytest
import torch

from pruning_core.checkpoint import load_checkpoint
from pruning_core.engine import PruningEngine, recalibrate_bn
from pruning_core.errors import CheckpointError
from pruning_core.export import export_onnx, onnx_top1, quantize_int8
from pruning_core.models import build_model
from pruning_core.plan import PruningPlan
from pruning_core.serialize import load_pruned, max_abs_difference, save_pruned


@pytest.mark.parametrize("granularity", ["channel", "unstructured"])
def test_saved_pruned_model_reloads_with_identical_outputs(tmp_path, granularity):
    torch.manual_seed(0)
    engine = PruningEngine(build_model("resnet20"), (3, 32, 32))
    plan = PruningPlan.uniform(engine.group_names, 0.5, granularity=granularity, removed_blocks=("layer3.2",))
    pruned = engine.apply(plan)
    save_pruned(tmp_path / "p", pruned, base_model="resnet20", classes=[str(i) for i in range(10)])
    loaded = load_pruned(tmp_path / "p")
    assert loaded.plan == plan
    assert max_abs_difference(pruned.model, loaded.model, torch.randn(8, 3, 32, 32)) == 0.0
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["macs"] == pruned.cost.macs


class Payload:
    """Any Python object: a weights file holding one must be refused."""


def test_pickled_weights_are_refused(tmp_path):
    engine = PruningEngine(build_model("resnet20"), (3, 32, 32))
    save_pruned(
        tmp_path / "p",
        engine.apply(PruningPlan.uniform(engine.group_names, 0.3)),
        base_model="resnet20",
        classes=[str(i) for i in range(10)],
    )
    torch.save({"conv1.weight": Payload()}, tmp_path / "p" / "weights.pt")
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_pruned(tmp_path / "p")
    (tmp_path / "p" / "structure.json").unlink()
    with pytest.raises(CheckpointError, match=r"lacks structure\.json"):
        load_pruned(tmp_path / "p")


def test_onnx_export_matches_torch_and_int8_keeps_accuracy(tmp_path, digits):
    engine = PruningEngine(load_checkpoint("checkpoints/small_cnn_digits.pt").build(), digits.input_shape)
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.25))
    recalibrate_bn(pruned.model, digits, batches=8)
    report = export_onnx(pruned.model, digits.input_shape, tmp_path / "m.onnx")
    assert report.max_abs_diff < 1e-4
    int8 = quantize_int8(report.path, tmp_path / "m.int8.onnx", digits, calibration_images=256)
    assert int8.stat().st_size < 0.6 * report.bytes
    fp32_top1 = onnx_top1(report.path, digits)
    assert abs(onnx_top1(int8, digits) - fp32_top1) < 0.03 and fp32_top1 > 0.9
