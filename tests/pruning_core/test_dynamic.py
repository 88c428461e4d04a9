from __future__ import annotations

import io
import itertools

import pytest
import torch

from pruning_core.checkpoint import load_checkpoint
from pruning_core.dynamic import (
    GatedBlock,
    add_gates,
    execution_rates,
    gated_blocks,
    set_thresholds,
    train_gates,
)
from pruning_core.errors import PlanError, PruneGymError
from pruning_core.models import build_model


def test_threshold_zero_never_skips_and_one_always_skips():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    gated = add_gates(model).eval()
    assert [name for name, _ in gated_blocks(gated)] == [
        f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3) if not (s > 1 and i == 0)
    ]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gated(x), model(x), atol=1e-6)
        set_thresholds(gated, {"layer2.1": 1.0})
        block = dict(gated_blocks(gated))["layer2.1"]
        block.reset_counters()
        gated(x)
    assert block.execution_rate() == 0.0


def test_mixed_batch_runs_the_block_only_where_needed():
    torch.manual_seed(0)
    inner = build_model("resnet20").layer1[1].eval()
    gated = GatedBlock(inner, 16, threshold=0.5).eval()
    x = torch.randn(4, 16, 8, 8)
    with torch.no_grad():
        torch.nn.init.zeros_(gated.gate.fc.bias)
        gated.gate.fc.weight.copy_(torch.ones(1, 16))
        scores = gated.gate(x)
        out = gated(x)
        run = scores >= 0.5
        assert 0 < int(run.sum()) < 4  # a mixed batch
        assert torch.allclose(out[run], inner(x[run]), atol=1e-6) and torch.equal(out[~run], x[~run])
    assert gated.execution_rate() == pytest.approx(float(run.float().mean()))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_batch_one_decides_as_the_score_against_the_threshold(threshold):
    torch.manual_seed(1)
    inner = build_model("resnet20").layer1[1].eval()
    gated = GatedBlock(inner, 16, threshold=threshold).eval()
    torch.nn.init.normal_(gated.gate.fc.weight, std=2.0)
    torch.nn.init.zeros_(gated.gate.fc.bias)
    x = torch.randn(16, 16, 8, 8)
    with torch.no_grad():
        expected = gated.gate(x) >= threshold
        ran = []
        for i in range(16):
            before = gated.executed
            out = gated(x[i : i + 1])
            ran.append(gated.executed > before)
            assert torch.allclose(out, inner(x[i : i + 1]) if ran[-1] else x[i : i + 1], atol=1e-6)
    assert ran == expected.tolist() and 0 < sum(ran) < 16


def test_folded_gate_follows_the_gate_weights_and_the_input_shape():
    torch.manual_seed(2)
    inner = build_model("resnet20").layer1[1].eval()
    gated = GatedBlock(inner, 16, threshold=0.5).eval()

    def decisions(x: torch.Tensor) -> list[bool]:
        ran = []
        for i in range(len(x)):
            before = gated.executed
            gated(x[i : i + 1])
            ran.append(gated.executed > before)
        return ran

    with torch.no_grad():
        for size in (8, 5):  # a fold is built per input shape
            x = torch.randn(12, 16, size, size)
            torch.nn.init.normal_(gated.gate.fc.weight, std=2.0)  # in place, after a fold was built
            assert decisions(x) == (gated.gate(x) >= 0.5).tolist()
            other = GatedBlock(inner, 16)
            torch.nn.init.normal_(other.gate.fc.weight, std=2.0)
            other.gate.fc.bias.fill_(-0.5)
            gated.load_state_dict(other.state_dict(), assign=size == 5)  # assign: the gate's tensors are replaced
            assert decisions(x) == (gated.gate(x) >= 0.5).tolist()
    torch.save(gated, io.BytesIO())  # the fold and its hook do not keep a gated block from pickling


def test_threshold_zero_does_not_ask_the_gate():
    torch.manual_seed(0)
    inner = build_model("resnet20").layer1[1].eval()
    gated = GatedBlock(inner, 16, threshold=0.0).eval()
    with torch.no_grad():
        gated.gate.fc.weight.fill_(float("nan"))  # a gate that was asked would poison the decision
        x = torch.randn(3, 16, 8, 8)
        assert torch.allclose(gated(x), inner(x), atol=1e-6) and torch.allclose(gated(x[:1]), inner(x[:1]), atol=1e-6)
    assert gated.execution_rate() == 1.0


def test_gate_training_keeps_accuracy_and_learns_rates(digits):
    gated = add_gates(load_checkpoint("checkpoints/small_cnn_digits.pt").build())
    report = train_gates(gated, digits, epochs=2, batch_size=64, progress=False)
    assert report.val_top1 > 0.9 and set(report.execution_rate) == {"block1", "block2"}
    set_thresholds(gated, {"block1": 0.0, "block2": 1.0})
    rates = execution_rates(gated, digits)
    assert rates == {"block1": 1.0, "block2": 0.0}
    with pytest.raises(PlanError, match=r"threshold for block1 must be in \[0, 1\]; got 2"):
        set_thresholds(gated, {"block1": 2.0})
    with pytest.raises(PlanError, match="without gates"):
        set_thresholds(gated, {"stem": 0.5})


def test_joint_fine_tuning_trains_the_backbone_with_the_gates(digits):
    base = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    gated = add_gates(base)
    before = {k: v.clone() for k, v in gated.state_dict().items() if ".gate." not in k}
    report = train_gates(gated, digits, epochs=1, joint_epochs=1, batch_size=64, rate_penalty=2.0, progress=False)
    after = gated.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert any(k.startswith("stem.") for k in changed)  # the backbone learned too
    assert report.val_top1 > 0.85
    assert all(p.requires_grad for p in gated.parameters())
    with pytest.raises(PlanError, match="expected epochs >= 0 and joint_epochs >= 0; got 1 and -1"):
        train_gates(gated, digits, epochs=1, joint_epochs=-1)
    with pytest.raises(PlanError, match=r"a teacher when it is above 0; got 0\.5 and none"):
        train_gates(gated, digits, epochs=1, distill_weight=0.5)


def test_rate_target_penalises_only_the_execution_rate_above_it(digits):
    base = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    settings = {"epochs": 2, "batch_size": 64, "lr": 0.2, "rate_penalty": 5.0, "progress": False}
    plain = train_gates(add_gates(base), digits, **settings)
    budget = train_gates(add_gates(base), digits, rate_target=0.9, **settings)
    mean = [sum(r.execution_rate.values()) / len(r.execution_rate) for r in (plain, budget)]
    assert mean[0] <= 0.1 and mean[1] >= 0.5  # the same penalty skips nearly every block, unless under its budget
    with pytest.raises(PlanError, match=r"expected rate_target in \(0, 1\) or None; got 1.5"):
        train_gates(add_gates(base), digits, rate_target=1.5)


def test_block_target_makes_gates_tell_inputs_apart(digits):
    base = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    settings = {"epochs": 10, "batch_size": 64, "lr": 0.01, "rate_penalty": 5.0, "progress": False}
    mean_budget = train_gates(add_gates(base), digits, rate_target=0.5, **settings)
    per_block = train_gates(add_gates(base), digits, block_target=0.5, **settings)
    # a budget on the mean rate is met by skipping blocks for nearly every input, and accuracy collapses; a share per
    # block is met by running a block for some inputs and not others
    assert mean_budget.val_top1 < 0.5 and per_block.val_top1 > 0.85
    assert any(0.05 < rate < 0.95 for rate in per_block.execution_rate.values())
    with pytest.raises(PlanError, match="expected one of rate_target and block_target; got both"):
        train_gates(add_gates(base), digits, rate_target=0.5, block_target=0.5)
    with pytest.raises(PlanError, match=r"expected block_target in \(0, 1\) or None; got 0"):
        train_gates(add_gates(base), digits, block_target=0)


def test_joint_fine_tuning_can_distil_from_the_dense_model(digits):
    base = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    gated = add_gates(base)
    report = train_gates(
        gated, digits, epochs=0, joint_epochs=1, batch_size=64, teacher=base, distill_weight=0.7, progress=False
    )
    assert report.val_top1 > 0.85
    assert all(not p.requires_grad or p.grad is None for p in base.parameters())  # the teacher did not learn


def test_full_weight_adds_the_every_block_loss_to_the_gated_one(digits):
    from pruning_core.dynamic import _gate_loss

    checkpoint = load_checkpoint("checkpoints/small_cnn_digits.pt")
    gated, plain = add_gates(checkpoint.build()).train(), checkpoint.build().train()
    images, labels = next(iter(digits.batches("train", 64)))
    torch.manual_seed(0)
    for _, block in gated_blocks(gated):  # each gate set to skip half the batch, so the two paths differ
        torch.nn.init.normal_(block.gate.fc.weight)
        with torch.no_grad():
            gated(images)
            block.gate.fc.bias -= torch.logit(block.last_scores.double()).median().float()
    gated_only = _gate_loss(gated, images, labels, rate_penalty=1.0, bf16=False)
    skipped = [float((b.last_scores < 0.5).float().mean()) for _, b in gated_blocks(gated)]
    both = _gate_loss(gated, images, labels, rate_penalty=1.0, bf16=False, full_weight=0.5)
    every = torch.nn.functional.cross_entropy(plain(images), labels)  # the same weights, no gates at all
    assert any(0 < s < 1 for s in skipped)
    assert float((both - gated_only).detach()) == pytest.approx(0.5 * float(every.detach()), rel=1e-3)
    assert not any(b._every for _, b in gated_blocks(gated))  # the gates decide again after the full pass
    report = train_gates(gated, digits, epochs=0, joint_epochs=1, batch_size=64, full_weight=1.0, progress=False)
    assert report.val_top1 > 0.85
    with pytest.raises(PlanError, match="expected full_weight >= 0; got -1"):
        train_gates(gated, digits, full_weight=-1.0)


def test_gated_pruned_model_round_trips(tmp_path):
    from dataclasses import replace

    from pruning_core.engine import PruningEngine
    from pruning_core.plan import PruningPlan
    from pruning_core.serialize import load_pruned, max_abs_difference, save_pruned

    torch.manual_seed(0)
    engine = PruningEngine(build_model("resnet20"), (3, 32, 32))
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.4, removed_blocks=("layer1.2",)))
    gated = add_gates(pruned.model)
    torch.nn.init.normal_(dict(gated_blocks(gated))["layer2.1"].gate.fc.weight, std=5.0)
    set_thresholds(gated, {"layer2.1": 0.5, "layer3.2": 0.3})
    save_pruned(
        tmp_path / "p", replace(pruned, model=gated), base_model="resnet20", classes=[str(i) for i in range(10)]
    )
    loaded = load_pruned(tmp_path / "p")
    blocks = dict(gated_blocks(loaded.model))
    assert "layer1.2" not in blocks and blocks["layer2.1"].threshold == 0.5
    assert max_abs_difference(gated, loaded.model, torch.randn(6, 3, 32, 32)) < 1e-6


def test_models_take_turns_on_the_same_images_and_warm_up_calls_are_not_counted(digits):
    from pruning_core.dynamic import time_models_per_image

    base = load_checkpoint("checkpoints/small_cnn_digits.pt").build()
    gated = add_gates(base)
    set_thresholds(gated, {"block1": 0.0, "block2": 1.0})  # block2 never runs
    rows = time_models_per_image({"static": base, "gated": gated}, digits, "test", limit=12, chunk=5)
    assert [len(r) for r in rows.values()] == [12, 12]
    assert {r[0] for r in rows["static"]} == {0} and {r[0] for r in rows["gated"]} == {1}
    assert all(r[2] > 0 for r in rows["static"] + rows["gated"])
    assert [b.seen for _, b in gated_blocks(gated)] == [12, 12]  # the untimed call of each turn left no trace
    with pytest.raises(PlanError, match="expected one or more distinct models and chunk >= 1; got 2 entries naming 1"):
        time_models_per_image({"a": base, "b": base}, digits)


def test_interrupted_gate_training_resumes_where_it_stopped(digits, tmp_path):
    from pruning_core.errors import CheckpointError
    from tests.pruning_core.test_finetune import Killed, KilledAtEpoch

    settings = {"epochs": 2, "joint_epochs": 2, "batch_size": 64, "rate_penalty": 2.0, "bf16": False}
    base = load_checkpoint("checkpoints/small_cnn_digits.pt")
    reference = add_gates(base.build())
    expected = train_gates(reference, digits, progress=False, **settings)
    path = tmp_path / "gates.resume"
    for killed_at in (1, 2):  # in the frozen epochs, then in the joint ones (resumed from the first stop)
        with pytest.raises(Killed):
            train_gates(
                add_gates(base.build()), KilledAtEpoch(digits, killed_at), progress=False, resume=path, **settings
            )
        assert path.is_file()
    with pytest.raises(CheckpointError, match="other settings: expected"):
        train_gates(add_gates(base.build()), digits, progress=False, resume=path, **{**settings, "joint_epochs": 3})
    resumed = add_gates(base.build())
    report = train_gates(resumed, KilledAtEpoch(digits, 1), progress=False, resume=path, **settings)
    assert report.val_top1 == expected.val_top1 and report.execution_rate == expected.execution_rate
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    again = train_gates(add_gates(base.build()), KilledAtEpoch(digits, 0), progress=False, resume=path, **settings)
    assert again.val_top1 == expected.val_top1  # completed: evaluated only


def test_threshold_search_raises_one_block_at_a_time_and_restores_thresholds(digits):
    from pruning_core.dynamic import DynamicParts, search_thresholds

    torch.manual_seed(0)
    gated = add_gates(load_checkpoint("checkpoints/small_cnn_digits.pt").build()).eval()
    for _, block in gated_blocks(gated):
        torch.nn.init.normal_(block.gate.fc.weight, std=2.0)  # scores spread over the inputs
    set_thresholds(gated, {"block1": 0.3, "block2": 0.0})
    parts = DynamicParts(static_ms=1.0, block_ms={"block1": 2.0, "block2": 0.5}, all_ms=3.5)
    levels = (0.0, 0.5, 1.0)
    path = search_thresholds(gated, digits, parts, levels=levels, limit=200, progress=False)

    assert path[0].thresholds == {"block1": 0.0, "block2": 0.0} and path[0].expected_ms == pytest.approx(3.5)
    for before, after in itertools.pairwise(path):
        raised = [n for n in before.thresholds if after.thresholds[n] != before.thresholds[n]]
        assert len(raised) == 1 and after.thresholds[raised[0]] > before.thresholds[raised[0]]
        assert after.expected_ms < before.expected_ms  # every raise skips more
    assert path[-1].exec_rate == {"block1": 0.0, "block2": 0.0} and path[-1].expected_ms == pytest.approx(1.0)
    assert {n: b.threshold for n, b in gated_blocks(gated)} == {"block1": 0.3, "block2": 0.0}

    stopped = search_thresholds(gated, digits, parts, levels=levels, limit=200, stop_ms=3.0, progress=False)
    assert stopped[-1].expected_ms <= 3.0 < stopped[-2].expected_ms and stopped == path[: len(stopped)]
    with pytest.raises(PlanError, match="every block has a measured part"):
        search_thresholds(gated, digits, DynamicParts(1.0, {"block1": 2.0}, 3.0), progress=False)
    with pytest.raises(PlanError, match=r"increasing threshold levels within \[0, 1\]; got \[0.5, 0.0\]"):
        search_thresholds(gated, digits, parts, levels=(0.5, 0.0), progress=False)


def test_threshold_search_scores_each_raise_as_a_pass_over_the_whole_split_would(digits):
    from pruning_core.dynamic import DynamicParts, expected_latency, search_thresholds

    torch.manual_seed(1)
    gated = add_gates(load_checkpoint("checkpoints/small_cnn_digits.pt").build()).eval()
    for _, block in gated_blocks(gated):
        torch.nn.init.normal_(block.gate.fc.weight, std=2.0)
    blocks = dict(gated_blocks(gated))
    parts = DynamicParts(static_ms=1.0, block_ms={"block1": 2.0, "block2": 0.5}, all_ms=3.5)
    levels = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

    @torch.inference_mode()
    def whole_split(thresholds):  # every image through the model, as the search did before it recorded gates
        set_thresholds(gated, thresholds)
        for block in blocks.values():
            block.reset_counters()
        correct = seen = 0
        for images, labels in digits.batches("val", 64, limit=300):
            correct += int((gated(images).argmax(1) == labels).sum())
            seen += len(labels)
        rates = {n: b.execution_rate() for n, b in blocks.items()}
        return correct / seen, rates, expected_latency(parts.static_ms, parts.block_ms, rates, 0.0)

    path = search_thresholds(gated, digits, parts, levels=levels, limit=300, batch_size=64, progress=False)
    assert len(path) > 4 and all(block._log is None for block in blocks.values())  # the gates record no more
    with pytest.raises(PlanError, match="got none in the 'val' split"):
        search_thresholds(gated, digits, parts, limit=0, progress=False)
    for before, after in itertools.pairwise(path):
        top1, rates, ms = whole_split(after.thresholds)
        assert (after.top1, after.expected_ms) == pytest.approx((top1, ms)) and after.exec_rate == pytest.approx(rates)
        raises = []  # every block's next level that saves anything, scored on the whole split
        for name in blocks:
            for level in levels[levels.index(before.thresholds[name]) + 1 :]:
                top1, _, ms = whole_split({**before.thresholds, name: level})
                if before.expected_ms - ms > 1e-9:
                    raises.append((before.top1 - top1) / (before.expected_ms - ms))
                    break
        assert (before.top1 - after.top1) / (before.expected_ms - after.expected_ms) == pytest.approx(
            min(raises), rel=1e-5
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_threshold_search_on_a_gpu_follows_the_same_path(digits):
    from pruning_core.dynamic import DynamicParts, search_thresholds

    torch.manual_seed(0)
    gated = add_gates(load_checkpoint("checkpoints/small_cnn_digits.pt").build()).eval()
    for _, block in gated_blocks(gated):
        torch.nn.init.normal_(block.gate.fc.weight, std=2.0)
    parts = DynamicParts(static_ms=1.0, block_ms={"block1": 2.0, "block2": 0.5}, all_ms=3.5)
    on_cpu = search_thresholds(gated, digits, parts, levels=(0.0, 0.5, 1.0), limit=200, progress=False)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # full precision, as on the CPU
        on_gpu = search_thresholds(gated.cuda(), digits, parts, levels=(0.0, 0.5, 1.0), limit=200, progress=False)
    assert [s.thresholds for s in on_gpu] == [s.thresholds for s in on_cpu]
    assert [s.top1 for s in on_gpu] == pytest.approx([s.top1 for s in on_cpu], abs=0.011)


def test_skip_probes_skip_each_block_for_its_lowest_scoring_half_and_are_cached(digits, tmp_path):
    from pruning_core.dynamic import TrainedGates
    from pruning_core.dynamic.probes import cached_skip_sensitivity, gate_scores
    from pruning_core.engine import PruningEngine
    from pruning_core.plan import PruningPlan
    from pruning_core.scoring import PlanScorer, ScoreConfig

    engine = PruningEngine(load_checkpoint("checkpoints/small_cnn_digits.pt").build(), digits.input_shape)
    gated = add_gates(load_checkpoint("checkpoints/small_cnn_digits.pt").build())
    train_gates(gated, digits, epochs=1, batch_size=64, block_target=0.5, progress=False)
    config = ScoreConfig(val_images=200, bn_batches=2, finetune_steps=0)
    scorer = PlanScorer(engine, digits, config, gates=TrainedGates.from_model(gated, engine.graph))
    scores = gate_scores(scorer)
    assert {name: len(s) for name, s in scores.items()} == {"block1": 200, "block2": 200}
    probes = cached_skip_sensitivity(tmp_path / "skip.json", scorer, {"model": "small_cnn"})
    assert probes.evaluations == scorer.evaluations == 3  # the dense model, then each block skipped alone
    assert probes.dense_top1 == scorer.score(PruningPlan()).top1
    for name, probe in probes.probes.items():
        assert probe.exec_rate == pytest.approx(0.5, abs=0.01)  # the half its gate scores lowest skipped it
        assert float((scores[name] < probe.threshold).float().mean()) == pytest.approx(0.5, abs=0.01)
        assert list(probe.quantiles) == sorted(probe.quantiles) and 0 < probe.quantiles[0] < probe.quantiles[2] < 1
        assert probe.top1 == scorer.score(PruningPlan(skip_thresholds={name: probe.threshold})).top1
        assert probes.features()[name][:3] == probe.quantiles
    again = PlanScorer(engine, digits, config, gates=scorer.gates)
    assert cached_skip_sensitivity(tmp_path / "skip.json", again, {"model": "small_cnn"}) == probes
    assert again.evaluations == 0
    with pytest.raises(PruneGymError, match=r"^expected a skip probe share in \(0, 1\); got 1$"):
        cached_skip_sensitivity(tmp_path / "other.json", again, {"model": "small_cnn"}, share=1.0)
