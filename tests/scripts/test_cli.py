from __future__ import annotations

import csv
import json
import statistics
from typing import Any

import pytest
import torch

from agents.apply import LATENCY_ROUNDS
from agents.benchmark import rewrite_tables
from agents.record import MethodRecord
from pruning_core.errors import PruneGymError
from scripts.cli import main
from scripts.demo import run_demo_seeds


def test_pretrain_then_evaluate_json(tmp_path, capsys):
    out = tmp_path / "digits.pt"
    assert (
        main(
            [
                "pretrain",
                "--model",
                "small_cnn",
                "--data",
                "digits",
                "--epochs",
                "2",
                "--lr",
                "0.05",
                "--batch-size",
                "64",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--data", "digits", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"top1", "n", "macs", "params"} <= record.keys()
    assert 0.5 < record["top1"] <= 1 and record["n"] == 359 and record["macs"] > record["params"] > 0


def test_pretrain_from_a_checkpoint_with_a_teacher_records_both(tmp_path, capsys):
    from pruning_core.checkpoint import load_checkpoint

    trained = "checkpoints/small_cnn_digits.pt"
    out = tmp_path / "student.pt"
    argv = ["pretrain", "--model", "small_cnn", "--data", "digits", "--epochs", "1", "--lr", "0.01"]
    assert main([*argv, "--init-from", trained, "--distill-from", trained, "--out", str(out)]) == 0
    meta = load_checkpoint(out).meta
    assert meta["init_from"]["model"] == meta["distilled_from"]["model"] == "small_cnn"
    assert meta["config"]["distill_weight"] == 0.5 and meta["test_top1"] > 0.9  # started from a trained model
    capsys.readouterr()
    assert main(["pretrain", "--model", "resnet20", "--data", "digits", "--init-from", trained, "--out", "x.pt"]) != 0
    assert "expected a resnet20 checkpoint or a shallower CIFAR ResNet; got small_cnn" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--checkpoint", "nowhere.pt"], "checkpoint nowhere.pt does not exist"),
        (["pretrain", "--model", "small_cnn", "--data", "imagefolder", "--out", "x.pt"], "needs --data-root"),
        (
            ["pretrain", "--model", "small_cnn", "--data", "imagefolder", "--data-root", "/no/such", "--out", "x.pt"],
            "data root /no/such does not exist",
        ),
        (["pretrain", "--model", "alexnet", "--out", "x.pt"], "model must be one of"),
        (["pretrain", "--model", "small_cnn", "--out", "x.pt", "--resume"], "nothing to resume"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--budget", "0.6"], "expected --budgets (one or more); got --budget 0.6"),
        (["--budget", "0.7", "0.5"], "expected --budgets (one or more); got --budget 0.7 0.5"),
        (
            ["--budget-metric", "macs"],
            "budgets are fractions of the dense model's latency on --device; got --budget-metric macs",
        ),
    ],
)
def test_benchmark_refuses_the_single_budget_flags_it_would_ignore(flags, message, capsys, tmp_path):
    out = tmp_path / "bench"
    assert main(["benchmark", "--methods", "uniform-l1", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"prunegym benchmark: error: {message}" and not out.exists()


def test_lut_validate_scores_other_builds_on_the_same_measurements(tmp_path, capsys):
    tables = []
    for name, batch, shape in (("a", "1", "1,8,8"), ("b", "1", "1,8,8"), ("c", "2", "1,8,8"), ("d", "1", "1,12,12")):
        tables.append(tmp_path / f"{name}.json")
        build = ["lut", "build", "--device", "host-cpu", "--model", "small_cnn", "--batch-size", batch]
        build += ["--input-shape", shape]
        assert main([*build, "--grid-points", "3", "--calibration-variants", "2", "--out", str(tables[-1])]) == 0
    validate = ["lut", "validate", "--lut", str(tables[0]), "--model", "small_cnn", "--samples", "4", "--rounds", "2"]
    capsys.readouterr()
    assert main([*validate, "--json", "--also", str(tables[0]), str(tables[1])]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"mape", "within_10pct", "spearman", "macs_within_10pct", "macs_spearman", "samples"} <= record.keys()
    assert list(record["others"]) == [str(tables[0]), str(tables[1])]
    assert record["others"][str(tables[0])] == pytest.approx(
        {k: record["relative"][k] for k in ("mape", "within_10pct", "spearman")}, nan_ok=True
    )
    assert main([*validate, "--also", str(tables[2])]) == 2
    err = capsys.readouterr().err.strip()
    assert "expected a host-cpu table at batch size 1 with 1 thread(s), got host-cpu at batch size 2 with 1" in err
    assert len(err.splitlines()) == 1
    assert main([*validate, "--also", str(tables[1])]) == 0
    assert f"{tables[1]} on the same measurements, relative: MAPE" in capsys.readouterr().out
    assert main([*validate, "--also", str(tables[3])]) == 2  # profiled on other shapes: refused before measuring
    assert "lookup table lacks layer" in capsys.readouterr().err


def test_prune_evaluate_export(tmp_path, capsys):
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                "--checkpoint",
                "checkpoints/small_cnn_digits.pt",
                "--data",
                "digits",
                "--uniform",
                "0.3",
                "--criterion",
                "activation",
                "--finetune-epochs",
                "1",
                "--schedule",
                "constant",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "val_bn" in printed and "test_finetuned" in printed
    assert main(["evaluate", "--pruned", str(out), "--data", "digits", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    meta = json.loads((out / "meta.json").read_text())
    assert record["macs"] == meta["macs"] < meta["base_macs"]
    assert record["top1"] == pytest.approx(meta["accuracy"]["test_finetuned"])
    assert main(["export", "--pruned", str(out), "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["max_abs_diff_ort_vs_torch"] < 1e-4 and (tmp_path / "m.onnx").exists()


def test_prune_stopped_between_epochs_goes_on_from_the_last_one_and_ends_where_an_unstopped_run_ends(
    tmp_path, capsys, monkeypatch
):
    import pruning_core.finetune

    argv = ["prune", "--checkpoint", "checkpoints/small_cnn_digits.pt", "--data", "digits", "--uniform", "0.4"]
    argv += ["--finetune-epochs", "3", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "meta.json").read_text())["accuracy"]
    save_torch = pruning_core.finetune.save_torch

    def stop_after_the_second_epoch(path, state):
        save_torch(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pruning_core.finetune, "save_torch", stop_after_the_second_epoch)
    assert main([*argv, "--out", str(tmp_path / "stopped")]) == 130  # Ctrl-C
    resume = tmp_path / "stopped.resume"
    assert resume.is_file() and not (tmp_path / "stopped").exists()
    monkeypatch.setattr(pruning_core.finetune, "save_torch", save_torch)
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "stopped")]) == 0
    assert f"resuming fine-tuning from {resume}: epoch 2/3 done" in capsys.readouterr().out
    assert json.loads((tmp_path / "stopped" / "meta.json").read_text())["accuracy"] == whole
    assert not resume.exists() and not (tmp_path / "whole.resume").exists()


def test_prune_with_a_bad_plan_is_one_line(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"sparsity": {"stem.0": 1.5}}))
    assert (
        main(
            [
                "prune",
                "--checkpoint",
                "checkpoints/small_cnn_digits.pt",
                "--plan",
                str(plan),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "sparsity for stem.0 must be in [0, 0.95]; got 1.5" in capsys.readouterr().err


def test_train_apply_baseline(tmp_path, capsys):
    common = ["--device", "pixel-a76", "--budget", "0.5"]
    assert (
        main(
            [
                "train",
                "--algo",
                "dqn",
                "--episodes",
                "4",
                "--warmup-episodes",
                "2",
                "--val-images",
                "100",
                "--bn-batches",
                "2",
                *common,
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert "best val top-1" in capsys.readouterr().out
    assert main(["apply", "--policy", str(tmp_path / "run"), *common, "--out", str(tmp_path / "applied")]) == 0
    report = json.loads((tmp_path / "applied" / "report.json").read_text())
    assert report["budget_met"] and report["method"] == "policy"
    assert (
        main(
            [
                "baseline",
                "--method",
                "uniform-l1",
                *common,
                "--finetune-epochs",
                "1",
                "--out",
                str(tmp_path / "uniform"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "uniform" / "report.json").read_text())
    assert report["budget_met"] and "val_top1_finetuned" in report and 0 <= report["test_top1_finetuned"] <= 1
    ratios = report["plan"]["sparsity"].values()
    assert max(ratios) - min(ratios) < 1 / 64  # uniform, up to rounding to whole channels


@pytest.mark.slow
@pytest.mark.slow  # environments on Ray actors
def test_train_with_its_environments_on_ray_and_resumed_there(tmp_path, ray_instance, capsys):
    argv = ["train", "--device", "pixel-a76", "--budget", "0.5", "--val-images", "100", "--bn-batches", "2"]
    argv += ["--n-envs", "2", "--executor", "ray", "--threads", "1", "--out", str(tmp_path / "run")]
    before = torch.get_num_threads()
    try:
        assert main([*argv, "--episodes", "4"]) == 0
        assert "4 episodes" in capsys.readouterr().out
        assert main(["train", "--resume", str(tmp_path / "run"), "--episodes", "6", "--executor", "ray"]) == 0
    finally:
        torch.set_num_threads(before)
    assert "6 episodes" in capsys.readouterr().out
    assert main([*argv[:-2], "--executor", "local", "--ray-address", "127.0.0.1:1", "--out", str(tmp_path / "x")]) == 2
    assert "a Ray address or worker count needs executor 'ray'" in capsys.readouterr().err


def test_train_killed_with_sigkill_resumes_losing_at_most_one_episode(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "scripts.cli",
        "train",
        "--algo",
        "ppo",
        "--episodes",
        "40",
        "--val-images",
        "150",
        "--bn-batches",
        "2",
        "--finetune-steps",
        "0",  # the mechanics of kill and resume, not the score: keep episodes fast
        "--device",
        "pixel-a76",
        "--out",
        str(run),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = run / "search_state.json"
    deadline = time.time() + 120
    while time.time() < deadline and (not state_file.exists() or json.loads(state_file.read_text())["episodes"] < 5):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved = json.loads(state_file.read_text())["episodes"]
    with open(run / "tb" / "progress.csv", newline="") as log:  # episode rows; PPO's own dumps leave them empty
        episodes_logged = sum(1 for row in csv.DictReader(log) if row.get("episode/reward"))
    assert saved >= 5 and episodes_logged - saved <= 1  # logged but not saved: at most the episode in flight
    assert main(["train", "--resume", str(run), "--episodes", str(saved + 3)]) == 0
    final = json.loads(state_file.read_text())
    assert final["episodes"] == saved + 3 and [r["episode"] for r in final["history"]] == list(range(1, saved + 4))


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    # Budget 0.8 rather than the demo's 0.5: the host table is measured on a shared machine whose speed drifts.
    assert (
        main(["demo", "--episodes", "6", "--finetune-epochs", "1", "--budget", "0.8", "--out", str(tmp_path / "demo")])
        == 0
    )
    records = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [r["method"] for r in records] == ["ppo", "uniform-l1", "global-magnitude"]
    # within the table's budget, unless the measured check widened the plan (the measurement overrules the table)
    assert all((r["budget_met"] or r["thinned_by"] < 0) and r["latency_ms_measured"] > 0 for r in records)
    # each pruned model measured side by side with the dense one: the ratio is of the two figures reported
    for r in records:
        assert len(r["latency_ratios_measured"]) == LATENCY_ROUNDS  # the median of that many side-by-side rounds
        assert r["latency_ratio_final"] == statistics.median(r["latency_ratios_measured"])
        # the verdict's ratio: the mean of the final measurement and one confirming the check's plan, unselected
        both = (r["latency_ratio_confirmed"], r["latency_ratio_final"])
        assert r["latency_ratio_measured"] == pytest.approx(sum(both) / 2)
        assert 0 < r["latency_ratio_measured"] < 1
        assert r["budget_met_measured"] == (r["latency_ratio_measured"] <= 0.8)
    assert (tmp_path / "demo" / "accuracy_vs_latency.png").stat().st_size > 5000


@pytest.mark.slow
def test_demo_over_seeds_summarises_each_method(tmp_path, capsys):
    argv = ["demo", "--episodes", "4", "--finetune-epochs", "1", "--budget", "0.8", "--seeds", "2", "--seed", "3"]
    assert main([*argv, "--out", str(tmp_path / "demo")]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["seeds"] == [3, 4] and list(summary["methods"]) == ["ppo", "uniform-l1", "global-magnitude"]
    for seed in (3, 4):  # each seed's run whole in its own folder
        records = json.loads((tmp_path / "demo" / f"s{seed}" / "results.json").read_text())
        assert [r["test_top1_finetuned"] for r in records] == [
            summary["methods"][r["method"]]["test_top1_finetuned"][seed - 3] for r in records
        ]
    ppo = summary["methods"]["ppo"]
    assert ppo["mean"] == pytest.approx(sum(ppo["test_top1_finetuned"]) / 2) and min(ppo["evaluations"]) > 0
    assert "ppo against the best heuristic" in capsys.readouterr().out


def test_demo_refuses_no_seeds(tmp_path):
    with pytest.raises(PruneGymError, match="expected at least 1 seed; got 0"):
        run_demo_seeds(0, out=tmp_path)


def test_benchmark_writes_tables_and_resumes(tmp_path, capsys):
    argv = [
        "benchmark",
        "--device",
        "pixel-a76",
        "--budgets",
        "0.6",
        "--methods",
        "uniform-l1",
        "random-search",
        "dqn",
        "--episodes",
        "3",
        "--finetune-epochs",
        "0",
        "--val-images",
        "100",
        "--bn-batches",
        "2",
        "--action-std",  # for the continuous agents; DQN runs without it
        "0.5",
        "--out",
        str(tmp_path / "bench"),
    ]
    assert main(argv) == 0
    records = json.loads((tmp_path / "bench" / "results.json").read_text())
    required = {
        "method",
        "budget",
        "seed",
        "latency_ms_predicted",
        "macs",
        "params",
        "val_top1",
        "test_top1_pruned",
        "test_top1_bn",
        "test_top1_finetuned",
        "search_seconds",
        "evaluations",
    }
    assert [r["method"] for r in records] == ["uniform-l1", "random-search", "dqn"]
    assert all(required <= r.keys() and 0 <= r["test_top1_bn"] <= 1 and r["budget_met"] for r in records)
    assert records[1]["evaluations"] == 3 and records[0]["evaluations"] == 0
    assert all(r["search_cpu_seconds"] >= 0 and r["finish_cpu_seconds"] > 0 for r in records)
    assert records[2]["search_cpu_seconds"] > 0  # the agent's, summed by its run
    log = (tmp_path / "bench" / "searches" / "random-search_b0.6_s0.jsonl").read_text().splitlines()[1:]
    assert len({json.loads(line)["plan"] for line in log}) == 3  # random-search's scores, logged as they were made
    assert (tmp_path / "bench" / "results.csv").exists() and "| 0.6 | dqn |" in capsys.readouterr().out
    assert (tmp_path / "bench" / "sparsity_per_layer.png").exists()
    assert "`learning_curves_b0.6.png`" in (tmp_path / "bench" / "results.md").read_text()  # dqn's episodes
    assert (tmp_path / "bench" / "learning_curves_b0.6.png").stat().st_size > 0
    assert 0.5 < json.loads((tmp_path / "bench" / "dense.json").read_text())["test_top1"] <= 1  # the plot's star
    assert main(argv) == 0  # resumed: nothing left to compute, nothing appended
    assert len(json.loads((tmp_path / "bench" / "results.json").read_text())) == 3
    # a record measured under an older protocol (timed in the benchmark's process) is finished again on resume, its
    # search reused; the old record is kept in superseded.json
    results = tmp_path / "bench" / "results.json"
    old = json.loads(results.read_text())
    old[0]["latency_ratio_final"] = 0.59
    results.write_text(json.dumps(old))
    rewrite_tables(tmp_path / "bench")  # until finished again, the tables leave it out and say so
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "| 0.6 | uniform-l1 |" not in table and "finished again (timed in the benchmark's own process" in table
    assert "uniform-l1 at 0.6 seed 0." in table and "| 0.6 | dqn |" in table
    assert main(argv) == 0
    again = json.loads(results.read_text())
    assert [r["method"] for r in again] == ["random-search", "dqn", "uniform-l1"] and again[:2] == old[1:]
    assert json.loads((tmp_path / "bench" / "superseded.json").read_text()) == [old[0]]
    assert again[2]["search_reused"] and again[2]["test_top1_finetuned"] == old[0]["test_top1_finetuned"]
    plans = tmp_path / "bench" / "plans"
    assert [f.name for f in plans.iterdir()] == ["uniform-l1_b0.6.json"]  # searched once per budget, not per seed
    start = argv.index("--methods")
    assert main([*argv[: start + 1], "uniform-l1", *argv[start + 4 :], "--seeds", "2"]) == 0
    uniform = [r for r in json.loads((tmp_path / "bench" / "results.json").read_text()) if r["method"] == "uniform-l1"]
    assert [r["seed"] for r in uniform] == [0, 1]
    assert uniform[1]["search_seconds"] == uniform[0]["search_seconds"]  # seed 1 reused seed 0's search
    assert uniform[1]["search_reused"] and not old[0]["search_reused"] and uniform[1]["finish_seconds"] > 0
    assert "| total |" in (tmp_path / "bench" / "results.md").read_text()
    # a cell finished again on request, its search reused, once: the new record says when it was finished
    again_argv = [*argv[: start + 1], "uniform-l1", *argv[start + 4 :], "--finish-again-before", "2999-01-01T00:00"]
    assert main(again_argv) == 0
    records = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in records][-1] == ("uniform-l1", 0) and records[-1]["search_reused"]
    superseded = json.loads((tmp_path / "bench" / "superseded.json").read_text())
    assert len(superseded) == 2 and superseded[-1]["seed"] == 0
    assert superseded[-1]["finished"] <= records[-1]["finished"] and len(records) == 4
    assert main([*again_argv[:-1], "2000-01-01T00:00"]) == 0  # finished after that time: kept
    assert json.loads((tmp_path / "bench" / "results.json").read_text()) == records
    assert main([*again_argv[:-1], "yesterday"]) == 2  # one-line error

    # Seed by seed: a benchmark stopped part-way has every budget for the seeds it finished.
    two = ["benchmark", "--device", "pixel-a76", "--budgets", "0.6", "0.8", "--methods", "uniform-l1", "--seeds", "2"]
    assert main([*two, "--finetune-epochs", "0", "--val-images", "100", "--out", str(tmp_path / "two")]) == 0
    order = [(r["seed"], r["budget"]) for r in json.loads((tmp_path / "two" / "results.json").read_text())]
    assert order == [(0, 0.6), (0, 0.8), (1, 0.6), (1, 0.8)]


def test_benchmark_scores_every_search_with_its_recipe_and_refuses_to_resume_an_agent_under_another(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--device", "pixel-a76", "--budgets", "0.6", "--methods", "random-search", "dqn"]
    argv += ["--episodes", "3", "--finetune-epochs", "0", "--val-images", "100", "--bn-batches", "2"]
    assert main([*argv, "--finetune-steps", "0", "--out", str(out)]) == 0
    log_inputs = json.loads((out / "searches" / "random-search_b0.6_s0.jsonl").read_text().splitlines()[0])
    assert log_inputs["inputs"]["scoring"]["finetune_steps"] == 0
    assert json.loads((out / "runs" / "dqn_b0.6_s0" / "config.json").read_text())["finetune_steps"] == 0
    (out / "results.json").unlink()  # forget the finished cells: the agent's run would be resumed
    capsys.readouterr()
    assert main([*argv, "--finetune-steps", "5", "--out", str(out)]) != 0
    assert "finetune_steps=5" in capsys.readouterr().err


@pytest.mark.slow  # a Ray instance and its workers
def test_benchmark_searches_and_fine_tunes_on_ray_workers_find_what_they_find_locally(tmp_path, ray_instance, capsys):
    argv = ["benchmark", "--device", "pixel-a76", "--budgets", "0.6", "--methods", "ppo", "greedy-lut", "tpe"]
    argv += ["uniform-l1", "dqn"]
    argv += ["--episodes", "4", "--finetune-epochs", "1", "--val-images", "100", "--bn-batches", "2"]
    argv += ["--finetune-steps", "0", "--threads", "1"]  # the Ray workers' threads: the same fine-tunes
    argv += ["--rerank", "2", "--rerank-steps", "2", "--match-greedy"]  # finalists re-scored on the workers too
    before = torch.get_num_threads()
    try:
        assert main([*argv, "--out", str(tmp_path / "local")]) == 0
        assert main([*argv, "--executor", "ray", "--ray-workers", "2", "--out", str(tmp_path / "ray")]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "searching with ppo, dqn on Ray workers" in out  # the agents side by side, while greedy-lut searched
    assert "fine-tuning 5 plans on Ray workers: ppo, greedy-lut, tpe, uniform-l1, dqn" in out

    def found(folder: str) -> list[tuple[Any, ...]]:
        records = json.loads((tmp_path / folder / "results.json").read_text())
        keys = ("method", "sparsity_searched", "val_top1", "evaluations", "test_top1_bn", "test_top1_finetuned")
        reranked = [(r.get("rerank") or {}).get("scores") for r in records]
        return [(*(r[k] for k in keys), scores) for r, scores in zip(records, reranked, strict=True)]

    assert found("ray") == found("local") and len(found("local")) == 5
    assert [scores is not None for *_, scores in found("local")] == [True, True, True, False, True]  # uniform: none
    assert ray_instance.is_initialized()  # an instance the benchmark did not start is left running


@pytest.mark.slow  # a Ray instance
def test_a_baseline_fine_tuned_on_a_ray_worker_is_the_one_fine_tuned_here(tmp_path, ray_instance):
    argv = ["baseline", "--method", "uniform-l1", "--device", "pixel-a76", "--budget", "0.5"]
    argv += ["--finetune-epochs", "1", "--threads", "1"]
    before = torch.get_num_threads()
    try:
        assert main([*argv, "--out", str(tmp_path / "here")]) == 0
        assert main([*argv, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    finally:
        torch.set_num_threads(before)
    here, ray = (json.loads((tmp_path / f / "report.json").read_text()) for f in ("here", "ray"))
    keys = ("test_top1_pruned", "test_top1_bn", "test_top1_finetuned", "macs", "sparsity")
    assert [ray[k] for k in keys] == [here[k] for k in keys] and here["test_top1_finetuned"] > 0


@pytest.mark.slow  # about a minute: every reading times the plans and the dense model 15 times
def test_benchmark_checks_a_budgets_plans_together_and_keeps_the_checks(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--device", "host-cpu", "--budgets", "0.6", "--methods", "uniform-l1", "global-magnitude"]
    argv += ["--finetune-epochs", "0", "--val-images", "100", "--bn-batches", "2", "--out", str(out)]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in records] == ["uniform-l1", "global-magnitude"]
    assert all(r["checked_with"] == 2 and r["check_ratios"] for r in records)  # one yardstick for both plans
    saved = json.loads((out / "checks" / "b0.6_s0.json").read_text())
    assert saved["global-magnitude"]["check"]["check_ratios"] == records[1]["check_ratios"]
    assert capsys.readouterr().out.count("budget check of 2 plans together") == 1
    # stopped before the second cell was finished: it is finished with the check made beside the first, not again
    (out / "results.json").write_text(json.dumps(records[:1]))
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again[1]["check_ratios"] == records[1]["check_ratios"] and again[1]["sparsity"] == records[1]["sparsity"]
    assert "budget check of" not in capsys.readouterr().out
    # finished again on request: checked again, and a finish-again stopped part-way keeps its new checks
    for r in again:  # as if checked in 1999 and finished in 2000
        r["finished"] = "2000-01-01T00:00:00"
    (out / "results.json").write_text(json.dumps(again))
    checks = json.loads((out / "checks" / "b0.6_s0.json").read_text())
    (out / "checks" / "b0.6_s0.json").write_text(json.dumps({m: {**c, "checked": "1999"} for m, c in checks.items()}))
    finish_again = [*argv, "--finish-again-before", "2001-01-01T00:00"]
    assert main(finish_again) == 0
    assert capsys.readouterr().out.count("budget check of 2 plans together") == 1
    refinished = json.loads((out / "results.json").read_text())
    assert all(r["finished"] > "2001" for r in refinished) and len(refinished) == 2
    (out / "results.json").write_text(json.dumps([refinished[0], again[1]]))  # stopped before the second cell
    assert main(finish_again) == 0
    assert "budget check of" not in capsys.readouterr().out
    last = json.loads((out / "results.json").read_text())[-1]
    assert last["method"] == "global-magnitude" and last["check_ratios"] == refinished[1]["check_ratios"]


def test_benchmark_transfer_rows_cost_one_evaluation_and_are_searched_once(tmp_path, monkeypatch):
    import agents.benchmark

    builds = []
    make_env = agents.benchmark.make_env
    monkeypatch.setattr(agents.benchmark, "make_env", lambda *a, **kw: builds.append(kw) or make_env(*a, **kw))
    run = tmp_path / "policy"
    common = ["--device", "pixel-a76", "--val-images", "100", "--bn-batches", "2"]
    train = ["train", "--algo", "ppo", "--episodes", "3", "--budget-range", "0.5", "0.8", "--centre-on-uniform"]
    assert main([*train, "--action-std", "0.3", *common, "--out", str(run)]) == 0
    bench = ["benchmark", *common, "--budgets", "0.6", "--methods", "uniform-l1", "--finetune-epochs", "0"]
    assert main([*bench, "--seeds", "2", "--transfer-from", str(run), "--out", str(tmp_path / "bench")]) == 0
    records = json.loads((tmp_path / "bench" / "results.json").read_text())
    transfer = [r for r in records if r["method"] == "transfer"]
    assert [r["seed"] for r in transfer] == [0, 1] and all(
        r["evaluations"] == 1 for r in transfer
    )  # the policy's plan, scored once
    assert all(r["budget_met"] for r in transfer) and transfer[0]["sparsity"] == transfer[1]["sparsity"]
    assert not transfer[0]["search_reused"] and transfer[1]["search_reused"]  # seed 1 read seed 0's saved plan
    # one env per action mapping (the policy's for the transfer rows, which run first), kept across seeds
    assert [bool(b.get("centre_on_uniform")) for b in builds] == [True, False]
    saved = json.loads((tmp_path / "bench" / "plans" / "transfer_b0.6.json").read_text())
    assert len(saved["inputs"]["policy"]) == 64  # the plan is tied to the policy's sha256


def test_dynamic_skip_train_apply_evaluate(tmp_path, capsys):
    common = ["--device", "pixel-a76", "--budget", "0.6"]
    assert (
        main(
            [
                "train",
                "--algo",
                "ppo",
                "--dynamic-skip",
                "--episodes",
                "3",
                "--val-images",
                "100",
                "--bn-batches",
                "2",
                *common,
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert "skip_thresholds" in json.loads((tmp_path / "run" / "best_plan.json").read_text())
    capsys.readouterr()
    assert main(["apply", "--policy", str(tmp_path / "run"), *common, "--out", str(tmp_path / "applied")]) == 0
    printed = capsys.readouterr().out
    assert "blocks executed on test (fraction of images): block1 " in printed and "expected at those rates" in printed
    report = json.loads((tmp_path / "applied" / "report.json").read_text())
    assert set(report["exec_rate_test"]) == {"block1", "block2"}
    assert report["latency_ms_expected"] <= report["latency_ms_predicted"] * (1 + 1e-9)
    structure = json.loads((tmp_path / "applied" / "structure.json").read_text())
    assert set(structure["gates"]) == {"block1", "block2"}
    capsys.readouterr()
    assert main(["evaluate", "--pruned", str(tmp_path / "applied"), "--json", "--latency-images", "30"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"top1", "latency_ms_measured", "latency_ms_expected", "exec_rate"} <= record.keys()
    assert set(record["exec_rate"]) == {"block1", "block2"}


def test_benchmark_tables_only_rewrites_a_folders_tables_and_refuses_a_folder_without_records(tmp_path, capsys):
    record = MethodRecord(
        method="ppo",
        budget=0.7,
        device="pixel-a76",
        budget_met=True,
        macs=1_000_000,
        params=10_000,
        dense_macs=2_000_000,
        dense_params=20_000,
        val_top1_pruned=0.1,
        test_top1_pruned=0.1,
        val_top1=0.5,
        test_top1_bn=0.5,
        test_top1_finetuned=0.8,
        search_seconds=1.0,
        evaluations=0,
        bn_recalibration="augmented",
        sparsity={"a": 0.5},
        seed=0,
    )
    (tmp_path / "results.json").write_text(json.dumps([record.to_dict()]))
    assert main(["benchmark", "--tables-only", "--out", str(tmp_path)]) == 0
    assert "| 0.7 | ppo | 1 |" in capsys.readouterr().out and (tmp_path / "results.csv").exists()
    assert main(["benchmark", "--tables-only", "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"prunegym benchmark: error: expected a benchmark folder holding results.json; got {tmp_path / 'none'}"
    )


def test_benchmark_gives_the_probed_agent_the_search_baselines_evaluations(tmp_path):
    out = tmp_path / "bench"
    argv = ["benchmark", "--device", "pixel-a76", "--budgets", "0.6", "--methods", "sensitivity", "tpe", "ppo"]
    argv += ["--episodes", "14", "--finetune-epochs", "0", "--val-images", "100", "--bn-batches", "2"]
    argv += ["--finetune-steps", "0", "--sensitivity", "--action-mapping", "scaled", "--agent-reward", "residual"]
    assert main([*argv, "--out", str(out)]) == 0
    records = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    probes = records["sensitivity"]["evaluations"]
    assert 0 < probes <= 1 + 2 * 4  # dense and two probes per group of small_cnn
    assert records["tpe"]["evaluations"] == 14 and records["ppo"]["evaluations"] == 14
    state = json.loads((out / "runs" / "ppo_b0.6_s0" / "search_state.json").read_text())
    assert state["episodes"] == 14 - probes - 1 and state["probe_evaluations"] == probes + 1
