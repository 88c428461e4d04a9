from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pruning_core.checkpoint import load_checkpoint
from pruning_core.engine import PruningEngine, apply_plan, kept_count, recalibrate_bn, width_step
from pruning_core.errors import PlanError
from pruning_core.graph import LayerType
from pruning_core.models import build_model
from pruning_core.plan import MAX_SPARSITY, Granularity, PruningPlan
from pruning_core.training import evaluate

MODELS = ["resnet20", "resnet56", "vgg16_bn", "mobilenetv2", "tv:resnet18", "tv:mobilenet_v3_small"]


@functools.cache
def engine_for(name: str) -> PruningEngine:
    torch.manual_seed(0)
    return PruningEngine(build_model(name), (3, 32, 32))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_uniform_channel_pruning_shrinks_and_runs(name, ratio):
    engine = engine_for(name)
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, ratio))
    with torch.no_grad():
        assert pruned.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert pruned.cost.macs < engine.base_cost.macs and pruned.cost.params < engine.base_cost.params
    assert all(len(kept) >= 1 for kept in pruned.kept_channels.values())
    # The physical width of each group's root layer is what the plan kept: real smaller tensors, not masks.
    for group in engine.groups:
        root = pruned.model.get_submodule(group.name)
        width = root.out_channels if isinstance(root, torch.nn.Conv2d) else root.out_features
        assert width == len(pruned.kept_channels[group.name]) == kept_count(group.channels, ratio)
    assert engine.model.get_submodule(engine.groups[0].name).out_channels == engine.groups[0].channels  # untouched


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_plans_always_give_a_valid_model(data):
    name = data.draw(st.sampled_from(MODELS))
    engine = engine_for(name)
    ratios = data.draw(st.lists(st.floats(0.0, MAX_SPARSITY), min_size=len(engine.groups), max_size=len(engine.groups)))
    round_to = data.draw(st.sampled_from([1, 8]))
    blocks = data.draw(st.lists(st.sampled_from(engine.graph.blocks), unique=True)) if engine.graph.blocks else []
    plan = PruningPlan(
        sparsity=dict(zip(engine.group_names, ratios, strict=True)), round_to=round_to, removed_blocks=tuple(blocks)
    )
    pruned = engine.apply(plan)
    with torch.no_grad():
        out = pruned.model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    assert pruned.cost.macs <= engine.base_cost.macs
    for group in engine.groups:
        if group.block in blocks:
            assert group.name not in pruned.kept_channels
        else:
            kept = pruned.kept_channels[group.name]
            assert 1 <= len(kept) <= group.channels
            assert len(kept) == group.channels or len(kept) % width_step(group.channels, round_to) == 0


def test_groups_couple_residual_channels_and_follow_forward_order():
    graph = engine_for("resnet20").graph
    names = [g.name for g in graph.groups]
    assert names[0] == "conv1" and len(names) == 1 + 9 + 2  # stem/stage-1 group, one per block, stages 2 and 3
    stage1 = graph.group("conv1")
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stage1.producers)
    assert "fc" not in names  # the classifier's outputs are never pruned
    assert graph.group("layer1.1.conv1").block == "layer1.1" and stage1.block is None
    mbv2 = engine_for("mobilenetv2").graph
    assert any(g.layer_type is LayerType.DEPTHWISE_CONV for g in mbv2.groups)
    assert not any(n.endswith("conv.3") for n in (g.name for g in mbv2.groups))  # depthwise follows its producer


def test_features_for_resnet56_are_fast():
    import time

    engine = engine_for("resnet56")
    engine.scores("l1")
    start = time.perf_counter()
    stats = engine.importance_stats("l1")
    features = [(g.macs / engine.graph.total_macs, g.channels, g.kernel, g.stride) for g in engine.groups]
    assert time.perf_counter() - start < 1.0
    assert len(stats) == len(features) == 30 and all(s.max >= 1 >= s.min for s in stats.values())


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "activation", "bn", "random"])
def test_every_criterion_scores_every_channel(criterion, digits):
    model = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    engine = PruningEngine(model, digits.input_shape, dataset=digits)
    scores = engine.scores(criterion)
    for group in engine.groups:
        assert scores[group.name].shape == (group.channels,) and (scores[group.name] >= 0).all()
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.5, criterion=criterion))
    assert pruned.macs_ratio < 0.5


def test_importance_beats_random_on_a_trained_model(digits):
    model = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    engine = PruningEngine(model, digits.input_shape, dataset=digits)
    accuracy = {}
    for criterion in ("l1", "random"):
        # At 70% the ranking matters; at moderate sparsity random channels do about as well (Li et al., 2022).
        pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.7, criterion=criterion))
        recalibrate_bn(pruned.model, digits, batches=8)
        accuracy[criterion] = evaluate(pruned.model, digits, "val").top1
    assert accuracy["l1"] > accuracy["random"]


def test_bn_recalibration_recovers_accuracy(digits):
    model = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    engine = PruningEngine(model, digits.input_shape)
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.5))
    before = evaluate(pruned.model, digits, "val").top1
    recalibrate_bn(pruned.model, digits, batches=8)
    assert evaluate(pruned.model, digits, "val").top1 > before + 0.1


def test_bn_recalibration_estimates_statistics_of_augmented_batches(digits):
    # the weights were fitted to activations normalised by augmented images' statistics (see recalibrate_bn)
    model = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    recalibrated = {}
    for augment in (True, False, None):  # None: the default callers rely on
        options = {} if augment is None else {"augment": augment}
        recalibrate_bn(model, digits, batches=3, batch_size=32, seed=0, **options)
        recalibrated[augment] = first.running_mean.clone()
    generator = torch.Generator().manual_seed(0)
    images = torch.cat(
        [x for x, _ in digits.batches("train", 32, shuffle=True, augment=True, limit=96, generator=generator)]
    )
    with torch.no_grad():
        expected = conv(images).mean(dim=(0, 2, 3))  # the first BatchNorm's input: the first conv's output
    assert torch.allclose(recalibrated[True], expected, atol=1e-4)
    assert not torch.allclose(recalibrated[False], expected, atol=1e-4)
    assert torch.equal(recalibrated[None], recalibrated[True])


@pytest.mark.parametrize(("granularity", "expected"), [("unstructured", 0.5), ("nm", 0.5)])
def test_weight_sparsity(granularity, expected):
    engine = engine_for("resnet20")
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.5, granularity=granularity))
    assert pruned.weight_sparsity == pytest.approx(expected, abs=0.03)
    assert pruned.cost.macs == engine.base_cost.macs  # zeros in dense kernels still cost MACs
    if granularity == "nm":
        weight = pruned.model.get_submodule("layer2.0.conv1").weight  # 16 inputs: four groups of 4
        assert ((weight.movedim(1, -1).reshape(-1, 4) != 0).sum(1) <= 2).all()


def test_apply_plan_one_shot_matches_the_engine():
    engine = engine_for("resnet20")
    plan = PruningPlan.uniform(engine.group_names, 0.5)
    one_shot = apply_plan(engine.model, plan, input_shape=(3, 32, 32))
    assert one_shot.kept_channels == engine.apply(plan).kept_channels and one_shot.cost == engine.apply(plan).cost


def test_removing_a_block_equals_zeroing_its_branch():
    engine = engine_for("resnet20")
    pruned = engine.apply(PruningPlan(removed_blocks=("layer2.1",)))
    reference = build_model("resnet20")
    reference.load_state_dict(engine.model.state_dict())
    torch.nn.init.zeros_(reference.layer2[1].bn2.weight)
    torch.nn.init.zeros_(reference.layer2[1].bn2.bias)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(pruned.model(x), reference.eval()(x), atol=1e-5)
    assert pruned.cost.macs < engine.base_cost.macs


def test_plan_json_round_trip_and_validation(tmp_path):
    plan = PruningPlan(
        sparsity={"conv1": 0.25, "layer1.0.conv1": 0.5},
        criterion="taylor",
        granularity="nm",
        nm=(2, 4),
        removed_blocks=("layer1.1",),
        round_to=8,
    )
    plan.save(tmp_path / "plan.json")
    again = PruningPlan.load(tmp_path / "plan.json")
    assert again == plan and again.granularity is Granularity.NM and again.to_json() == plan.to_json()
    with pytest.raises(PlanError, match=r"sparsity for layer3.2.conv1 must be in \[0, 0.95\]; got 1.2"):
        PruningPlan(sparsity={"layer3.2.conv1": 1.2})
    with pytest.raises(PlanError, match="granularity must be one of channel, unstructured, nm; got 'block'"):
        PruningPlan(granularity="block")
    with pytest.raises(PlanError, match="plan names groups the model does not have"):
        engine_for("resnet20").apply(PruningPlan(sparsity={"layer9.conv": 0.5}))
    with pytest.raises(PlanError, match="removed or gated blocks must be skippable residual blocks"):
        engine_for("resnet20").apply(PruningPlan(removed_blocks=("layer2.0",)))  # projection shortcut
    with pytest.raises(PlanError, match="criterion 'bn' scores channels only"):
        engine_for("resnet20").apply(PruningPlan.uniform(["conv1"], 0.5, criterion="bn", granularity="unstructured"))
    with pytest.raises(PlanError, match="needs calibration data"):
        engine_for("resnet20").apply(PruningPlan.uniform(["conv1"], 0.5, criterion="taylor"))
