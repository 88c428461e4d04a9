"""The benchmark's library: its configuration, run through the Python API, records brought up to date, tables.

``prunegym benchmark`` itself (flags, resuming, caches) is tested in ``tests/scripts/test_cli.py``.
"""

from __future__ import annotations

import json

import pytest

from agents import ALL_METHODS, BenchmarkConfig, run_benchmark
from agents.benchmark import (
    _FinetunedModels,
    _searched_score,
    cell_order,
    check_lines,
    load_records,
    restore_checked_sparsity,
    rewrite_tables,
    search_agent,
)
from agents.train import TrainRunConfig
from envs import Target
from envs.factory import make_env
from pruning_core.baselines import retargeted_plan
from pruning_core.errors import PruneGymError
from pruning_core.executor import FinetuneJob, LocalExecutor
from pruning_core.finetune import finetune_recipe
from pruning_core.plan import PruningPlan


def test_the_benchmark_runs_from_python_and_resumes(tmp_path, capsys):
    config = BenchmarkConfig(
        Target(device="pixel-a76"),  # an analytic device: nothing is timed, and the budget arithmetic is exact
        tmp_path / "bench",
        budgets=(0.6,),
        methods=("uniform-l1", "random-search"),
        episodes=2,
        finetune_epochs=0,
        val_images=100,
        bn_batches=2,
    )
    records = run_benchmark(config)
    assert [(r["method"], r["seed"]) for r in records] == [("uniform-l1", 0), ("random-search", 0)]
    assert all(r["budget_met"] and 0 <= r["test_top1_finetuned"] <= 1 for r in records)
    assert [r["evaluations"] for r in records] == [0, 2]
    assert json.loads((tmp_path / "bench" / "results.json").read_text()) == records
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "| 0.6 | uniform-l1 | 1 |" in table and "| 0.6 | random-search | 1 |" in table
    capsys.readouterr()
    assert run_benchmark(config) == records  # resumed: every cell is done, nothing runs again
    assert "plan" not in capsys.readouterr().out


def test_every_search_reranks_its_finalists_and_pays_for_it_at_greedys_evaluations(tmp_path, capsys):
    config = BenchmarkConfig(
        Target(device="pixel-a76"),
        tmp_path / "bench",
        budgets=(0.6,),
        methods=("ppo", "random-search", "greedy-lut"),
        episodes=4,
        finetune_epochs=0,
        val_images=100,
        bn_batches=2,
        finetune_steps=0,
        action_mapping="scaled",
        rerank=3,
        rerank_steps=2,
        match_greedy=True,
    )
    made = run_benchmark(config)
    assert [r["method"] for r in made] == ["ppo", "random-search", "greedy-lut"]  # planned first, kept in order
    records = {r["method"]: r for r in made}
    greedy = records["greedy-lut"]
    allowed = (
        greedy["evaluations"] - 3
    )  # every search re-scores 3 finalists from greedy-lut's count, however many it had
    assert f"every search gets greedy-lut's {greedy['evaluations']} evaluations ({allowed} to search, 3 to" in (
        capsys.readouterr().out
    )
    searches = tmp_path / "bench" / "searches"
    for method, record in records.items():
        rerank = record["rerank"]
        assert len(rerank["scores"]) == len(rerank["search_scores"]) == rerank["evaluations"] <= 3
        assert rerank["search_scores"] == sorted(rerank["search_scores"], reverse=True)
        assert rerank["scores"][rerank["picked"]] == max(rerank["scores"])
        assert record["search_seconds"] >= rerank["seconds"] > 0
        name = "greedy-lut_b0.6" if method == "greedy-lut" else f"{method}_b0.6_s0"  # greedy: once per budget
        log = searches / f"{name}_rerank.jsonl"
        assert len(log.read_text().splitlines()) == 1 + rerank["evaluations"]  # header, then one row a finalist
    assert records["random-search"]["evaluations"] == allowed + records["random-search"]["rerank"]["evaluations"]
    run = tmp_path / "bench" / "runs" / "ppo_b0.6_s0"
    state = json.loads((run / "search_state.json").read_text())
    assert state["episodes"] + state["probe_evaluations"] == allowed  # not episodes=4: greedy-lut's count
    assert records["ppo"]["evaluations"] == allowed + 3 == greedy["evaluations"]
    assert all(r["evaluations"] <= greedy["evaluations"] for r in made)  # no search scores more plans than greedy-lut
    assert len(state["finalists"]) >= 3  # the prior plan and the episodes' plans within the budget, best first
    assert [r for r, _ in state["finalists"]] == sorted((r for r, _ in state["finalists"]), reverse=True)
    assert json.loads(state["finalists"][0][1]) == json.loads((run / "best_plan.json").read_text())
    # greedy-lut's plan is saved with its re-rank, for the other seeds' cells
    saved = json.loads((tmp_path / "bench" / "plans" / "greedy-lut_b0.6.json").read_text())
    assert saved["rerank"] == records["greedy-lut"]["rerank"] and saved["inputs"]["rerank"]["finalists"] == 3
    table = (tmp_path / "bench" / "results.md").read_text()
    picked = records["ppo"]["rerank"]["picked"]
    assert f"| 0.6 | ppo | {len(records['ppo']['rerank']['scores'])} | {picked} (" in table
    # the learning curves: ppo's episodes beside the score greedy-lut's kept plan had in its search
    assert "`learning_curves_b0.6.png`" in table and (tmp_path / "bench" / "learning_curves_b0.6.png").is_file()
    kept = greedy["rerank"]["search_scores"][greedy["rerank"]["picked"]]
    assert _searched_score(tmp_path / "bench", "greedy-lut", 0.6) == kept


@pytest.mark.slow  # every reading times the finalists and the dense model 15 times
def test_on_a_measured_device_every_searchs_finalists_are_checked_together_and_their_checked_plans_reranked(
    tmp_path, capsys
):
    config = BenchmarkConfig(
        Target(device="host-cpu"),
        tmp_path / "bench",
        budgets=(0.6,),
        methods=("random-search", "greedy-lut"),
        episodes=4,
        finetune_epochs=0,
        val_images=100,
        bn_batches=2,
        finetune_steps=0,
        rerank=2,
        rerank_steps=2,
    )
    records = run_benchmark(config)
    out = capsys.readouterr().out
    checked = json.loads((tmp_path / "bench" / "checks" / "b0.6_s0.json").read_text())
    assert sorted(checked) == ["greedy-lut#0", "greedy-lut#1", "random-search#0", "random-search#1"]
    assert out.count("budget check of 4 plans together") == 1  # one yardstick for every finalist
    for record in records:
        method, rerank = record["method"], record["rerank"]
        assert rerank["after_check"] and rerank["scores"][rerank["picked"]] == max(rerank["scores"])
        kept = checked[f"{method}#{rerank['picked']}"]
        # the finalist kept is fine-tuned as it was checked, and the record names the plan it was searched as
        assert record["check_ratios"] == kept["check"]["check_ratios"] and record["checked_with"] == 4
        assert record["sparsity_searched"] == json.loads(kept["searched"])["sparsity"]
        assert record["sparsity"] == pytest.approx(json.loads(kept["kept"])["sparsity"])
        # the re-scores were of the checked plans, logged per seed (greedy-lut's too: its checks are per seed)
        log = tmp_path / "bench" / "searches" / f"{method}_b0.6_s0_rerank.jsonl"
        scored = [json.loads(row)["plan"] for row in log.read_text().splitlines()[1:]]
        assert sorted(scored) == sorted({checked[f"{method}#{i}"]["kept"] for i in range(2)})
        assert rerank["evaluations"] == len(scored)
    saved = json.loads((tmp_path / "bench" / "plans" / "greedy-lut_b0.6.json").read_text())
    assert "rerank" not in saved and len(saved["finalists"]) == 2 and saved["inputs"]["rerank"]["after_check"]
    searched = {"random-search": 4, "greedy-lut": saved["evaluations"]}  # the re-scores are paid on top
    assert all(r["evaluations"] == searched[r["method"]] + r["rerank"]["evaluations"] for r in records)
    assert "budget-checked first, together" in (tmp_path / "bench" / "results.md").read_text()
    # stopped before the second cell was written: its finalists' checks and re-scores are taken back, not made again
    (tmp_path / "bench" / "results.json").write_text(json.dumps(records[:1]))
    again = run_benchmark(config)
    assert "budget check of" not in capsys.readouterr().out
    assert [r["sparsity"] for r in again] == [r["sparsity"] for r in records]
    assert [r["rerank"] for r in again] == [r["rerank"] for r in records]


def test_the_tables_say_how_far_the_measured_check_moved_each_plan():
    records = [
        {"method": "ppo", "budget": 0.7, "seed": 1, "thinned_by": -0.02},
        {"method": "ppo", "budget": 0.7, "seed": 0, "thinned_by": 0.031},
        {"method": "uniform-l1", "budget": 0.5, "seed": 0, "thinned_by": 0.0},
        {"method": "taylor", "budget": 0.5, "seed": 0},  # not checked (an analytic device)
    ]
    lines = check_lines(records)
    assert lines[-2:] == ["| 0.7 | ppo | +0.031, -0.020 |", "| 0.5 | uniform-l1 | +0.000 |"]
    assert check_lines(records[3:]) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"budgets": (0.7, 1.5)}, r"budgets must be in \(0, 1\]; got 1.5"),
        ({"rerank": 17}, r"expected 0 <= rerank <= 16 and rerank_steps >= 1; got 17 and 50"),
        ({"match_greedy": True, "methods": ("ppo",)}, "match_greedy needs greedy-lut among the methods; got ppo"),
        ({"methods": ("ppo", "magic")}, r"methods must be 'all' or some of dqn, ppo, .*; got \['magic'\]"),
        ({"episodes": 0}, "expected episodes >= 1, seeds >= 1 and finetune_epochs >= 0; got 0, 1 and 2"),
        ({"action_mapping": "bend"}, "action_mapping must be one of clip, scaled; got 'bend'"),
        ({"agent_reward": "speed"}, "agent_reward must be one of accuracy, .*; got 'speed'"),
        ({"finish_again_before": "yesterday"}, "expected a time like 2026-12-04T11:00; got 'yesterday'"),
        ({"executor": "dask"}, "executor must be one of local, ray; got 'dask'"),
        ({"ray_address": "127.0.0.1:6379"}, "a Ray address or worker count needs executor 'ray'; got executor 'local'"),
        ({"executor": "ray", "ray_workers": 0}, "Ray workers must be >= 1; got 0"),
    ],
)
def test_a_bad_benchmark_config_fails_when_built(settings, message, tmp_path):
    with pytest.raises(PruneGymError, match=message):
        BenchmarkConfig(Target(device="pixel-a76"), tmp_path, **settings)


def test_a_benchmark_config_defaults_to_every_method_at_the_targets_budget_and_measures_latency(tmp_path):
    config = BenchmarkConfig(Target(budget=0.7), tmp_path, methods=("all",), finish_again_before="2026-12-04T11:00")
    assert config.budgets == (0.7,) and config.methods == ALL_METHODS and config.target_at(0.5).budget == 0.5
    assert config.finish_again_before == "2026-12-04T11:00:00"
    with pytest.raises(PruneGymError, match="expected budget_metric 'latency', got 'macs'"):
        BenchmarkConfig(Target(budget_metric="macs"), tmp_path)


def test_benchmark_runs_the_transferred_policy_after_the_agents_and_before_the_searches():
    order = cell_order(ALL_METHODS, transfer=True)
    assert order.index("transfer") == order.index("ppo") + 1 and order[-3:] == ["random-search", "tpe", "greedy-lut"]
    assert sorted(order) == sorted([*ALL_METHODS, "transfer"])
    assert cell_order(["uniform-l1", "greedy-lut"], transfer=True) == ["transfer", "uniform-l1", "greedy-lut"]
    assert cell_order(ALL_METHODS, transfer=False) == list(ALL_METHODS)


def _old_record(method: str, **measured: float) -> dict[str, object]:
    """A benchmark record as written before its fields had ``MethodRecord``'s names: the benchmark's beside the
    report's (``val_bn``, ``cost_predicted``, ...), and no final measurement kept apart from the verdict."""
    record: dict[str, object] = {"method": method, "budget": 0.7, "seed": 0, "device": "host-cpu", "budget_met": True}
    record.update(macs=1e6, params=1e4, dense_macs=2e6, dense_params=2e4, search_seconds=1.0, evaluations=0)
    record.update(val_pruned=0.1, test_pruned=0.1, val_bn=0.5, test_bn=0.5, val_finetuned=0.8, test_finetuned=0.8)
    record.update(val_top1=0.5, test_top1_pruned=0.1, test_top1_bn=0.5, test_top1_finetuned=0.8)
    record.update(cost_predicted=1.0, dense_cost_predicted=2.0, latency_ms_predicted=1.0)
    return {**record, "bn_recalibration": "augmented", "sparsity": {"a": 0.5}, **measured}


def test_old_benchmark_records_are_brought_up_to_date_and_tables_written_again(tmp_path):
    old = _old_record("ppo", latency_ratio_after_check=0.689, latency_ratio_measured=0.707)
    unchecked = _old_record("dqn", latency_ratio_measured=0.71)
    (tmp_path / "results.json").write_text(json.dumps([old, unchecked]))
    ppo, dqn = load_records(tmp_path / "results.json")
    # the check's own reading was chosen for being within the budget: the verdict does not count it
    assert ppo["latency_ratio_final"] == ppo["latency_ratio_measured"] == 0.707 and not ppo["budget_met_measured"]
    assert dqn["latency_ratio_final"] == 0.71 and not dqn["budget_met_measured"]
    # one name per figure: the report's old names give way to the benchmark's
    assert ppo["val_top1"] == 0.5 and ppo["val_top1_finetuned"] == 0.8 and ppo["dense_latency_ms_predicted"] == 2.0
    assert not {"val_bn", "test_finetuned", "cost_predicted", "dense_cost_predicted"} & ppo.keys()
    assert json.loads((tmp_path / "results.json").read_text()) == [old, unchecked]  # the file is left as it was
    for r in (old, unchecked):
        r.update(latency_ms_measured=1.0)
    (tmp_path / "results.json").write_text(json.dumps([old, unchecked]))
    rewrite_tables(tmp_path)  # timed in process: left out, named
    assert "ppo at 0.7 seed 0, dqn at 0.7 seed 0." in (tmp_path / "results.md").read_text()
    for r in (old, unchecked):
        r["latency_timing"] = "worker"
    (tmp_path / "results.json").write_text(json.dumps([old, unchecked]))
    rewrite_tables(tmp_path)  # runs nothing, writes it all again
    assert json.loads((tmp_path / "results.json").read_text())[0]["latency_ratio_final"] == 0.707
    assert (tmp_path / "results.md").exists() and (tmp_path / "accuracy_vs_latency.png").exists()
    assert "| 0.7 | ppo | 1 | 0.707 |" in (tmp_path / "results.md").read_text()  # seeds: 1
    # a one-pass re-measurement (scripts.remeasure_benchmark) adds its columns, "-" where a cell was not in it
    cells = [{"method": "ppo", "budget": 0.7, "seed": 0, "ratio_now": 0.72}]
    cells.append({"method": "dqn", "budget": 0.7, "seed": 0, "ratio_now": 0.69, "finished": "2026-12-04T09:00:00"})
    (tmp_path / "remeasured.json").write_text(json.dumps({"written": "now", "rounds": 15, "cells": cells}))
    rewrite_tables(tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| 0.8000 | 1 | 0 | 0% of seeds | 0.720 | 0% of seeds |" in table
    assert "| 0% of seeds | - | - |" in table  # dqn's timed record is not this one (finished again since)
    # later passes are kept beside it: per seed the median over the passes that timed the record
    later = [{**cells[0], "ratio_now": 0.66}, {**cells[0], "ratio_now": 0.69}]
    passes = [{"written": f"pass {i}", "rounds": 15, "cells": [c]} for i, c in enumerate([cells[0], *later])]
    (tmp_path / "remeasured.json").write_text(json.dumps({"passes": passes}))
    rewrite_tables(tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert (
        "| 0% of seeds | 0.690 | 100% of seeds |" in table
        and "3 passes: pass 0 (15 rounds), pass 1 (15 rounds)" in table
    )
    with pytest.raises(PruneGymError, match=r"expected a benchmark folder holding results\.json; got "):
        rewrite_tables(tmp_path / "none")


def test_old_records_get_the_sparsity_of_the_plan_the_check_kept(digits):
    env = make_env(dataset=digits, val_images=150, bn_batches=2, device="pixel-a76", budget=0.6)
    problem = env.budget_problem()
    searched = PruningPlan.uniform(env.engine.group_names, 0.2, round_to=env.granule)
    widths = {name: len(kept) for name, kept in env.engine.kept_channels(searched).items()}
    # a check that read the plan at 0.8 of dense, aimed at 0.98 of the budget, and kept what it read next
    kept, moved = retargeted_plan(problem, searched, problem.cost_of(widths) * 0.6 * 0.98 / 0.8)
    checked = {"method": "ppo", "budget": 0.6, "seed": 0, "sparsity": dict(searched.sparsity), "check_steps": 1}
    checked.update(check_ratios=[0.8, 0.57], latency_ratio_after_check=0.57, thinned_by=moved)
    unchecked = {"method": "uniform-l1", "budget": 0.6, "seed": 0, "sparsity": {"a": 0.5}, "check_steps": 0}
    wrong = {**checked, "seed": 1, "thinned_by": moved / 2}  # another table's check: left as it was
    new = {**unchecked, "sparsity_searched": {"a": 0.4}}  # written by the current code: left as it was
    records = [checked, unchecked, wrong, new]
    assert restore_checked_sparsity(records, lambda method, budget: env)
    assert moved > 0 and checked["sparsity"] == dict(kept.sparsity) != checked["sparsity_searched"]
    assert unchecked["sparsity"] == unchecked["sparsity_searched"] == {"a": 0.5}
    assert "sparsity_searched" not in wrong and new["sparsity_searched"] == {"a": 0.4}
    assert not restore_checked_sparsity([new], lambda method, budget: env)


def test_a_model_fine_tuned_before_the_benchmark_stopped_is_measured_not_fine_tuned_again(tmp_path, digits):
    config = BenchmarkConfig(
        Target(device="pixel-a76"),
        tmp_path / "bench",
        budgets=(0.6,),
        methods=("uniform-l1",),
        finetune_epochs=1,
        val_images=100,
        bn_batches=2,
    )
    (record,) = run_benchmark(config)
    assert not (tmp_path / "bench" / "finetuned" / "b0.6_s0" / "uniform-l1").exists()  # dropped once recorded
    # as if stopped after the fine-tune was kept and before its record was written
    env = make_env(device="pixel-a76", budget=0.6, val_images=100, bn_batches=2, dataset=digits)
    recipe = finetune_recipe(1, seed=0)
    job = FinetuneJob("uniform-l1", env.engine, PruningPlan(sparsity=record["sparsity"]), digits, recipe)
    (made,) = LocalExecutor().finetune([job])
    made.pruned.accuracy["test_finetuned"] = 0.125  # a mark: only the kept model has it
    made.seconds = 1000.0  # what making it took, counted in the record's finish
    folder, checkpoint = tmp_path / "bench" / "finetuned" / "b0.6_s0", config.target.checkpoint_path
    kept = _FinetunedModels(folder, "small_cnn", checkpoint, list(digits.classes), recipe)
    kept.save(job, made)
    assert kept.load(job).pruned.accuracy == made.pruned.accuracy and kept.load(job).seconds == 1000.0
    other = _FinetunedModels(folder, "small_cnn", checkpoint, list(digits.classes), finetune_recipe(2))
    assert other.load(job) is None  # made by another fine-tune
    (tmp_path / "bench" / "results.json").unlink()
    (again,) = run_benchmark(config)
    assert again["test_top1_finetuned"] == 0.125 and again["sparsity"] == record["sparsity"]
    assert again["finish_seconds"] > 1000.0
    assert not folder.joinpath("uniform-l1").exists()
    # kept past its record (stopped in between): dropped when the benchmark resumes, never reused later
    kept.save(job, made)
    run_benchmark(config)
    assert not folder.joinpath("uniform-l1").exists()


def test_an_agent_search_whose_folder_its_worker_cannot_see_fails_in_one_line(tmp_path):
    config = TrainRunConfig(target=Target(device="pixel-a76"), episodes=1)
    with pytest.raises(PruneGymError, match=r"^expected the benchmark's folder .*missing where the search runs"):
        search_agent(config, str(tmp_path / "missing" / "ppo_b0.5_s0"), None, None)
    assert not (tmp_path / "missing").exists()
