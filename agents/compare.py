"""Searches compared on their own yardstick: the best val score (BN recalibration, the search's scorer) each finds at
a budget, with the evaluations and time it paid. Cheap beside the benchmark (no fine-tuning), so it is where a search
method is tuned; the benchmark then says whether its plans also fine-tune better.

Every method scores with the same scorer and the same budget model: random-search, tpe and the agents at a given
number of evaluations (the agents' probes and prior plan counted in it), greedy-lut until it meets the budget, and
``sensitivity``: the probes alone and the plan they suggest. Each result is saved as it is made
(``yardstick.json``), each search's scores are logged under ``searches/`` and each agent's run under ``runs/``,
so a run killed and started again loses at most the evaluation in flight.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.train import TrainRunConfig, train_agent
from envs.factory import make_env
from envs.target import Target
from pruning_core.data import atomic_write_bytes
from pruning_core.errors import PruneGymError
from pruning_core.executor import Executor, make_executor
from pruning_core.search import SearchResult, greedy_search, random_search, tpe_search
from pruning_core.sensitivity import sensitivity_plan

SEARCH_METHODS = ("sensitivity", "greedy-lut", "random-search", "tpe", "ppo", "dqn", "sac", "td3", "transfer")


@dataclass(frozen=True)
class YardstickConfig:
    """One comparison: the target, the methods and how many evaluations each may spend."""

    target: Target
    """The model, its checkpoint and data, the device and the budget there."""
    methods: tuple[str, ...]
    evaluations: tuple[int, ...]
    """Evaluation counts to compare at (random-search, tpe and the agents run once per count)."""
    seeds: tuple[int, ...] = (0,)
    val_images: int = 1000
    bn_batches: int = 10
    agent: TrainRunConfig = field(default_factory=TrainRunConfig)
    """The agents' settings (algo, episodes, seed and the target are set per run)."""

    @property
    def budget(self) -> float:
        """The target's budget."""
        return self.target.budget

    transfer_from: str | None = None
    """A trained policy's run folder, applied with no search beyond what its settings ask (``transfer``)."""
    calibrate_latency: bool = False
    """Correct the lookup table by timing a few plans beside the dense model first (measured devices; saved as
    ``correction.json`` in the output folder and shared by every method)."""
    executor: str = "local"
    """Where greedy-lut, random-search and tpe score their candidates: ``local`` or ``ray``
    (:mod:`pruning_core.executor`; the same plans, scores and evaluations)."""
    ray_address: str | None = None
    """The Ray cluster to join with ``executor="ray"`` (None: start a local Ray instance)."""
    ray_workers: int | None = None
    """Ray workers scoring candidates (None: one per CPU of the Ray cluster)."""
    ray_threads: int = 1
    """Torch threads (and Ray CPUs) of each Ray worker: this process's (``--threads``) gives the same scores."""

    def __post_init__(self) -> None:
        make_executor(self.executor, address=self.ray_address, workers=self.ray_workers, threads=self.ray_threads)
        unknown = sorted(set(self.methods) - set(SEARCH_METHODS))
        if unknown:
            raise PruneGymError(f"methods must be some of {', '.join(SEARCH_METHODS)}; got {unknown}")
        if "transfer" in self.methods and self.transfer_from is None:
            raise PruneGymError("method 'transfer' needs a policy to apply (transfer_from)")
        if not self.evaluations or min(self.evaluations) < 1:
            raise PruneGymError(f"evaluations must be >= 1; got {self.evaluations}")


@dataclass(frozen=True)
class YardstickRow:
    """What one method found."""

    method: str
    budget: float
    seed: int
    evaluations_allowed: int | None
    evaluations: int
    """Plans the method scored, probes and prior included."""
    val_top1: float
    seconds: float
    plan: str
    curve: list[float] = field(default_factory=list)
    """The score of each evaluation in order (agents: each episode's), for learning curves."""


def _key(row: YardstickRow | dict[str, Any]) -> tuple[str, float, int, int | None]:
    r = row if isinstance(row, dict) else asdict(row)
    return r["method"], r["budget"], r["seed"], r["evaluations_allowed"]


def compare_searches(cfg: YardstickConfig, out: str | Path, *, progress: bool = True) -> list[dict[str, Any]]:
    """Run every method at every evaluation count and seed; return the rows (also in ``out/yardstick.json``). The
    searches score their candidates with ``cfg.executor``."""
    executor = make_executor(cfg.executor, address=cfg.ray_address, workers=cfg.ray_workers, threads=cfg.ray_threads)
    try:
        return _compare(cfg, Path(out), executor, progress=progress)
    finally:
        executor.close()


def _compare(cfg: YardstickConfig, out: Path, executor: Executor, *, progress: bool) -> list[dict[str, Any]]:
    """:func:`compare_searches`' work, the searches scoring with ``executor``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "yardstick.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    done = {_key(r) for r in rows}
    if cfg.calibrate_latency:  # one correction, saved with the results, for every method
        cfg = replace(cfg, agent=replace(cfg.agent, calibrate_latency=str(out / "correction.json")))
    env = _env(cfg, sensitivity=True, progress=progress)
    probes = env.sensitivity
    assert probes is not None
    problem = env.budget_problem()

    def save(row: YardstickRow) -> None:
        rows.append(asdict(row))
        done.add(_key(row))
        atomic_write_bytes(path, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)))
        print(
            f"{row.method:>14} b{row.budget:g} s{row.seed} evals {row.evaluations:>4} "
            f"(allowed {row.evaluations_allowed}) val {row.val_top1:.4f} in {row.seconds:.0f}s",
            flush=True,
        )
        if row.curve:
            first, last = fifths(row.curve)
            print(f"{'':>14} mean score, first fifth {first:.4f}, last fifth {last:.4f}", flush=True)

    def logged(name: str, run: Any) -> tuple[SearchResult, float]:
        start = time.perf_counter()
        with env.scorer.logging_to(
            out / "searches" / f"{name}.jsonl", {"model": cfg.target.model, "device": cfg.target.device}
        ) as log:
            result = run()
        return result, time.perf_counter() - start + log.carried_seconds

    for method in cfg.methods:
        if method == "sensitivity":
            if (method, cfg.budget, 0, None) in done:
                continue
            plan = sensitivity_plan(problem, probes)
            top1 = env.scorer.score(plan).top1
            save(YardstickRow(method, cfg.budget, 0, None, probes.evaluations + 1, top1, 0.0, plan.to_json()))
        elif method == "transfer":
            if (method, cfg.budget, 0, None) in done:
                continue
            save(_transferred(cfg, env))
        elif method == "greedy-lut":
            if (method, cfg.budget, 0, None) in done:
                continue
            result, seconds = logged(
                f"greedy-lut_b{cfg.budget:g}", lambda: greedy_search(problem, env.scorer, executor=executor)
            )
            total = result.evaluations + probes.evaluations  # its first round reused the probes
            save(YardstickRow(method, cfg.budget, 0, None, total, result.val_top1, seconds, result.plan.to_json()))
        else:
            for n in cfg.evaluations:
                for seed in cfg.seeds:
                    if (method, cfg.budget, seed, n) in done:
                        continue
                    row = _counted_search(cfg, env, method, n, seed, out, logged, executor)
                    save(row)
    write_tables(out)
    return rows


def write_tables(out: str | Path) -> list[dict[str, Any]]:
    """``yardstick.md`` and ``learning_curves.png`` from ``out/yardstick.json`` (rows of one or several runs)."""
    out = Path(out)
    rows: list[dict[str, Any]] = json.loads((out / "yardstick.json").read_text())
    plot_curves(rows, out / "learning_curves.png")
    atomic_write_bytes(out / "yardstick.md", lambda tmp: tmp.write_text(yardstick_table(rows)))
    return rows


def yardstick_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per method, budget and evaluation count, the best val score over seeds (mean, and each seed's),
    the evaluations spent, the search time, and for searches that score one plan per evaluation the mean score of
    their first and last fifth."""
    groups: dict[tuple[float, str, int | None], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["budget"], r["method"], r["evaluations_allowed"]), []).append(r)
    lines = [
        "| budget | method | evaluations allowed | seeds | best val (mean) | per seed | evaluations | search s | "
        "first fifth | last fifth |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (budget, method, allowed), rs in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][2] or 0, kv[0][1])):
        rs = sorted(rs, key=lambda r: r["seed"])
        vals = [r["val_top1"] for r in rs]
        curves = [fifths(r["curve"]) for r in rs if r.get("curve")]
        first = f"{sum(c[0] for c in curves) / len(curves):.4f}" if curves else ""
        last = f"{sum(c[1] for c in curves) / len(curves):.4f}" if curves else ""
        lines.append(
            f"| {budget:g} | {method} | {allowed if allowed is not None else '-'} | {len(rs)} | "
            f"{sum(vals) / len(vals):.4f} | {', '.join(f'{v:.4f}' for v in vals)} | "
            f"{max(r['evaluations'] for r in rs)} | {sum(r['seconds'] for r in rs) / len(rs):.0f} | {first} | {last} |"
        )
    return "\n".join(lines) + "\n"


def fifths(curve: list[float]) -> tuple[float, float]:
    """Mean score of the first and of the last fifth of a search's evaluations (whether it learned).

    >>> fifths([0.0, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.75, 1.0])
    (0.125, 0.875)
    """
    n = max(1, len(curve) // 5)
    return sum(curve[:n]) / n, sum(curve[-n:]) / n


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Each search's scores in order (a moving mean over 10) and its best so far: the learning curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in rows if r.get("curve")]
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for i, r in enumerate(curves):
        curve = r["curve"]
        window = min(10, len(curve))
        mean = [
            sum(curve[max(0, k - window + 1) : k + 1]) / len(curve[max(0, k - window + 1) : k + 1])
            for k in range(len(curve))
        ]
        label = f"{r['method']} n{r['evaluations_allowed']} s{r['seed']}"
        colour = f"C{i % 10}"
        ax.plot(mean, color=colour, label=f"{label} (mean of 10)")
        best = [max(curve[: k + 1]) for k in range(len(curve))]
        ax.plot(best, color=colour, linestyle=":", alpha=0.7)
    for r in rows:
        if r["method"] in ("sensitivity", "greedy-lut"):
            ax.axhline(r["val_top1"], color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(f"{r['method']} ({r['evaluations']} evals)", (0, r["val_top1"]), fontsize=7, color="grey")
    ax.set_xlabel("evaluation (agents: episode after the probes)")
    ax.set_ylabel("val top-1 after BN recalibration")
    ax.set_title(f"searches at budget {curves[0]['budget']:g}: scores (solid) and best so far (dotted)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _env(cfg: YardstickConfig, **settings: Any) -> Any:
    """The comparison's environment: its target, scored by BN recalibration alone, its latency correction."""
    return make_env(
        cfg.target,
        val_images=cfg.val_images,
        bn_batches=cfg.bn_batches,
        finetune_steps=0,
        calibrate_latency=cfg.agent.calibrate_latency,
        **settings,
    )


def _transferred(cfg: YardstickConfig, probed: Any) -> YardstickRow:
    """The policy applied deterministically: its plan's score, and the evaluations the new model cost (probes where
    the policy observes them, the plan itself)."""
    from agents.apply import plan_from_policy
    from agents.policy_io import load_policy

    assert cfg.transfer_from is not None
    policy = load_policy(cfg.transfer_from)
    start = time.perf_counter()
    env = _env(cfg, dataset=probed.scorer.dataset, **policy.action_settings())
    plan, info = plan_from_policy(policy, env)
    probes = env.probe_evaluations
    seconds = time.perf_counter() - start
    return YardstickRow("transfer", cfg.budget, 0, None, probes + 1, info["top1"], seconds, plan.to_json())


def _counted_search(
    cfg: YardstickConfig, env: Any, method: str, n: int, seed: int, out: Path, logged: Any, executor: Executor
) -> YardstickRow:
    problem = env.budget_problem()
    name = f"{method}_b{cfg.budget:g}_n{n}_s{seed}"
    if method in ("random-search", "tpe"):
        search = random_search if method == "random-search" else tpe_search
        result, seconds = logged(name, lambda: search(problem, env.scorer, evaluations=n, seed=seed, executor=executor))
        return YardstickRow(
            method,
            cfg.budget,
            seed,
            n,
            result.evaluations,
            result.val_top1,
            seconds,
            result.plan.to_json(),
            result.history,
        )
    probes = env.sensitivity
    spent = (probes.evaluations if cfg.agent.sensitivity else 0) + (1 if cfg.agent.action_mapping == "scaled" else 0)
    if n - spent < 1:
        raise PruneGymError(f"expected more than {spent} evaluations for {method} (its probes and prior); got {n}")
    config = replace(
        cfg.agent,
        target=cfg.target,
        algo=method,
        episodes=n - spent,
        seed=seed,
        val_images=cfg.val_images,
        bn_batches=cfg.bn_batches,
        finetune_steps=0,
    )
    run = out / "runs" / name
    result = train_agent(config, run, resume=(run / "model.zip").exists())
    state = result.state
    return YardstickRow(
        method,
        cfg.budget,
        seed,
        n,
        state.evaluations,
        state.best_top1,
        state.seconds,
        state.best_plan or "",
        [h["top1"] for h in state.history],
    )


def plot_sensitivity(sensitivity: Any, plans: dict[str, dict[str, float]], path: Path, *, title: str = "") -> None:
    """The probes per group (val lost thinned alone to the floor and to the uniform sparsity, and per unit of cost
    saved) above each method's sparsity per group: which groups a plan spares, and whether the probes say why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(sensitivity.probes)
    x = list(range(len(groups)))
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(max(8, len(groups) * 0.32), 8), dpi=100, sharex=True)
    width = 0.4
    top.bar([i - width / 2 for i in x], [sensitivity.drop(g, "floor") for g in groups], width, label="floor")
    top.bar([i + width / 2 for i in x], [sensitivity.drop(g, "uniform") for g in groups], width, label="uniform")
    top.set_ylabel("val lost, alone")
    top.legend(fontsize=7)
    rates = [min(sensitivity.drop_per_cost(g), 1e3) for g in groups]
    mid.bar(x, rates, color="tab:red")
    mid.set_ylabel("lost per cost saved")
    for i, (name, sparsity) in enumerate(plans.items()):
        low.plot(x, [sparsity.get(g, 0.0) for g in groups], marker="o", markersize=3, color=f"C{i % 10}", label=name)
    low.set_ylabel("sparsity")
    low.set_ylim(-0.02, 1.0)
    low.legend(fontsize=7, ncol=3)
    low.set_xticks(x, groups, rotation=90, fontsize=7)
    top.set_title(title or f"sensitivity probes (dense val {sensitivity.dense_top1:.3f}) and each method's plan")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
