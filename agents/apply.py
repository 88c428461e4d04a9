"""Applying a learned policy to a (possibly new) model, and the report every method ends with."""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.policy_io import SavedPolicy
from envs.layer_prune import LayerPruneEnv
from pruning_core.data import ImageDataset, atomic_write_bytes
from pruning_core.dynamic import gated_blocks
from pruning_core.engine import describe
from pruning_core.finetune import prune_and_finetune
from pruning_core.plan import PruningPlan
from pruning_core.serialize import save_pruned
from pruning_core.training import TrainConfig, evaluate

LATENCY_ROUNDS = 5
"""Interleaved measurements of a finished model beside the dense one; its latency ratio is their median."""


def plan_from_policy(policy: SavedPolicy, env: LayerPruneEnv) -> tuple[PruningPlan, dict[str, Any]]:
    """Run the policy deterministically over the env's groups; return the plan and the final step's info.

    Raises:
        IncompatiblePolicyError: The env's spaces differ from the policy's.
    """
    policy.check_compatible(env.observation_space, env.action_space)
    obs, _ = env.reset(seed=0)
    info: dict[str, Any] = {}
    done = False
    while not done:
        obs, _, done, _, info = env.step(policy.act(obs))
    return env.plan, info


@dataclass(frozen=True)
class MethodResult:
    """One method's pruned model and figures, as reported by ``apply``, ``baseline`` and ``demo``."""

    method: str
    record: dict[str, Any]
    folder: Path | None


def finish_plan(
    method: str,
    env: LayerPruneEnv,
    plan: PruningPlan,
    dataset: ImageDataset,
    *,
    finetune: TrainConfig,
    out: str | os.PathLike[str] | None,
    base_model: str,
    bn_batches: int = 20,
    search_seconds: float = 0.0,
    evaluations: int = 0,
    progress: bool = True,
) -> MethodResult:
    """Apply a plan, recalibrate, fine-tune, measure; save the pruned model and ``report.json`` under ``out``."""
    engine = env.engine
    pruned = prune_and_finetune(engine, plan, dataset, bn_batches=bn_batches, config=finetune, progress=progress)
    exec_rate: dict[str, float] = {}
    if plan.skip_thresholds and env.scorer.gates is not None:
        pruned.model = env.scorer.gates.fit(pruned.model, pruned.kept_channels, dict(plan.skip_thresholds))
        pruned.accuracy["test_gated"] = evaluate(pruned.model, dataset, "test").top1
        exec_rate = {name: block.execution_rate() for name, block in gated_blocks(pruned.model)}
    kept = {name: len(idxs) for name, idxs in pruned.kept_channels.items()}
    predicted = env.budget_model.total(engine.graph, kept)
    record: dict[str, Any] = {
        "method": method,
        "budget": env.budget,
        "device": getattr(env.budget_model, "device", type(env.budget_model).__name__),
        "cost_predicted": predicted,
        "dense_cost_predicted": env.dense_cost,
        "budget_met": predicted <= env.target * (1 + 1e-9),
        "macs": pruned.cost.macs,
        "params": pruned.cost.params,
        "dense_macs": pruned.base_cost.macs,
        "dense_params": pruned.base_cost.params,
        **pruned.accuracy,
        "search_seconds": search_seconds,
        "evaluations": evaluations,
    }
    if exec_rate:
        layer_costs = env.budget_model.layer_costs(engine.graph, kept)
        weighted = sum(
            cost * next((r for b, r in exec_rate.items() if name.startswith(b + ".")), 1.0)
            for name, cost in layer_costs.items()
        )
        record["exec_rate_test"] = exec_rate
        record["cost_expected"] = env.budget_model.combine(weighted)
    if env.measured is not None:  # the device is this host: measure the pruned model there
        # side by side with the dense model (one call of each in turn): the host's speed drifts over the minutes of
        # fine-tuning, so a dense figure measured before it would not compare. One such measurement can miss the
        # ratio by several percent here (5 in a row of one resnet56 plan: 0.63-0.68), so the ratio is the median
        # over LATENCY_ROUNDS of them.
        dense_ms, pruned_ms = [], []
        for _ in range(LATENCY_ROUNDS):
            dense_stats, pruned_stats = env.measured.measure_interleaved(
                [engine.model, pruned.model], engine.input_shape
            )
            dense_ms.append(dense_stats.p50_ms)
            pruned_ms.append(pruned_stats.p50_ms)
        ratios = [p / d for p, d in zip(pruned_ms, dense_ms, strict=True)]
        record["latency_ms_measured"] = statistics.median(pruned_ms)
        record["dense_latency_ms_measured"] = statistics.median(dense_ms)
        record["latency_ratios_measured"] = ratios
        record["latency_ratio_measured"] = statistics.median(ratios)
        record["budget_met_measured"] = record["latency_ratio_measured"] <= env.budget
    folder = None
    if out is not None:
        folder = save_pruned(
            out,
            pruned,
            base_model=base_model,
            classes=list(dataset.classes),
            extra_meta={"method": method, "groups": describe(pruned, engine.graph)},
        )
        report = {
            **record,
            "plan": plan.to_dict(),
            "groups": describe(pruned, engine.graph),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_bytes(Path(out) / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    return MethodResult(method, record, folder)
