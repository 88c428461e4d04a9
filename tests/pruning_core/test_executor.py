"""Executors: the searches decide the same with plans scored on Ray workers as in this process, a worker killed
mid-search included; the local executor changes nothing and starts no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from envs.factory import make_env
from pruning_core.errors import PruneGymError
from pruning_core.executor import FinetuneJob, LocalExecutor, RayExecutor, make_executor
from pruning_core.finetune import finetune_recipe
from pruning_core.plan import PruningPlan
from pruning_core.scoring import PlanScorer
from pruning_core.search import greedy_search, random_search, tpe_search

SEARCHES = {
    "greedy-lut": lambda problem, scorer, executor: greedy_search(problem, scorer, steps=3, executor=executor),
    "random-search": lambda problem, scorer, executor: random_search(
        problem, scorer, evaluations=6, seed=1, executor=executor
    ),
    "tpe": lambda problem, scorer, executor: tpe_search(problem, scorer, evaluations=13, seed=3, executor=executor),
}


@pytest.fixture(scope="module")
def env(digits):
    return make_env(device="pixel-a76", budget=0.5, val_images=150, bn_batches=2, finetune_steps=0, dataset=digits)


def _fresh(env) -> PlanScorer:
    """A scorer with an empty cache, so that every search pays for its own scores."""
    return PlanScorer(env.engine, env.scorer.dataset, env.scorer.config)


def _search(env, method, executor, log):
    """The search's result, the scorer's evaluations and its log's rows (plan and score, in the order logged)."""
    scorer = _fresh(env)
    with scorer.logging_to(log, {"model": "small_cnn"}):
        result = SEARCHES[method](env.budget_problem(), scorer, executor)
    rows = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    return result, scorer.evaluations, [(row["plan"], row["top1"]) for row in rows]


@pytest.fixture(scope="module")
def local_results(env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    return {method: _search(env, method, None, folder / f"{method}.jsonl") for method in SEARCHES}


def _same(result, expected) -> bool:
    return (result.plan, result.val_top1, result.evaluations, result.history) == (
        expected.plan,
        expected.val_top1,
        expected.evaluations,
        expected.history,
    )


def test_scoring_a_batch_is_scoring_one_plan_after_the_other(env):
    plans = [PruningPlan.uniform(env.engine.group_names, s) for s in (0.2, 0.4, 0.2)]
    one_by_one, batched = _fresh(env), _fresh(env)
    expected = [one_by_one.score(plan) for plan in plans]
    scores = batched.score_all(plans, executor=LocalExecutor())
    assert [(s.top1, s.cached) for s in scores] == [(s.top1, s.cached) for s in expected]
    assert [s.cached for s in scores] == [False, False, True] and batched.evaluations == one_by_one.evaluations == 2


def test_the_local_executor_makes_a_submitted_call_when_its_result_is_first_asked_for():
    calls: list[int] = []
    pending = LocalExecutor().submit(calls.append, 1)
    assert calls == []  # not yet: work runs in the order the caller asks for it
    assert pending.result() is None and pending.result() is None
    assert calls == [1]


def test_a_call_submitted_to_ray_runs_now_on_a_worker_that_sees_the_drivers_variables(ray_instance, monkeypatch):
    monkeypatch.setenv("PRUNEGYM_PROBE", "from the driver")
    with RayExecutor(threads=1) as executor:
        pid, seen = executor.submit(os.getpid), executor.submit(os.getenv, "PRUNEGYM_PROBE")
        assert pid.result() != os.getpid() and seen.result() == "from the driver"
        # the task's own one-line error, not Ray's wrapper
        with pytest.raises(PruneGymError, match=r"^executor must be one of local, ray; got 'dask'$"):
            executor.submit(make_executor, "dask").result()
        with pytest.raises(PruneGymError, match=r"^expected a Ray node with at least 3 CPUs for one worker; got"):
            executor.submit(os.getpid, cpus=3)  # it would wait for ever


def test_the_executors_are_chosen_by_name():
    assert isinstance(make_executor("local"), LocalExecutor) and isinstance(make_executor("ray"), RayExecutor)
    with pytest.raises(PruneGymError, match=r"^executor must be one of local, ray; got 'dask'$"):
        make_executor("dask")
    with pytest.raises(PruneGymError, match=r"^a Ray address or worker count needs executor 'ray'; got executor"):
        make_executor("local", address="127.0.0.1:6379")
    with pytest.raises(PruneGymError, match=r"^Ray workers must be >= 1; got 0$"):
        RayExecutor(workers=0)


def test_searching_with_the_local_executor_imports_no_ray():
    code = (
        "import sys; from pruning_core.executor import make_executor; import pruning_core.search; "
        "make_executor('local'); make_executor('ray'); print('ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.parametrize("method", list(SEARCHES))
def test_a_search_on_ray_workers_finds_what_it_finds_locally(method, env, local_results, ray_instance, tmp_path):
    with RayExecutor(workers=2, batch_size=4) as executor:
        found = _search(env, method, executor, tmp_path / "log.jsonl")
        assert executor.remote_cpu_seconds > 0
    (result, evaluations, rows), (expected, expected_evaluations, expected_rows) = found, local_results[method]
    # logged as they arrive from the workers: the same rows, in another order where a later plan finished first
    assert _same(result, expected) and evaluations == expected_evaluations and sorted(rows) == sorted(expected_rows)


class _KillingOneWorker(RayExecutor):
    """Kills its first worker while the worker holds plans of the search's second batch (it is restarted)."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.batches = 0
        self.pids: list[int] = []

    def evaluate(self, scorer, plans, arrived=None):
        self.batches += 1
        if self.batches == 2:
            import ray

            self._workers_for(scorer)
            self.pids.append(ray.get(self.actors[0].pid.remote()))
            results = super().evaluate(scorer, plans, arrived)  # handed to the workers now
            ray.kill(self.actors[0], no_restart=False)
            return results
        return super().evaluate(scorer, plans, arrived)


@pytest.mark.slow
def test_a_worker_killed_mid_search_is_restarted_and_the_search_finds_the_same_plan(
    env, local_results, ray_instance, tmp_path
):
    with _KillingOneWorker(workers=2) as executor:
        result, evaluations, rows = _search(env, "greedy-lut", executor, tmp_path / "log.jsonl")
        executor.pids.append(ray_instance.get(executor.actors[0].pid.remote()))
    assert executor.batches > 2 and executor.pids[0] != executor.pids[1]  # killed, and a new process took over
    # the plan the killed worker held was scored again on it, and the retry recorded
    assert [(r.worker, r.attempt) for r in executor.retried] == [(0, 1)]
    assert executor.retried[0].error.endswith("Error") and executor.retried[0].plan in {plan for plan, _ in rows}
    expected, expected_evaluations, expected_rows = local_results["greedy-lut"]
    assert _same(result, expected) and evaluations == expected_evaluations and sorted(rows) == sorted(expected_rows)


class _DriverStopsMidBatch(RayExecutor):
    """Stops the search (as a driver killed would) when the third evaluation of its second batch arrives, with the
    other workers' plans still in flight."""

    def evaluate(self, scorer, plans, arrived=None):
        self.batches = getattr(self, "batches", 0) + 1
        if self.batches != 2:
            return super().evaluate(scorer, plans, arrived)
        count = [0]

        def stop_at_third(index, evaluation):
            arrived(index, evaluation)
            count[0] += 1
            if count[0] == 3:
                raise KeyboardInterrupt

        return super().evaluate(scorer, plans, stop_at_third)


@pytest.mark.slow
def test_a_search_stopped_mid_batch_resumes_from_its_log_and_scores_again_only_what_was_in_flight(
    env, local_results, ray_instance, tmp_path
):
    log = tmp_path / "log.jsonl"
    with _DriverStopsMidBatch(workers=2) as executor, pytest.raises(KeyboardInterrupt):
        _search(env, "greedy-lut", executor, log)
    logged = len(log.read_text().splitlines()) - 1
    expected, expected_evaluations, expected_rows = local_results["greedy-lut"]
    assert 3 < logged < expected_evaluations  # the first batch and three of the second: every evaluation that arrived
    with RayExecutor(workers=2) as executor:
        scorer = _fresh(env)
        with scorer.logging_to(log, {"model": "small_cnn"}) as score_log:
            result = SEARCHES["greedy-lut"](env.budget_problem(), scorer, executor)
    rows = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    assert _same(result, expected) and sorted((r["plan"], r["top1"]) for r in rows) == sorted(expected_rows)
    assert scorer.evaluations == expected_evaluations - logged and score_log.carried_seconds > 0


def _jobs(env, digits) -> list[FinetuneJob]:
    recipe = finetune_recipe(1, seed=2)
    plans = {"thin": 0.6, "wide": 0.2, "bn-only": 0.4}
    return [
        FinetuneJob(name, env.engine, PruningPlan.uniform(env.engine.group_names, s), digits, recipe, bn_batches=2)
        for name, s in plans.items()
    ]


@pytest.mark.slow
def test_plans_fine_tuned_on_ray_workers_are_the_ones_fine_tuned_here(env, digits, ray_instance):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' threads: the same arithmetic
    try:
        jobs = _jobs(env, digits)
        jobs[2] = replace(jobs[2], config=None)  # recalibration alone
        here = [made.pruned for made in LocalExecutor().finetune(jobs)]
        arrived: list[str] = []
        with RayExecutor(workers=2) as executor:
            made = list(executor.finetune(jobs, finished=lambda name, one: arrived.append(name)))
    finally:
        torch.set_num_threads(before)
    assert sorted(arrived) == ["bn-only", "thin", "wide"]
    assert all(one.seconds > 0 and one.cpu_seconds > 0 for one in made)
    remote = [one.pruned for one in made]
    assert [p.plan for p in remote] == [job.plan for job in jobs]
    assert [p.accuracy for p in remote] == [p.accuracy for p in here]
    assert "test_finetuned" in here[0].accuracy and "test_finetuned" not in here[2].accuracy
    for a, b in zip(remote, here, strict=True):
        assert a.kept_channels == b.kept_channels
        weights = zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
        assert all(torch.equal(x, y) for x, y in weights)


def test_a_worker_no_ray_node_can_place_is_refused_in_one_line(env, digits, ray_instance):
    with (
        RayExecutor(threads=3) as executor,
        pytest.raises(
            PruneGymError,
            match=r"^expected a Ray node with at least 3 CPUs for one worker; got at most 2$",
        ),
    ):
        list(executor.finetune(_jobs(env, digits)))  # it would wait for ever
