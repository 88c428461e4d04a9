"""The target bundle: checked when built, and the one way ``make_env`` is told what to prune for."""

from __future__ import annotations

import dataclasses

import pytest

from envs import Target
from envs.factory import make_env
from envs.target import CHECKPOINTS_ENV
from pruning_core.errors import CheckpointError, PruneGymError


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"device": "tpu"}, PruneGymError, r"device must be one of host-cpu, .* or lut:PATH; got 'tpu'"),
        ({"device": "lut:/no/such.json"}, PruneGymError, r"expected lut:PATH .*; got 'lut:/no/such.json' \(no such"),
        ({"data": "mnist"}, PruneGymError, "data must be one of digits, cifar10, imagefolder; got 'mnist'"),
        ({"budget_metric": "flops"}, PruneGymError, "budget_metric must be one of latency, macs, params; got 'flops'"),
        ({"budget": 1.7}, PruneGymError, r"budget must be in \(0, 1\]; got 1.7"),
        ({"budget": 0.0}, PruneGymError, r"budget must be in \(0, 1\]; got 0"),
        ({"checkpoint": "/no/such.pt"}, CheckpointError, r"expected a checkpoint file; got /no/such.pt \(no such"),
        ({"model": "resnet20"}, CheckpointError, r"none given, and no resnet20_digits.pt in .*checkpoints"),
    ],
)
def test_a_bad_target_fails_when_built_in_one_line(fields, error, message):
    with pytest.raises(error, match=message) as caught:
        Target(**fields)
    assert len(str(caught.value).splitlines()) == 1


def test_a_target_is_frozen_keeps_paths_as_text_and_names_its_checkpoint(tmp_path):
    target = Target(device="pixel-a76", budget=1.0)
    assert target.checkpoint_path.name == "small_cnn_digits.pt" and target.checkpoint is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.budget = 0.3  # type: ignore[misc]
    given = Target(checkpoint=target.checkpoint_path, data_root=tmp_path)  # type: ignore[arg-type]
    assert given.checkpoint == str(target.checkpoint_path) and given.data_root == str(tmp_path)
    assert Target(**given.as_kwargs()) == given


def test_default_checkpoints_are_found_where_the_user_keeps_them(tmp_path, monkeypatch):
    committed = Target().checkpoint_path
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "small_cnn_digits.pt").write_bytes(committed.read_bytes())
    monkeypatch.setenv(CHECKPOINTS_ENV, str(mine))
    assert Target().checkpoint_path == (mine / "small_cnn_digits.pt").resolve()
    monkeypatch.delenv(CHECKPOINTS_ENV)
    monkeypatch.chdir(mine.parent)
    (tmp_path / "checkpoints").mkdir()
    assert Target().checkpoint_path == committed  # ./checkpoints is empty: the source checkout's
    (tmp_path / "checkpoints" / "small_cnn_digits.pt").write_bytes(committed.read_bytes())
    assert Target().checkpoint_path == (tmp_path / "checkpoints" / "small_cnn_digits.pt").resolve()


def test_make_env_takes_a_target_or_its_fields_but_not_both(digits):
    fast = {"val_images": 100, "bn_batches": 1, "dataset": digits}
    target = Target(device="pixel-a76", budget=0.6, budget_metric="macs")
    whole = make_env(target, **fast)
    by_fields = make_env(device="pixel-a76", budget=0.6, budget_metric="macs", **fast)
    assert whole.spec_kwargs == by_fields.spec_kwargs and whole.target == by_fields.target
    assert whole.spec_kwargs["budget_metric"] == "macs" and whole.budget == 0.6
    with pytest.raises(PruneGymError, match="expected the target whole or by its fields, not both; got target and bud"):
        make_env(target, budget=0.5, **fast)
