"""The benchmark: agents and every baseline at every budget on the same device latency, same fine-tuning.

Writes, under ``out``: ``results.json`` (one record per method x budget x seed, saved after each cell, so a killed
run resumes where it stopped), ``results.csv``, ``results.md`` (mean and spread over seeds) and plots:
``accuracy_vs_latency.png``, ``sparsity_per_layer.png`` (at the budget closest to 0.5) and, per budget with an agent,
``learning_curves_b<budget>.png`` (:func:`learning_curves`).

Seeds vary what a seed can: the agents' and random search's exploration, and every method's fine-tuning (data order
and augmentation). A method whose plan does not depend on the seed (the heuristics, greedy-lut, the transferred
policy) is searched once per budget; its plan and search cost are saved under ``plans/`` with what the plan depends
on (model, checkpoint, device and cost model, scoring recipe, the policy's weights), and fine-tuned per seed. Each
budget builds its environment once (twice with a transferred policy, whose action mapping may differ) and keeps it
across seeds. Every record has ``finish_seconds`` (pruning, BN recalibration, fine-tuning, measuring) and
``search_reused``; ``results.md`` ends with where the time went. For each seed and budget, every method's plan is
made first; on a measured device their budget checks are then made together (one yardstick, see
:func:`~agents.apply.meet_measured_budgets`) and saved under ``checks/``, and only then is each plan fine-tuned.
With ``rerank`` on such a device, every search's finalists are checked in that one pass, and each search keeps the
finalist whose checked plan re-scores best: the re-rank scores the plans that will be fine-tuned.

From Python::

    from pathlib import Path

    from agents import BenchmarkConfig, run_benchmark
    from envs import Target

    run_benchmark(BenchmarkConfig(Target(device="pixel-a76"), Path("bench"), budgets=(0.7, 0.5)))
"""

from __future__ import annotations

import csv
import datetime
import json
import shutil
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from agents.apply import (
    finish_plan,
    measured_verdict,
    meet_measured_budgets,
    needs_check,
    plan_from_policy,
    replay_check,
)
from agents.policy_io import SavedPolicy, load_policy
from agents.record import MethodRecord
from agents.train import ALGOS, FINALISTS_KEPT, TrainRunConfig, prepare_env_settings, train_agent
from envs.factory import make_env
from envs.layer_prune import ACTION_MAPPINGS, DEFAULT_LEVELS, REWARDS, LayerPruneEnv, checked_aim
from envs.target import Target
from pruning_core.baselines import BASELINE_CRITERIA, BASELINES, BudgetProblem, baseline_plan
from pruning_core.data import atomic_write_bytes
from pruning_core.errors import BudgetInfeasibleError, CheckpointError, PruneGymError
from pruning_core.executor import Executor, Finetuned, FinetuneJob, Pending, make_executor
from pruning_core.finalists import Finalists, Reranked, rerank, rerank_scorer
from pruning_core.finetune import finetune_recipe
from pruning_core.plan import PruningPlan
from pruning_core.scoring import DEFAULT_FINETUNE_STEPS
from pruning_core.search import greedy_search, random_search, tpe_search
from pruning_core.sensitivity import sensitivity_plan
from pruning_core.serialize import load_pruned, save_pruned
from pruning_core.training import TrainConfig

SEARCHES = ("random-search", "tpe", "greedy-lut")
PROBED = ("sensitivity",)
"""Methods made from the sensitivity probes alone (2 plans per group): the plan they suggest."""
ALL_METHODS = ("dqn", "ppo", *BASELINES, *PROBED, *SEARCHES)
DETERMINISTIC = (*BASELINES, *PROBED, "greedy-lut", "transfer")
"""Methods whose plan does not depend on the seed: searched once per budget (the plan and its search cost saved under
``plans/``), then fine-tuned with every seed."""


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark run: methods x budgets x seeds on one target; checked when built.

    Example (the methods that search nothing, on an analytic device)::

        BenchmarkConfig(Target(device="pixel-a76"), Path("bench"), budgets=(0.7, 0.5), methods=("uniform-l1", "taylor"))
    """

    target: Target
    """The model, checkpoint, data and device. Its budget is the default of ``budgets``; its budget metric must be
    latency (the benchmark measures latency)."""
    out: Path
    """Folder of the results, resumable (see the module's docstring)."""
    budgets: tuple[float, ...] = ()
    """Fractions of the dense model's latency on the device, each in (0, 1] (empty: the target's budget)."""
    methods: tuple[str, ...] = ALL_METHODS
    """Some of :data:`ALL_METHODS`, or ``("all",)``."""
    episodes: int = 100
    """Episodes of each agent, and evaluations of random-search and tpe."""
    finetune_epochs: int = 2
    """Epochs of every method's fine-tuning."""
    seeds: int = 1
    """Seeds 0 to ``seeds - 1`` (see the module's docstring for what a seed varies)."""
    val_images: int = 1000
    """Val images a plan is scored on."""
    bn_batches: int = 10
    """BN recalibration batches in the score."""
    finetune_steps: int = DEFAULT_FINETUNE_STEPS
    """SGD steps of the short fine-tune in every search's score (agents, random-search, greedy-lut)."""
    rerank: int = 0
    """Every search (agents, random-search, tpe, greedy-lut) scores its ``rerank`` best distinct plans within the
    budget again, with ``rerank_steps`` SGD steps after recalibration, and keeps the best of those
    (:mod:`pruning_core.finalists`; 0: none, the search's best plan). The re-scores count in its evaluations and
    search time, and are logged under ``searches/`` (``*_rerank.jsonl``). On a device this host measures the
    finalists are first budget-checked together with the other methods' plans, and their checked plans are re-scored
    (per seed, greedy-lut's included)."""
    rerank_steps: int = DEFAULT_FINETUNE_STEPS
    """SGD steps of the re-score's short fine-tune."""
    match_greedy: bool = False
    """At each budget, greedy-lut searches first and the agents, random-search and tpe then score as many plans as it
    did in all, its re-rank included, instead of ``episodes``: their searches (the agents' probes and prior plan
    included) get that count less ``rerank``, which their re-ranks spend (greedy-lut may have fewer finalists within
    the budget than ``rerank``). Needs greedy-lut among the methods."""
    transfer_from: str | None = None
    """A trained policy's run folder, also applied with no search (method ``transfer``)."""
    centre_on_uniform: bool = False
    """Agents' action range centred on the uniform plan (see ``LayerPruneEnv``)."""
    levels: int = DEFAULT_LEVELS
    """DQN's sparsity levels (see ``TrainRunConfig.levels``)."""
    action_std: float | None = None
    """Agents' initial exploration (see ``TrainRunConfig.action_std``)."""
    sensitivity: bool = False
    """Probe every group before the searches (cached per budget): the agents observe the probes and start from the
    sensitivity plan with the ``scaled`` mapping, and greedy-lut's first round reuses them (its evaluations then
    include them)."""
    action_mapping: str = "clip"
    """The agents' action mapping (see ``LayerPruneEnv``)."""
    agent_reward: str = "accuracy"
    """The agents' reward (``residual``: gain over the prior plan)."""
    episodes_per_update: int = 4
    """PPO's episodes per update."""
    calibrate_latency: bool = False
    """On a measured device, correct the lookup table by timing a few plans beside the dense model before the
    searches of each budget (saved under ``corrections/`` and shared by every method of the run)."""
    search_aim: float = 1.0
    """Every method's plan aims at this fraction of the budget (the agents' episodes, the searches, the baselines):
    on a measured device, :data:`~agents.apply.CHECK_AIM`, where the measured budget check aims, lands the plans
    inside the check's band, so that it moves none of them (see ``LayerPruneEnv``'s ``aim``)."""
    finish_again_before: str | None = None
    """Finish again, reusing their searches, the selected cells whose record was finished before this ISO time (or
    does not say when): for cells whose measured check met a host in another state (``scripts.remeasure_benchmark``).
    Resumable, as the new records say when they were finished."""
    executor: str = "local"
    """Where the searches (greedy-lut, random-search, tpe) score their candidates, the agents search, and each budget
    and seed's plans are fine-tuned: ``local``, in this process, one after the other, or ``ray``, on Ray workers
    (:mod:`pruning_core.executor`): a budget and seed's agents as Ray tasks side by side, started before the
    searches score, the fine-tunes as Ray tasks at once. The same plans, scores, evaluations and fine-tuned models,
    at the same torch threads. The agents' run folders are written in place (a Ray cluster's nodes must share
    ``out``), so a stopped benchmark resumes them as it does locally. Latency is never measured on Ray: the latency
    tables and corrections are made here, and the budget checks and the fine-tuned models timed here, one at a time,
    with nothing running on Ray."""
    ray_address: str | None = None
    """The Ray cluster to join with ``executor="ray"`` (None: start a local Ray instance)."""
    ray_workers: int | None = None
    """Ray workers scoring candidates (None: one per CPU of the Ray cluster)."""
    ray_threads: int = 1
    """Torch threads (and Ray CPUs) of each Ray worker: this process's (``--threads``) gives the same scores and
    fine-tuned models as the local executor."""

    def __post_init__(self) -> None:
        if self.target.budget_metric != "latency":
            raise PruneGymError(
                "budgets are fractions of the dense model's latency on the target's device; expected budget_metric "
                f"'latency', got {self.target.budget_metric!r}"
            )
        methods = ALL_METHODS if tuple(self.methods) == ("all",) else tuple(self.methods)
        unknown = sorted(set(methods) - set(ALL_METHODS))
        if unknown:
            raise PruneGymError(f"methods must be 'all' or some of {', '.join(ALL_METHODS)}; got {unknown}")
        budgets = tuple(self.budgets) or (self.target.budget,)
        for budget in budgets:
            if not 0 < budget <= 1:
                raise PruneGymError(f"budgets must be in (0, 1]; got {budget:g}")
        if self.episodes < 1 or self.seeds < 1 or self.finetune_epochs < 0:
            raise PruneGymError(
                "expected episodes >= 1, seeds >= 1 and finetune_epochs >= 0; "
                f"got {self.episodes}, {self.seeds} and {self.finetune_epochs}"
            )
        if self.match_greedy and "greedy-lut" not in methods:
            raise PruneGymError(f"match_greedy needs greedy-lut among the methods; got {', '.join(methods)}")
        if not 0 <= self.rerank <= FINALISTS_KEPT or self.rerank_steps < 1:
            raise PruneGymError(
                f"expected 0 <= rerank <= {FINALISTS_KEPT} and rerank_steps >= 1; got {self.rerank} and "
                f"{self.rerank_steps}"
            )
        if self.action_mapping not in ACTION_MAPPINGS:
            raise PruneGymError(
                f"action_mapping must be one of {', '.join(ACTION_MAPPINGS)}; got {self.action_mapping!r}"
            )
        checked_aim(self.search_aim, "search_aim")
        if self.agent_reward not in REWARDS:
            raise PruneGymError(f"agent_reward must be one of {', '.join(REWARDS)}; got {self.agent_reward!r}")
        make_executor(self.executor, address=self.ray_address, workers=self.ray_workers, threads=self.ray_threads)
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "budgets", budgets)
        if self.finish_again_before is not None:
            object.__setattr__(self, "finish_again_before", iso_time(self.finish_again_before))

    def target_at(self, budget: float) -> Target:
        """The target at one of the budgets."""
        return replace(self.target, budget=budget)


def iso_time(text: str) -> str:
    """``text`` as the benchmark's records write times (``YYYY-MM-DDTHH:MM:SS``).

    >>> iso_time("2026-12-04T11:00")
    '2026-12-04T11:00:00'
    """
    try:
        return datetime.datetime.fromisoformat(text).strftime("%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise PruneGymError(f"expected a time like 2026-12-04T11:00; got {text!r}") from None


def _plan_for(
    method: str,
    cfg: BenchmarkConfig,
    env: Any,
    seed: int,
    budget: float,
    policy: SavedPolicy | None,
    executor: Executor,
    searching: dict[str, Pending[AgentSearch]],
    evaluations: int,
) -> tuple[PruningPlan, int, tuple[float, float] | None, Finalists | None]:
    """The plan a method proposes, the number of candidates it scored, for an agent or a search its wall and CPU
    seconds summed over the sessions it was resumed in (None: time the call), and with ``cfg.rerank`` a search's
    finalists (None for a method that does not search). A search scores its candidates with ``executor``; an
    agent's search is the one :func:`_start_agent` handed to it (``searching``). Random-search and tpe score
    ``evaluations`` plans."""
    problem = env.budget_problem()
    if method in BASELINES:
        return baseline_plan(method, problem), 0, None, None
    if method in SEARCHES:
        finalists = Finalists(cfg.rerank) if cfg.rerank else None
        plan, spent, seconds = _search_plan(method, cfg, env, problem, seed, budget, executor, evaluations, finalists)
        return plan, spent, seconds, finalists
    if method in PROBED:
        probes = env.sensitivity or probed_sensitivity_of(env, cfg, budget)
        return sensitivity_plan(problem, probes, criterion=env.criterion), probes.evaluations, None, None
    if method in ALGOS:
        found = searching[method].result()
        finalists = Finalists.from_list(cfg.rerank, found.finalists[: cfg.rerank]) if cfg.rerank else None
        return PruningPlan.from_json(found.plan), found.evaluations, (found.seconds, found.cpu_seconds), finalists
    if method == "transfer":
        if policy is None:
            raise PruneGymError("method 'transfer' needs --transfer-from RUN")
        plan, _ = plan_from_policy(policy, env)
        return plan, 1 + env.probe_evaluations, None, None
    raise PruneGymError(f"method must be one of {', '.join(ALL_METHODS)} or transfer; got {method!r}")


class AgentSearch(NamedTuple):
    """What an agent's search found (:func:`search_agent`), summed over the sessions it was resumed in."""

    plan: str
    """The best plan's JSON."""
    evaluations: int
    seconds: float
    cpu_seconds: float
    finalists: list[list[Any]]
    """The search's best distinct plans within the budget, ``[[reward, plan JSON], ...]``, best first."""


def search_agent(
    config: TrainRunConfig, run: str, env_settings: dict[str, Any] | None, threads: int | None
) -> AgentSearch:
    """An agent cell's search, wherever its executor runs it: the run in ``run`` resumed if it has a saved episode
    (also when Ray runs this again after its worker died), else started.

    Args:
        config: The run's configuration.
        run: Its folder, on storage this process sees (every node of a Ray cluster: the benchmark's ``out``).
        env_settings: The environments' settings made by the driver (:func:`agents.train.prepare_env_settings`: the
            latency table and correction, nothing timed here); None: made here.
        threads: Torch threads here (a Ray task's); None: this process's, with a progress bar.
    """
    import torch

    folder = Path(run)
    if not folder.parent.is_dir():
        raise PruneGymError(
            f"expected the benchmark's folder {folder.parent} where the search runs (a Ray cluster's nodes must share "
            "the benchmark's --out); got no such folder"
        )
    if threads is not None:
        torch.set_num_threads(threads)
    search = train_agent(
        config,
        folder,
        resume=(folder / "model.zip").exists(),
        progress=threads is None,
        env_settings=env_settings,
    )
    state = search.state
    plan = search.state_plan().to_json()
    return AgentSearch(plan, state.evaluations, state.seconds, state.cpu_seconds, state.finalists)


def _start_agent(
    method: str,
    cfg: BenchmarkConfig,
    env: LayerPruneEnv,
    seed: int,
    budget: float,
    executor: Executor,
    evaluations: int,
) -> Pending[AgentSearch]:
    """An agent cell's search of ``evaluations`` plans (its probes and prior plan included) handed to ``executor``:
    run when its plan is asked for (local), or started now as a Ray task of ``ray_threads`` CPUs per environment, its
    environments' latency table and correction made here."""
    run = _run_dir(cfg.out, method, budget, seed)
    config = TrainRunConfig(
        target=cfg.target_at(budget),
        algo=method,
        # the probes and the prior plan count: the agent's evaluations in all are the search baselines'
        episodes=max(1, evaluations - _scored_before_episodes(cfg, env)),
        seed=seed,
        val_images=cfg.val_images,
        bn_batches=cfg.bn_batches,
        finetune_steps=cfg.finetune_steps,
        centre_on_uniform=cfg.centre_on_uniform,
        levels=cfg.levels if ALGOS[method].action_mode == "discrete" else DEFAULT_LEVELS,
        # DQN's exploration is epsilon-greedy: the initial action spread is for the continuous agents only
        action_std=cfg.action_std if ALGOS[method].action_mode == "continuous" else None,
        sensitivity=cfg.sensitivity,
        action_mapping=cfg.action_mapping,
        reward=cfg.agent_reward,
        episodes_per_update=cfg.episodes_per_update,
        calibrate_latency=str(_correction_path(cfg, budget)) if cfg.calibrate_latency else False,
        aim=cfg.search_aim,
    )
    run.parent.mkdir(parents=True, exist_ok=True)
    if not executor.remote:
        return executor.submit(search_agent, config, str(run), None, None)
    settings = prepare_env_settings(config, run)
    return executor.submit(
        search_agent, config, str(run), settings, cfg.ray_threads, cpus=cfg.ray_threads * config.n_envs
    )


def _scored_before_episodes(cfg: BenchmarkConfig, env: LayerPruneEnv) -> int:
    """Plans an agent's run scores before its first episode: the probes, and the prior plan of the ``scaled``
    mapping (see ``agents.train``)."""
    probes = env.probe_evaluations if cfg.sensitivity else 0
    return probes + (1 if cfg.action_mapping == "scaled" else 0)


def probed_sensitivity_of(env: LayerPruneEnv, cfg: BenchmarkConfig, budget: float) -> Any:
    """The probes of the benchmark's model at ``budget`` (cached; see :func:`envs.factory.probed_sensitivity`)."""
    from envs.factory import probed_sensitivity

    return probed_sensitivity(
        env.scorer,
        env.budget_model,
        model=cfg.target.model,
        checkpoint=cfg.target.checkpoint_path,
        device=cfg.target.device,
        budget=budget,
        max_sparsity=env.max_sparsity,
        criterion=env.criterion,
    )


def _correction_path(cfg: BenchmarkConfig, budget: float) -> Path:
    """Where a budget's latency correction is saved (see ``BenchmarkConfig.calibrate_latency``)."""
    return cfg.out / "corrections" / f"b{budget:g}.json"


def _search_plan(
    method: str,
    cfg: BenchmarkConfig,
    env: Any,
    problem: BudgetProblem,
    seed: int,
    budget: float,
    executor: Executor,
    evaluations: int,
    finalists: Finalists | None = None,
) -> tuple[PruningPlan, int, tuple[float, float]]:
    """A search baseline's plan, its evaluations, and its wall and CPU seconds, shown with a progress bar. Its
    candidates are scored by ``executor``; the CPU seconds count its workers' (Ray's) as well as this process's. Its
    plans within the budget are offered to ``finalists``.

    Every score is logged under ``searches/`` as it is made, so a search interrupted and run again scores only what
    it had not; the time the scores taken back had cost is added to this run's (not the interrupted run's time
    outside scoring, which is small beside it). greedy-lut does not depend on the seed: its log is per budget.
    """
    from tqdm import tqdm

    from pruning_core.checkpoint import sha256

    name = _search_name(method, budget, seed)
    inputs = {**_plan_inputs(cfg, method, env), "data": cfg.target.data}
    if cfg.target.checkpoint is not None:
        inputs["checkpoint_sha256"] = sha256(Path(cfg.target.checkpoint))
    start = (time.perf_counter(), time.process_time(), executor.remote_cpu_seconds)
    total = evaluations if method in ("random-search", "tpe") else None
    with (
        env.scorer.logging_to(cfg.out / "searches" / f"{name}.jsonl", inputs) as log,
        tqdm(total=total, desc=method, unit="evaluation") as bar,
    ):

        def on_step(evaluations: int, top1: float) -> None:
            bar.update(evaluations - bar.n)
            bar.set_postfix(val_top1=f"{top1:.4f}")

        if method in ("random-search", "tpe"):
            search = random_search if method == "random-search" else tpe_search
            result = search(
                problem,
                env.scorer,
                evaluations=evaluations,
                seed=seed,
                on_step=on_step,
                executor=executor,
                finalists=finalists,
            )
        else:
            result = greedy_search(problem, env.scorer, on_step=on_step, executor=executor, finalists=finalists)
            if env.sensitivity is not None:  # its first round reused the probes: they count
                result = replace(result, evaluations=result.evaluations + env.sensitivity.evaluations)
    seconds = time.perf_counter() - start[0] + log.carried_seconds
    remote = executor.remote_cpu_seconds - start[2]
    cpu_seconds = time.process_time() - start[1] + remote + log.carried_cpu_seconds
    return result.plan, result.evaluations, (seconds, cpu_seconds)


def _search_name(method: str, budget: float, seed: int) -> str:
    """A search's name in ``searches/``: per budget for greedy-lut (deterministic), per budget and seed otherwise."""
    return f"{method}_b{budget:g}" + ("" if method in DETERMINISTIC else f"_s{seed}")


def _cell_name(method: str, budget: float, seed: int) -> str:
    """A cell's name: its agent's run folder, its re-rank's log after the budget check."""
    return f"{method}_b{budget:g}_s{seed}"


def _run_dir(out: Path, method: str, budget: float, seed: int) -> Path:
    """An agent cell's run folder (its model, search state and learning curve) under ``out/runs``."""
    return out / "runs" / _cell_name(method, budget, seed)


def _plan_path(out: Path, method: str, budget: float) -> Path:
    """Where a deterministic method's plan for ``budget`` is saved (:class:`_PlanCache`)."""
    return out / "plans" / f"{method}_b{budget:g}.json"


def _rerank_plan(
    method: str,
    cfg: BenchmarkConfig,
    env: Any,
    finalists: Finalists,
    seed: int,
    budget: float,
    executor: Executor,
    *,
    name: str | None = None,
) -> tuple[Reranked, float]:
    """A search's finalists scored again with ``cfg.rerank_steps`` SGD steps (:func:`~pruning_core.finalists.rerank`),
    logged under ``searches/`` as they are made (resumable; ``name``: the log's, default the search's), and the CPU
    seconds it took (Ray's workers' included). The result's seconds include those of re-scores taken back from the
    log."""
    from pruning_core.checkpoint import sha256

    inputs = {**_plan_inputs(cfg, method, env), "data": cfg.target.data}
    if cfg.target.checkpoint is not None:
        inputs["checkpoint_sha256"] = sha256(Path(cfg.target.checkpoint))
    scorer = rerank_scorer(env.scorer, cfg.rerank_steps)
    start = (time.process_time(), executor.remote_cpu_seconds)
    path = cfg.out / "searches" / f"{name or _search_name(method, budget, seed)}_rerank.jsonl"
    size, steps = len(finalists.entries), cfg.rerank_steps
    print(f"   {method}: its {size} best plans within the budget scored again with {steps} steps", flush=True)
    with scorer.logging_to(path, inputs) as log:
        result = rerank(finalists, scorer, executor=executor)
    cpu = time.process_time() - start[0] + executor.remote_cpu_seconds - start[1] + log.carried_cpu_seconds
    return replace(result, seconds=result.seconds + log.carried_seconds), cpu


def _plan_inputs(cfg: BenchmarkConfig, method: str, env: Any) -> dict[str, Any]:
    """What a deterministic method's plan depends on besides the budget: a saved plan is reused only if they match.

    That is the model, the device and its cost model (a rebuilt lookup table prices widths anew), and the scoring
    recipe (greedy-lut ranks groups by score).
    """
    from pruning_core.checkpoint import sha256

    cost = env.budget_model
    meta = getattr(cost, "meta", {})
    inputs: dict[str, Any] = {
        "model": cfg.target.model,
        "checkpoint": cfg.target.checkpoint,
        "device": cfg.target.device,
        "cost_model": {
            "type": type(cost).__name__,
            "built": meta.get("built"),
            "granule": getattr(cost, "granule", 1),
            "block": getattr(cost, "block", 1),
        },
        "scoring": asdict(env.scorer.config),
    }
    if "correction" in meta:  # a table corrected by timings: plans made with another correction are not reused
        inputs["cost_model"]["correction"] = meta["correction"]["points"]
    if env.sensitivity is not None and method == "greedy-lut":
        inputs["sensitivity"] = True
    if env.aim != 1.0:  # plans aimed below the budget
        inputs["aim"] = env.aim
    if method == "transfer" and cfg.transfer_from is not None:
        inputs["policy"] = sha256(Path(cfg.transfer_from) / "policy.pt")
    return inputs


def _cache_inputs(cfg: BenchmarkConfig, method: str, env: Any) -> dict[str, Any]:
    """What a deterministic method's saved plan depends on: :func:`_plan_inputs`, and a search's re-rank."""
    inputs = _plan_inputs(cfg, method, env)
    if cfg.rerank and method in SEARCHES:
        inputs["rerank"] = {"finalists": cfg.rerank, "steps": cfg.rerank_steps}
        if _reranks_after_check(env):  # the finalists are kept, re-ranked per seed once checked
            inputs["rerank"]["after_check"] = True
    return inputs


def _reranks_after_check(env: Any) -> bool:
    """Whether a search's finalists are re-ranked after the budget check (their checked plans re-scored) rather
    than before it: on a device this host measures, under a latency budget (see :func:`~agents.apply.needs_check`)."""
    return env.measured is not None and env.budget_model.is_latency


@dataclass(frozen=True)
class _PlanCache:
    """A deterministic method's plan for one budget, saved with what it depends on (see `_plan_inputs`)."""

    path: Path
    inputs: dict[str, Any]

    def load(self) -> _Planned | None:
        """The saved plan, its evaluations, search wall and CPU seconds (None in plans saved before CPU time was
        kept), its re-rank (None: none) and its finalists (None: none kept for a re-rank after the check); None when
        absent or made from other inputs."""
        if not self.path.exists():
            return None
        saved = json.loads(self.path.read_text())
        if saved.get("inputs") != self.inputs:
            return None
        finalists = saved.get("finalists")
        return _Planned(
            PruningPlan.from_json(saved["plan"]),
            saved["evaluations"],
            saved["search_seconds"],
            saved.get("search_cpu_seconds"),
            True,
            saved.get("rerank"),
            Finalists.from_list(len(finalists), finalists) if finalists else None,
        )

    def save(self, planned: _Planned) -> None:
        """Write the plan atomically."""
        saved: dict[str, Any] = {
            "plan": planned.plan.to_json(),
            "evaluations": planned.evaluations,
            "search_seconds": planned.seconds,
            "search_cpu_seconds": planned.cpu_seconds,
            "inputs": self.inputs,
        }
        if planned.rerank is not None:
            saved["rerank"] = planned.rerank
        if planned.finalists is not None:
            saved["finalists"] = planned.finalists.to_list()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, lambda tmp: tmp.write_text(json.dumps(saved)))


class _Planned(NamedTuple):
    """A cell's plan before its budget check: evaluations, search wall and CPU seconds, and whether it was read from
    ``plans/`` (a deterministic method's search, made once per budget)."""

    plan: PruningPlan
    evaluations: int
    seconds: float
    cpu_seconds: float | None
    cached: bool
    rerank: dict[str, Any] | None
    finalists: Finalists | None = None
    """A search's finalists kept for a re-rank after the budget check (:func:`_rerank_checked`); None once
    re-ranked, or with no re-rank."""


@dataclass
class _SharedChecks:
    """The budget checks of one budget and seed's plans, made together (:func:`~agents.apply.meet_measured_budgets`)
    and saved, so that a benchmark stopped while fine-tuning them finishes the rest with the same checks rather than
    checking them again at another moment."""

    path: Path

    def run(
        self, cells: dict[str, tuple[LayerPruneEnv, PruningPlan]], *, finished: dict[str, str]
    ) -> dict[str, tuple[PruningPlan, dict[str, Any]]]:
        """Each cell's kept plan and check: the saved one where it checked the same searched plan after the cell's
        record (if any; ``finished``: when each cell with a record to replace was last finished, "" when unknown)
        was finished, the others checked now, together."""
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        out: dict[str, tuple[PruningPlan, dict[str, Any]]] = {}
        for method, (_, plan) in cells.items():
            kept = saved.get(method)
            if kept is None or kept["searched"] != plan.to_json():
                continue
            if method not in finished or kept.get("checked", "") > finished[method]:  # not a check it replaces
                out[method] = (PruningPlan.from_json(kept["kept"]), kept["check"])
        todo = {method: cell for method, cell in cells.items() if method not in out}
        if todo:
            print(f"== budget check of {len(todo)} plans together: {', '.join(todo)}", flush=True)
            checked = time.strftime("%Y-%m-%dT%H:%M:%S")
            for method, (kept_plan, check) in meet_measured_budgets(todo).items():
                out[method] = (kept_plan, check)
                searched = todo[method][1].to_json()
                saved[method] = {"searched": searched, "kept": kept_plan.to_json(), "check": check, "checked": checked}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, lambda tmp: tmp.write_text(json.dumps(saved, indent=1)))
        return out


@dataclass(frozen=True)
class _FinetunedModels:
    """One budget and seed's fine-tuned models, each kept (a pruned-model folder per method) from when it is made
    until its cell's record is written: a benchmark stopped in between measures it without fine-tuning it again."""

    folder: Path
    base_model: str
    checkpoint: Path
    """The dense model's checkpoint."""
    classes: list[str]
    recipe: TrainConfig
    """The fine-tune of every model kept here."""

    def _made_by(self, job: FinetuneJob) -> dict[str, Any]:
        """What a kept model must have been made from to stand for ``job``'s (its plan is compared apart)."""
        return {
            "method": job.name,
            "finetune": json.loads(json.dumps(asdict(self.recipe))),
            "bn_batches": job.bn_batches,
            "checkpoint": str(self.checkpoint),
        }

    def save(self, job: FinetuneJob, made: Finetuned) -> None:
        """Keep a job's fine-tuned model, with what made it and what it took."""
        extra = {**self._made_by(job), "seconds": made.seconds, "cpu_seconds": made.cpu_seconds}
        save_pruned(
            self.folder / job.name, made.pruned, base_model=self.base_model, classes=self.classes, extra_meta=extra
        )

    def load(self, job: FinetuneJob) -> Finetuned | None:
        """The kept model of ``job``'s method, if it was made from the same plan, fine-tune and dense model."""
        folder = self.folder / job.name
        if not (folder / "meta.json").is_file():
            return None
        try:
            loaded = load_pruned(folder, run_code=self.base_model)
        except CheckpointError:  # cut short while being written: fine-tuned again
            return None
        meta = loaded.meta
        if loaded.plan.to_json() != job.plan.to_json() or any(meta.get(k) != v for k, v in self._made_by(job).items()):
            return None
        return Finetuned(loaded.as_pruned(), float(meta["seconds"]), float(meta["cpu_seconds"]))

    def remove(self, method: str) -> None:
        """Drop a method's kept model once its record is written."""
        shutil.rmtree(self.folder / method, ignore_errors=True)


def load_records(path: Path) -> list[dict[str, Any]]:
    """A benchmark's records in :class:`~agents.record.MethodRecord`'s layout (``results.json``'s), older layouts
    read by :meth:`~agents.record.MethodRecord.from_dict`. Records written before the final measurement was kept
    apart from the verdict are brought up to date: their ``latency_ratio_measured`` was the final measurement alone,
    now also ``latency_ratio_final``, and the verdict is recomputed by :func:`~agents.apply.measured_verdict` (from
    the final measurement alone: they have no confirming one).

    Raises:
        PruneGymError: A record is not one a method's finish wrote (see ``MethodRecord.from_dict``).
    """
    records: list[dict[str, Any]] = json.loads(path.read_text())
    for record in records:
        if "latency_ratio_measured" in record and "latency_ratio_final" not in record:
            record["latency_ratio_final"] = record["latency_ratio_measured"]
            record.update(measured_verdict(record))
    return [MethodRecord.from_dict(record).to_dict() for record in records]


def record_plan(record: Mapping[str, Any], granule: int) -> PruningPlan:
    """The plan a benchmark record fine-tuned: its per-group ``sparsity`` (after the measured check), its channels
    ranked by the method's criterion (a heuristic baseline's; ``l1``, the environment's default, for the searches).

    Raises:
        PruneGymError: The record keeps no per-group sparsity (written before records kept it).
    """
    if not record.get("sparsity"):
        raise PruneGymError(f"expected a record with a per-group sparsity; got one without ({record.get('method')})")
    criterion = BASELINE_CRITERIA.get(record["method"], "l1")
    return PruningPlan(sparsity=record["sparsity"], criterion=criterion, round_to=granule)


def restore_checked_sparsity(records: list[dict[str, Any]], env_of: Callable[[str, float], LayerPruneEnv]) -> bool:
    """Give records written before reports kept the plan that was fine-tuned its per-group sparsity.

    Their ``sparsity`` is the searched plan's, also where the measured budget check then moved the plan; that plan
    is rebuilt from the check's saved readings (:func:`~agents.apply.replay_check`, with the
    method's environment from ``env_of(method, budget)``) and the searched one kept as ``sparsity_searched``.
    Returns whether any record changed.
    """
    changed = False
    for record in records:
        if "sparsity" not in record or "sparsity_searched" in record:
            continue
        record["sparsity_searched"] = record["sparsity"]
        if record.get("check_steps", 0) > 0:
            env = env_of(record["method"], record["budget"])
            searched = PruningPlan(sparsity=record["sparsity_searched"], round_to=env.granule)
            try:
                record["sparsity"] = dict(replay_check(env, searched, record).sparsity)
            except PruneGymError as exc:  # left as it was, tried again next time
                print(f"   {record['method']} at {record['budget']:g}, seed {record['seed']}: {exc}")
                del record["sparsity_searched"]
                continue
        changed = True
    return changed


def _write_records(path: Path, records: list[dict[str, Any]]) -> None:
    text = json.dumps(records, indent=1)
    atomic_write_bytes(path, lambda tmp: tmp.write_text(text))


def is_current(record: dict[str, Any]) -> bool:
    """Whether a record was finished under the current protocol, or is finished again when the benchmark resumes.

    Measured latency, the budget check's included, is timed in a fresh worker process
    (:func:`~hardware_models.measure.interleaved_rounds`); records timed in the benchmark's own process, as they were
    before that, lack ``latency_timing``. Its search is reused (plans, score logs and agent runs are saved), so
    finishing it again costs the check, the fine-tuning and the measurements.

    >>> is_current({"latency_ratio_final": 0.69}), is_current({"latency_ratio_final": 0.69, "latency_timing": "worker"})
    (False, True)
    """
    return "latency_ratio_final" not in record or "latency_timing" in record


def rewrite_tables(out: Path) -> list[dict[str, Any]]:
    """Bring a benchmark folder's results.json up to date (:func:`load_records`) and write its tables and plots
    again, running nothing."""
    path = out / "results.json"
    if not path.is_file():
        raise PruneGymError(f"expected a benchmark folder holding results.json; got {out}")
    records = load_records(path)
    _write_records(path, records)
    write_tables(records, out)
    return records


def cell_order(methods: Sequence[str], *, transfer: bool) -> list[str]:
    """The order of a budget's cells: the methods as given, with the transferred policy (it searches nothing, so its
    cell costs a fine-tune only) right after the agents, before the searches that cost hours.

    Example:
        >>> cell_order(["dqn", "ppo", "uniform-l1", "random-search"], transfer=True)
        ['dqn', 'ppo', 'transfer', 'uniform-l1', 'random-search']
    """
    order = list(methods)
    if transfer:
        after_agents = max((i + 1 for i, method in enumerate(order) if method in ALGOS), default=0)
        order.insert(after_agents, "transfer")
    return order


def _finish_again(cfg: BenchmarkConfig, methods: Sequence[str], record: dict[str, Any]) -> bool:
    """Whether ``cfg.finish_again_before`` selects this record's cell (of ``methods``) to be finished again."""
    return (
        cfg.finish_again_before is not None
        and record["method"] in methods
        and record["budget"] in cfg.budgets
        and record["seed"] < cfg.seeds
        and record.get("finished", "") < cfg.finish_again_before
    )


def run_benchmark(cfg: BenchmarkConfig) -> list[dict[str, Any]]:
    """Run every missing cell, then write the tables and plots. The searches score their candidates with
    ``cfg.executor`` (Ray, if asked for, starts when a search first scores and stops at the end).

    Returns:
        The records of ``results.json``: each a :class:`~agents.record.MethodRecord` as its ``to_dict`` writes it.
    """
    executor = make_executor(cfg.executor, address=cfg.ray_address, workers=cfg.ray_workers, threads=cfg.ray_threads)
    try:
        return _run_cells(cfg, executor)
    finally:
        executor.close()


def _run_cells(cfg: BenchmarkConfig, executor: Executor) -> list[dict[str, Any]]:
    """:func:`run_benchmark`'s work, the searches scoring with ``executor``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    results_path = cfg.out / "results.json"
    records = load_records(results_path) if results_path.exists() else []
    methods = cell_order(cfg.methods, transfer=cfg.transfer_from is not None)
    done = {
        (r["method"], r["budget"], r["seed"]) for r in records if is_current(r) and not _finish_again(cfg, methods, r)
    }
    superseded_path = cfg.out / "superseded.json"
    dataset = cfg.target.load_dataset()

    def env_for(budget: float, **settings: Any) -> Any:
        return make_env(
            cfg.target_at(budget),
            val_images=cfg.val_images,
            bn_batches=cfg.bn_batches,
            finetune_steps=cfg.finetune_steps,
            dataset=dataset,
            progress=True,
            calibrate_latency=_correction_path(cfg, budget) if cfg.calibrate_latency else False,
            aim=cfg.search_aim,
            **{"sensitivity": cfg.sensitivity, **settings},
        )

    policy = load_policy(cfg.transfer_from) if cfg.transfer_from else None
    last_env: Any = None  # any env built, for the dense model's figures
    # Seed by seed, so that a benchmark stopped part-way has every method at every budget for the seeds it finished.
    envs: dict[tuple[float, str], Any] = {}  # per budget and action mapping, built when a cell needs it, kept

    def env_of(method: str, budget: float) -> Any:
        key = (budget, "transfer" if method == "transfer" else "default")
        if key not in envs:
            settings = policy.action_settings() if key[1] == "transfer" and policy else {}
            envs[key] = env_for(budget, **settings)
        return envs[key]

    for seed in range(cfg.seeds):
        for budget in cfg.budgets:
            # every method's plan first, then their budget checks together (one yardstick), then each fine-tuned
            planned: dict[str, _Planned] = {}
            recipe = finetune_recipe(cfg.finetune_epochs, seed=seed)
            kept = _FinetunedModels(
                cfg.out / "finetuned" / f"b{budget:g}_s{seed}",
                cfg.target.model,
                cfg.target.checkpoint_path,
                list(dataset.classes),
                recipe,
            )
            todo_methods = [method for method in methods if (method, budget, seed) not in done]
            for method in set(methods) - set(todo_methods):  # kept past its record by a stop: not to be reused later
                kept.remove(method)
            allowed = cfg.episodes
            if cfg.match_greedy:  # greedy-lut's plan first (made once per budget): the others get its evaluations
                greedy = planned.get("greedy-lut") or _plan_cell(
                    "greedy-lut", cfg, env_of("greedy-lut", budget), seed, budget, policy, executor, {}
                )
                if greedy is None:
                    raise PruneGymError(f"greedy-lut cannot reach budget {budget:g}: nothing to match")
                if "greedy-lut" in todo_methods:
                    planned["greedy-lut"] = greedy
                total = greedy.evaluations + (len(greedy.finalists.entries) if greedy.finalists is not None else 0)
                allowed = total - cfg.rerank  # each search's re-rank of its finalists is paid from the same count
                executor.release_workers()  # its idle scoring workers would hold the CPUs the agents' tasks wait for
                print(
                    f"== budget {budget:g}: every search gets greedy-lut's {total} evaluations ({allowed} to search, "
                    f"{cfg.rerank} to re-score its finalists)",
                    flush=True,
                )
            # the agents' searches: on Ray, started now, side by side with each other and the searches below
            searching = {
                m: _start_agent(m, cfg, env_of(m, budget), seed, budget, executor, allowed)
                for m in todo_methods
                if m in ALGOS
            }
            if searching and executor.remote:
                print(f"== searching with {', '.join(searching)} on Ray workers", flush=True)
            for method in todo_methods:
                last_env = env_of(method, budget)
                if method not in planned:
                    made = _plan_cell(method, cfg, last_env, seed, budget, policy, executor, searching, allowed)
                    if made is not None:
                        planned[method] = made
            planned = {m: planned[m] for m in methods if m in planned}  # the methods' order, greedy-lut first or not
            stale_of = {
                method: [r for r in records if (r["method"], r["budget"], r["seed"]) == (method, budget, seed)]
                for method in planned
            }
            executor.release_workers()  # nothing on Ray while the checks time the plans
            finished = {m: max(r.get("finished", "") for r in stale) for m, stale in stale_of.items() if stale}
            to_check: dict[str, tuple[Any, PruningPlan]] = {}
            for m, p in planned.items():  # a search's finalists each, where it re-ranks them once checked
                named = (
                    {_finalist_key(m, i): plan for i, plan in enumerate(p.finalists.plans())}
                    if p.finalists is not None
                    else {m: p.plan}
                )
                to_check.update({key: (env_of(m, budget), plan) for key, plan in named.items()})
                finished.update({key: finished[m] for key in named if m in finished})
            checks = _SharedChecks(cfg.out / "checks" / f"b{budget:g}_s{seed}.json").run(
                {key: cell for key, cell in to_check.items() if needs_check(*cell)}, finished=finished
            )
            if any(p.finalists is not None for p in planned.values()):
                planned, checks = _rerank_checked(cfg, planned, checks, env_of, seed, budget, executor)
                executor.release_workers()  # the re-scores' workers would hold the CPUs the fine-tunes wait for
            # the fine-tunes: one after the other here, or at once on Ray workers, each kept as it is made (a
            # benchmark stopped before measuring them all resumes without fine-tuning them again); then measured
            # here one at a time, nothing else running
            jobs = [
                FinetuneJob(method, env_of(method, budget).engine, checks.get(method, (p.plan,))[0], dataset, recipe)
                for method, p in planned.items()
            ]
            reused = {job.name: kept.load(job) for job in jobs}
            todo = [job for job in jobs if reused[job.name] is None]
            if todo and executor.remote:
                print(f"== fine-tuning {len(todo)} plans on Ray workers: {', '.join(job.name for job in todo)}")
            job_of = {job.name: job for job in jobs}
            tuned = executor.finetune(todo, finished=lambda name, one: kept.save(job_of[name], one))  # noqa: B023
            for method, p in planned.items():
                print(f"== {method} at budget {budget:g}, seed {seed}: finish", flush=True)
                finetuned = reused[method] or next(tuned)  # made here (local) or handed back (Ray)
                finish_start = (time.perf_counter(), time.process_time())
                result = finish_plan(
                    method,
                    env_of(method, budget),
                    p.plan,
                    dataset,
                    finetune=recipe,
                    out=None,
                    base_model=cfg.target.model,
                    search_seconds=p.seconds,
                    evaluations=p.evaluations,
                    checked=checks.get(method),
                    finetuned=finetuned.pruned,
                )
                stale = stale_of[method]
                record = replace(
                    result.record,
                    seed=seed,
                    # prune, BN, fine-tune (where it ran, in whichever session), measure
                    finish_seconds=finetuned.seconds + time.perf_counter() - finish_start[0],
                    finish_cpu_seconds=finetuned.cpu_seconds + time.process_time() - finish_start[1],
                    search_cpu_seconds=p.cpu_seconds,  # wall time counts pauses; CPU time does not
                    search_reused=p.cached or bool(stale),  # a stale record's search is complete
                    finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    sparsity_searched=dict(p.plan.sparsity),  # record.sparsity: the plan after the check
                    rerank=p.rerank,
                ).to_dict()
                if stale:  # finished again under the current protocol: the old record is kept apart, not lost
                    old = json.loads(superseded_path.read_text()) if superseded_path.exists() else []
                    _write_records(superseded_path, old + stale)
                    records = [r for r in records if r not in stale]
                records.append(record)
                _write_records(results_path, records)
                kept.remove(method)
    if restore_checked_sparsity(records, env_of):
        _write_records(results_path, records)
    dense_path = cfg.out / "dense.json"
    if not dense_path.exists():  # the dense model's test accuracy, the plot's reference point
        from pruning_core.training import evaluate

        engine = (last_env if last_env is not None else env_for(cfg.budgets[0])).engine
        dense = {"test_top1": evaluate(engine.model, dataset, "test").top1, "macs": engine.base_cost.macs}
        atomic_write_bytes(dense_path, lambda tmp: tmp.write_text(json.dumps(dense)))
    write_tables(records, cfg.out)
    return records


def _plan_cell(
    method: str,
    cfg: BenchmarkConfig,
    env: Any,
    seed: int,
    budget: float,
    policy: SavedPolicy | None,
    executor: Executor,
    searching: dict[str, Pending[AgentSearch]],
    evaluations: int | None = None,
) -> _Planned | None:
    """A cell's plan before its budget check: read from ``plans/`` for a deterministic method searched before, else
    made (:func:`_plan_for`) and, with ``cfg.rerank``, re-ranked; None when the method cannot reach the budget.
    Random-search and tpe score ``evaluations`` plans (None: ``cfg.episodes``)."""
    print(f"== {method} at budget {budget:g}, seed {seed}: plan", flush=True)
    cache = (
        _PlanCache(_plan_path(cfg.out, method, budget), _cache_inputs(cfg, method, env))
        if method in DETERMINISTIC
        else None
    )
    cached = cache.load() if cache is not None else None
    if cached is not None:
        return cached
    start = (time.perf_counter(), time.process_time())
    try:
        plan, spent, summed, finalists = _plan_for(
            method, cfg, env, seed, budget, policy, executor, searching, evaluations or cfg.episodes
        )
    except BudgetInfeasibleError as exc:
        print(f"   {method} cannot reach budget {budget:g}: {exc}")
        return None
    seconds, cpu_seconds = summed or (time.perf_counter() - start[0], time.process_time() - start[1])
    reranked, kept = None, None
    if finalists is not None and needs_check(env, plan):  # a measured device (see _reranks_after_check)
        kept = finalists  # re-ranked once checked, beside the other methods' finalists
    elif finalists is not None:
        found, rerank_cpu = _rerank_plan(method, cfg, env, finalists, seed, budget, executor)
        plan, spent, seconds = found.plan, spent + found.evaluations, seconds + found.seconds
        cpu_seconds += rerank_cpu
        reranked = found.to_dict()
    planned = _Planned(plan, spent, seconds, cpu_seconds, False, reranked, kept)
    if cache is not None:
        cache.save(planned)
    return planned


def _finalist_key(method: str, place: int) -> str:
    """A finalist's name among a budget and seed's budget checks (``checks/``)."""
    return f"{method}#{place}"


def _rerank_checked(
    cfg: BenchmarkConfig,
    planned: dict[str, _Planned],
    checks: dict[str, tuple[PruningPlan, dict[str, Any]]],
    env_of: Callable[[str, float], Any],
    seed: int,
    budget: float,
    executor: Executor,
) -> tuple[dict[str, _Planned], dict[str, tuple[PruningPlan, dict[str, Any]]]]:
    """The re-rank after the budget check: each search with finalists kept (:attr:`_Planned.finalists`) has its
    finalists' checked plans scored again (:func:`_rerank_plan`, logged per seed) and keeps the finalist whose checked
    plan scores best, so the re-rank scores the plans that will be fine-tuned. Returns the plans with their re-ranks
    and evaluations, and each method's check (the kept finalist's)."""
    planned, checks = dict(planned), dict(checks)
    for method, p in planned.items():
        if p.finalists is None:
            continue
        searched = p.finalists.plans()
        keys = [_finalist_key(method, i) for i in range(len(searched))]
        scores = [score for score, _ in p.finalists.entries]
        checked = Finalists.from_list(
            len(searched), [(s, checks[key][0].to_json()) for s, key in zip(scores, keys, strict=True)]
        )
        found, cpu = _rerank_plan(
            method, cfg, env_of(method, budget), checked, seed, budget, executor, name=_cell_name(method, budget, seed)
        )
        planned[method] = p._replace(
            plan=searched[found.picked],
            evaluations=p.evaluations + found.evaluations,
            seconds=p.seconds + found.seconds,
            cpu_seconds=(p.cpu_seconds or 0.0) + cpu,
            rerank={**found.to_dict(), "after_check": True},
            finalists=None,
        )
        checks[method] = checks[keys[found.picked]]
        for key in keys:
            checks.pop(key)
    return planned, checks


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread (population std) over seeds of each method x budget."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        cells[(r["method"], r["budget"])].append(r)
    rows = []
    for (method, budget), rs in sorted(cells.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        row: dict[str, Any] = {"method": method, "budget": budget, "seeds": len(rs)}
        for key in (
            "latency_ms_measured",
            "latency_ratio_measured",
            "latency_ms_predicted",
            "macs",
            "val_top1",
            "test_top1_bn",
            "test_top1_finetuned",
            "search_seconds",
            "search_cpu_seconds",
            "evaluations",
            "budget_met_measured",
        ):
            values = [float(r[key]) for r in rs if key in r]
            if values:
                row[key] = statistics.fmean(values)
                row[key + "_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def load_passes(path: Path) -> list[dict[str, Any]]:
    """The passes of ``scripts.remeasure_benchmark`` saved in ``remeasured.json``, oldest first (none when there is
    no file yet). A file written before passes were kept holds one pass at its top level."""
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    return list(saved["passes"]) if "passes" in saved else [saved]


def _remeasured(out: Path, records: list[dict[str, Any]]) -> dict[tuple[str, float, int], list[float]]:
    """The one-pass latency ratios of ``scripts.remeasure_benchmark`` (``remeasured.json``), by method, budget, seed:
    one per pass that timed the cell's current record (a cell finished again since a pass is left out of it)."""
    finished = {(r["method"], r["budget"], r["seed"]): r.get("finished") for r in records}
    ratios: dict[tuple[str, float, int], list[float]] = defaultdict(list)
    for one in load_passes(out / "remeasured.json"):
        for c in one["cells"]:
            key = (c["method"], c["budget"], c["seed"])
            if finished.get(key, "") == c.get("finished"):
                ratios[key].append(c["ratio_now"])
    return dict(ratios)


def now_written(out: Path) -> str:
    """The passes of ``remeasured.json``: how many, their rounds, and when each was written."""
    passes = load_passes(out / "remeasured.json")
    return f"{len(passes)} pass{'es' if len(passes) > 1 else ''}: " + ", ".join(
        f"{p['written']} ({p['rounds']} rounds)" for p in passes
    )


def wall_time_lines(records: list[dict[str, Any]]) -> list[str]:
    """Markdown: where the benchmark's time went, per method. A deterministic method's search (one per budget,
    shared by its seeds, see ``plans/``) is counted once per budget. Wall time includes any pause of the process;
    CPU time (all threads of the process) does not, and is "-" where a record predates it; nor does it count the
    timing worker's, which measures latency in a process of its own.

    >>> rows = [{"method": "uniform-l1", "budget": 0.5, "search_seconds": 60, "finish_seconds": 30},
    ...         {"method": "uniform-l1", "budget": 0.5, "search_seconds": 60, "finish_seconds": 30}]
    >>> wall_time_lines(rows)[-1]
    '| total | 1.0 | 1.0 | 2.0 | - |'
    """
    per_method: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    cpu_known: dict[str, bool] = defaultdict(lambda: True)
    searched: set[tuple[str, float]] = set()
    for r in records:
        method, key = r["method"], (r["method"], r["budget"])
        if method not in DETERMINISTIC or key not in searched:
            per_method[method][0] += float(r["search_seconds"])
            per_method[method][2] += float(r.get("search_cpu_seconds") or 0.0)
            cpu_known[method] &= r.get("search_cpu_seconds") is not None
            searched.add(key)
        per_method[method][1] += float(r.get("finish_seconds", 0.0))
        per_method[method][2] += float(r.get("finish_cpu_seconds") or 0.0)
        cpu_known[method] &= r.get("finish_cpu_seconds") is not None

    def row(name: str, search: float, finish: float, cpu: float, known: bool) -> str:
        shown = f"{cpu / 60:.1f}" if known else "-"
        return f"| {name} | {search / 60:.1f} | {finish / 60:.1f} | {(search + finish) / 60:.1f} | {shown} |"

    lines = [
        "Time (minutes): wall time of the search and of pruning + BN + fine-tuning + measuring (finish), and the",
        "CPU time of both (all threads; pauses of the process not counted, nor the timing worker that times latency)",
        "",
        "| method | search | finish | total | CPU |",
        "|---|---|---|---|---|",
    ]
    for method, (search, finish, cpu) in sorted(per_method.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        lines.append(row(method, search, finish, cpu, cpu_known[method]))
    totals = [sum(v[i] for v in per_method.values()) for i in range(3)]
    lines.append(row("total", *totals, all(cpu_known.values())))
    return lines


def check_lines(records: list[dict[str, Any]]) -> list[str]:
    """A table of how far the measured budget check moved each cell's plan (``thinned_by`` per seed: the fraction of
    the way to the thinnest plan, negative where it widened); none when no record was checked."""
    checked = [r for r in records if r.get("thinned_by") is not None]
    if not checked:
        return []
    cells: dict[tuple[float, str], list[str]] = defaultdict(list)
    for r in sorted(checked, key=lambda r: (-r["budget"], r["method"], r["seed"])):
        cells[(r["budget"], r["method"])].append(f"{r['thinned_by']:+.3f}")
    return [
        "",
        "Measured budget check: how far it moved each plan before fine-tuning (`thinned_by`, per seed: the fraction "
        "of the way to the thinnest plan; negative: widened).",
        "",
        "| budget | method | thinned by, per seed |",
        "|---|---|---|",
        *(f"| {budget:g} | {method} | {', '.join(moved)} |" for (budget, method), moved in cells.items()),
    ]


def rerank_lines(records: list[dict[str, Any]]) -> list[str]:
    """A table of the re-ranks (``BenchmarkConfig.rerank``): per cell, which finalist each seed kept (0: the search's
    own best), its search score and re-score; none when no record was re-ranked."""
    reranked = [r for r in records if r.get("rerank")]
    if not reranked:
        return []
    cells: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(reranked, key=lambda r: (-r["budget"], r["method"], r["seed"])):
        cells[(r["budget"], r["method"])].append(r)
    lines = [
        "",
        "Re-ranked: each search's best plans within the budget scored again with a short fine-tune, the best kept "
        "(counted in evals and search s). Kept: the finalist's place by the search's score (0: the search's own "
        "best), with its search score -> re-score, per seed. An agent's search score is its episode's reward (with "
        "`--agent-reward residual`, val minus the prior plan's val), the others' the val they searched by."
        + (
            " On this measured device the finalists were budget-checked first, together, and their checked plans "
            "re-scored."
            if any(r["rerank"].get("after_check") for r in reranked)
            else ""
        ),
        "",
        "| budget | method | finalists | kept per seed | re-score evals | re-score s |",
        "|---|---|---|---|---|---|",
    ]
    for (budget, method), rs in cells.items():
        kept = ", ".join(
            f"{x['picked']} ({x['search_scores'][x['picked']]:.3f} -> {x['scores'][x['picked']]:.3f})"
            for x in (r["rerank"] for r in rs)
        )
        evals = statistics.fmean(r["rerank"]["evaluations"] for r in rs)
        seconds = statistics.fmean(r["rerank"]["seconds"] for r in rs)
        lines.append(
            f"| {budget:g} | {method} | {len(rs[0]['rerank']['scores'])} | {kept} | {evals:.0f} | {seconds:.0f} |"
        )
    return lines


def write_tables(records: list[dict[str, Any]], out: Path) -> None:
    """results.csv, results.md and the two plots, of the records finished under the current protocol
    (:func:`is_current`); results.md names the others, which a resumed benchmark finishes again."""
    stale = [r for r in records if not is_current(r)]
    records = [r for r in records if is_current(r)]
    left_out = (
        [
            "Left out until finished again (timed in the benchmark's own process, before the timing worker): "
            + ", ".join(f"{r['method']} at {r['budget']:g} seed {r['seed']}" for r in stale)
            + "."
        ]
        if stale
        else []
    )
    if not records:
        if left_out:
            (out / "results.md").write_text("\n".join(left_out) + "\n")
        return
    keys = [
        "method",
        "budget",
        "seed",
        "latency_ms_measured",
        "dense_latency_ms_measured",
        "latency_ratio_measured",
        "latency_ratio_confirmed",
        "latency_ratio_final",
        "budget_met_measured",
        "bn_recalibration",
        "latency_ms_predicted",
        "macs",
        "params",
        "val_top1",
        "test_top1_pruned",
        "test_top1_bn",
        "test_top1_finetuned",
        "search_seconds",
        "evaluations",
        "finish_seconds",
    ]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    rows = summarise(records)
    now = _remeasured(out, records)
    per_seed: dict[tuple[str, float], list[str]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["seed"]):
        per_seed[(r["method"], r["budget"])].append(f"{r['test_top1_finetuned']:.4f}")
    lines = [
        "| budget | method | seeds | measured / dense | latency ms (measured) | MACs | val (BN) | test (BN) "
        "| test (FT) | test (FT) per seed | search s | evals | within budget (measured) |"
        + (" one pass / dense | within budget (one pass) |" if now else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if now else ""),
    ]
    for r in rows:
        cell = (r["method"], r["budget"])
        line = (
            f"| {r['budget']:g} | {r['method']} | {r['seeds']} | {r.get('latency_ratio_measured', float('nan')):.3f} "
            f"| {r.get('latency_ms_measured', float('nan')):.3f} "
            f"| {r['macs'] / 1e6:.2f}M | {r['val_top1']:.4f} | {r['test_top1_bn']:.4f} "
            f"| {r['test_top1_finetuned']:.4f} ± {r['test_top1_finetuned_std']:.4f} | {', '.join(per_seed[cell])} "
            f"| {r['search_seconds']:.0f} | {r['evaluations']:.0f} "
            f"| {r.get('budget_met_measured', float('nan')):.0%} of seeds |"
        )
        if now:
            # per seed the median over the passes that timed it, then the mean over seeds
            ratios = [statistics.median(read) for (method, budget, _), read in now.items() if (method, budget) == cell]
            within = sum(x <= r["budget"] for x in ratios) / max(1, len(ratios))
            line += f" {statistics.fmean(ratios):.3f} | {within:.0%} of seeds |" if ratios else " - | - |"
        lines.append(line)
    lines += [
        "",
        "Measured / dense: each measurement is the median of interleaved rounds beside the dense model; the final "
        "one (`latency_ratio_final`), averaged where a record has it with a confirming measurement of the same "
        "architecture after the budget check, minutes earlier (`latency_ratio_confirmed`). Latency ms: the final "
        "measurement.",
        *(
            [
                "",
                "Val and test (BN): after BatchNorm recalibration, on augmented training batches where a record says "
                "`bn_recalibration: augmented`, on clean ones in the cells finished before (clean batches cost a "
                "converged resnet56 about 4 points there; fine-tuning re-estimates the statistics either way).",
            ]
            if len({r.get("bn_recalibration", "clean") for r in records}) > 1
            else []
        ),
        *(
            [
                "",
                "One pass / dense: every cell's fine-tuned architecture timed again, all side by side with the dense "
                f"model in one interleaved pass (`python -m scripts.remeasure_benchmark`, {now_written(out)}), so that "
                "cells finished hours apart, on a host whose relative speed of two models drifts, share one yardstick. "
                "Passes hours apart read the same plans several percent apart, all together, so a seed's figure is "
                "the median over the passes that timed its current record (a pass before the cell was finished again "
                "does not count), and the column the mean over seeds.",
            ]
            if now
            else []
        ),
        *(["", *left_out] if left_out else []),
        *rerank_lines(records),
        *check_lines(records),
        "",
        *wall_time_lines(records),
    ]
    curves = learning_curves(records, out)
    if curves:
        lines += ["", "Learning curves of the agents' searches: " + ", ".join(f"`{p.name}`" for p in curves) + "."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plots(records, rows, out)


def learning_curves(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """``learning_curves_b<budget>.png`` per budget with an agent's run kept under ``out/runs``: each run's episode
    scores in order (a moving mean over 10 and the best so far; probes and the prior plan not drawn) beside the score
    greedy-lut's plan had in its own search, where its plan and search log are kept. Returns the plots written."""
    from agents.compare import plot_curves

    written = []
    for budget in sorted({r["budget"] for r in records}):
        rows: list[dict[str, Any]] = []
        for r in sorted(records, key=lambda r: (r["method"], r["seed"])):
            state = _run_dir(out, r["method"], budget, r["seed"]) / "search_state.json"
            if r["budget"] != budget or r["method"] not in ALGOS or not state.is_file():
                continue
            curve = [float(h["top1"]) for h in json.loads(state.read_text()).get("history", [])]
            if curve:
                rows.append({**r, "curve": curve, "evaluations_allowed": r["evaluations"]})
        if not rows:
            continue
        greedy = [r for r in records if r["method"] == "greedy-lut" and r["budget"] == budget]
        score = _searched_score(out, "greedy-lut", budget)
        if greedy and score is not None:
            rows.append({"method": "greedy-lut", "val_top1": score, "evaluations": greedy[0]["evaluations"]})
        path = out / f"learning_curves_b{budget:g}.png"
        plot_curves(rows, path)
        written.append(path)
    return written


def _searched_score(out: Path, method: str, budget: float) -> float | None:
    """The score a deterministic search's kept plan had in its own search log (None where either is not kept)."""
    plan_path, log_path = _plan_path(out, method, budget), out / "searches" / f"{_search_name(method, budget, 0)}.jsonl"
    if not plan_path.is_file() or not log_path.is_file():
        return None
    plan = json.loads(plan_path.read_text())["plan"]
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("plan") == plan and "top1" in entry:
            return float(entry["top1"])
    return None


def _plots(records: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    # latency as a fraction of the dense model timed side by side with each pruned one: the host's speed drifts
    # over a benchmark's hours, so absolute milliseconds of different cells do not compare
    for method in sorted({r["method"] for r in rows}):
        mine = sorted(
            (r for r in rows if r["method"] == method and "latency_ratio_measured" in r),
            key=lambda r: r["latency_ratio_measured"],
        )
        ax.errorbar(
            [r["latency_ratio_measured"] for r in mine],
            [r["test_top1_finetuned"] for r in mine],
            yerr=[r["test_top1_finetuned_std"] for r in mine],
            fmt="o-",
            capsize=3,
            label=method,
        )
    if (out / "dense.json").exists():
        dense = json.loads((out / "dense.json").read_text())
        ax.plot([1.0], [dense["test_top1"]], "k*", markersize=12, label=f"dense ({dense['test_top1']:.4f})")
    for budget in sorted({r["budget"] for r in records}):
        ax.axvline(budget, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("measured latency / dense, batch 1 (dotted: the budgets; bars: spread over seeds)")
    ax.set_ylabel("test top-1 after fine-tuning")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_latency.png")
    plt.close(fig)

    budget = min({r["budget"] for r in records}, key=lambda b: abs(b - 0.5))
    chosen = sorted(
        (r for r in records if r["budget"] == budget and r["seed"] == 0 and "sparsity" in r), key=lambda r: r["method"]
    )
    if chosen:
        # one row per method, one column per group: the plan that was fine-tuned (after the measured check)
        names = list(chosen[0]["sparsity"])
        grid = [[r["sparsity"].get(n, 0.0) for n in names] for r in chosen]
        fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.28 + 2), 1.2 + 0.35 * len(chosen)), dpi=100)
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(chosen)))
        ax.set_yticklabels([f"{r['method']} ({r['test_top1_finetuned']:.3f})" for r in chosen], fontsize=7)
        ax.set_title(f"per-group sparsity at budget {budget:g}, seed 0 (test top-1 after fine-tuning)", fontsize=8)
        fig.colorbar(image, ax=ax, label="sparsity")
        fig.tight_layout()
        fig.savefig(out / "sparsity_per_layer.png")
        plt.close(fig)
