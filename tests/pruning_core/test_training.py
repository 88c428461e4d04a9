from __future__ import annotations

import pytest
import torch

from pruning_core.checkpoint import load_checkpoint, save_checkpoint
from pruning_core.errors import CheckpointError, PruneGymError
from pruning_core.models import build_model
from pruning_core.training import Schedule, TrainConfig, evaluate, make_state, pretrain, resume_path, save_torch, train


class Pickled:
    """Stands for any Python object a stranger's file could carry."""


def _small_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", in_channels=1)


def test_schedules():
    cosine = TrainConfig(epochs=10, lr=0.2, warmup_epochs=1)
    lrs = [cosine.lr_at(s, 100, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.02) and max(lrs) == pytest.approx(0.2) and lrs[-1] < 1e-3
    constant = TrainConfig(epochs=10, lr=0.2, warmup_epochs=0, schedule="constant")
    assert constant.schedule is Schedule.CONSTANT and {constant.lr_at(s, 100, 10) for s in range(100)} == {0.2}


def test_bad_config_is_refused():
    with pytest.raises(PruneGymError, match="learning rate must be > 0; got -1"):
        TrainConfig(lr=-1)


def test_training_learns_digits(digits):
    model = _small_cnn()
    before = evaluate(model, digits, "val").top1
    train(
        make_state(model, TrainConfig(epochs=3, lr=0.05, batch_size=64)),
        digits,
        TrainConfig(epochs=3, lr=0.05, batch_size=64),
        progress=False,
    )
    after = evaluate(model, digits, "val")
    assert before < 0.3 < 0.9 < after.top1
    assert after.n == len(digits.val) and after.top5 is not None and after.top5 >= after.top1


def test_distillation_runs_and_learns(digits):
    teacher = _small_cnn(1)
    config = TrainConfig(epochs=2, lr=0.05, batch_size=64)
    train(make_state(teacher, config), digits, config, progress=False)
    student = _small_cnn(2)
    kd = TrainConfig(epochs=2, lr=0.05, batch_size=64, distill_weight=0.5)
    train(make_state(student, kd), digits, kd, teacher=teacher, progress=False)
    assert evaluate(student, digits, "val").top1 > 0.8


def test_resume_of_a_killed_run_matches(digits, tmp_path):
    config = TrainConfig(epochs=2, lr=0.05, batch_size=64)
    reference, _ = pretrain(_small_cnn(), "small_cnn", digits, config, tmp_path / "ref.pt", progress=False)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(state):
        if state.epoch == 1:
            raise Killed

    model = _small_cnn()
    state = make_state(model, config)
    with pytest.raises(Killed):

        def save_then_kill(st):
            save_torch(
                resume_path(tmp_path / "run.pt"),
                {
                    "model_name": "small_cnn",
                    "dataset": "digits",
                    "model": st.model.state_dict(),
                    "optimizer": st.optimizer.state_dict(),
                    "epoch": st.epoch,
                    "history": [],
                },
            )
            kill_after_first_epoch(st)

        train(state, digits, config, on_epoch_end=save_then_kill, progress=False)
    resumed, _ = pretrain(_small_cnn(3), "small_cnn", digits, config, tmp_path / "run.pt", resume=True, progress=False)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = _small_cnn()
    meta = {"model": "small_cnn", "classes": [str(i) for i in range(10)], "in_channels": 1}
    save_checkpoint(tmp_path / "m.pt", model, meta)
    loaded = load_checkpoint(tmp_path / "m.pt").build()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model.eval()(x), loaded(x))

    # A pickled Python object (any class outside torch's allow-list) where metadata should be.
    torch.save({"format": "prunegym-checkpoint", "version": 1, "state_dict": {}, "meta": Pickled()}, tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_checkpoint(tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a PruneGym checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "wrong.pt", build_model("resnet20"), {**meta, "in_channels": 3})
    with pytest.raises(CheckpointError, match="weights do not fit model 'small_cnn'"):
        load_checkpoint(tmp_path / "wrong.pt").build()
