from __future__ import annotations

import json

import pytest

from agents.compare import YardstickConfig, compare_searches, write_tables
from agents.train import TrainRunConfig, train_agent
from envs.target import Target
from pruning_core.errors import PruneGymError

TARGET = {"model": "small_cnn", "data": "digits", "device": "pixel-a76"}
AGENT = TrainRunConfig(sensitivity=True, action_mapping="scaled", reward="residual", action_std=0.2)


def test_searches_meet_one_yardstick_at_equal_evaluations_and_resume(tmp_path, capsys):
    cfg = YardstickConfig(
        target=Target(**TARGET, budget=0.5),
        methods=("sensitivity", "tpe", "ppo"),
        evaluations=(16,),
        val_images=150,
        bn_batches=2,
        agent=AGENT,
    )
    rows = compare_searches(cfg, tmp_path / "y", progress=False)
    by = {r["method"]: r for r in rows}
    probes = by["sensitivity"]["evaluations"] - 1  # its plan is the one more
    assert by["tpe"]["evaluations"] == 16 and len(by["tpe"]["curve"]) == 16
    # the agent's probes and prior plan are counted in its evaluations: it had 16 - probes - 1 episodes
    assert by["ppo"]["evaluations"] == 16 and len(by["ppo"]["curve"]) == 16 - probes - 1
    # it starts from the sensitivity plan and keeps it unless an episode scores higher
    assert by["ppo"]["val_top1"] >= by["sensitivity"]["val_top1"]
    assert (tmp_path / "y" / "learning_curves.png").is_file()
    table = (tmp_path / "y" / "yardstick.md").read_text().splitlines()
    assert len(table) == 2 + 3 and any(line.startswith("| 0.5 | ppo | 16 | 1 |") for line in table)
    assert "first fifth" in capsys.readouterr().out
    (tmp_path / "y" / "yardstick.md").unlink()
    assert write_tables(tmp_path / "y") == rows and (tmp_path / "y" / "yardstick.md").is_file()
    again = compare_searches(cfg, tmp_path / "y", progress=False)  # every row saved: nothing runs again
    assert again == rows and json.loads((tmp_path / "y" / "yardstick.json").read_text()) == rows


def test_a_transferred_policy_costs_its_probes_and_one_plan(tmp_path):
    policy = tmp_path / "policy"
    config = TrainRunConfig(
        target=Target(**TARGET),
        budget_range=(0.4, 0.8),
        episodes=4,
        sensitivity=True,
        action_mapping="scaled",
        val_images=150,
        bn_batches=2,
    )
    train_agent(config, policy, progress=False)
    cfg = YardstickConfig(
        target=Target(**TARGET, budget=0.6),
        methods=("transfer",),
        evaluations=(1,),
        val_images=150,
        bn_batches=2,
        transfer_from=str(policy),
    )
    (row,) = compare_searches(cfg, tmp_path / "y", progress=False)
    assert row["method"] == "transfer" and 0 < row["val_top1"] <= 1
    assert row["evaluations"] <= 1 + 2 * 4 + 1  # dense + 2 probes per group of small_cnn's 4, and its plan


def test_bad_comparisons_are_refused():
    with pytest.raises(PruneGymError, match="methods must be some of"):
        YardstickConfig(Target(**TARGET, budget=0.5), methods=("annealing",), evaluations=(10,))
    with pytest.raises(PruneGymError, match="method 'transfer' needs a policy"):
        YardstickConfig(Target(**TARGET, budget=0.5), methods=("transfer",), evaluations=(10,))
