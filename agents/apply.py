"""Applying a learned policy to a (possibly new) model, and the report every method ends with."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from agents.policy_io import SavedPolicy
from agents.record import MethodRecord
from envs.layer_prune import LayerPruneEnv
from envs.target import Target
from hardware_models.measure import ratios_beside_dense
from pruning_core.baselines import BudgetProblem, retargeted_plan
from pruning_core.data import ImageDataset, atomic_write_bytes
from pruning_core.dynamic import gated_blocks
from pruning_core.engine import PrunedModel, describe, group_kept
from pruning_core.errors import PruneGymError
from pruning_core.executor import Executor, FinetuneJob
from pruning_core.finetune import prune_and_finetune
from pruning_core.plan import Granularity, PruningPlan
from pruning_core.serialize import save_pruned
from pruning_core.training import TrainConfig, evaluate

LATENCY_ROUNDS = 15
"""Interleaved measurements of a model beside the dense one; its latency ratio is their median. One round's ratio
strays by up to 15% here (resnet56 at 0.7: rounds from 0.58 to 0.74 of dense in one minute); the median of 3 rounds
of one plan ranged 0.680-0.731 over ten measurements, and the median of 15 is about half as wide."""
CHECK_STEPS = 4
"""Measured budget check: at most this many other plans are tried when a plan measures outside its band."""
CHECK_AIM = 0.98
"""The check aims plans at this fraction of the budget, so that a later measurement of the same model stays within
it despite the noise of the median."""
CHECK_WIDEN_BELOW = 0.94
"""A plan measured under this fraction of the budget is widened toward it: a method whose table over-prices its plan
should not lose accuracy it was allowed to keep."""


class MeasuredRatios(NamedTuple):
    """A model's latency beside the dense one, one entry per round: ratio, dense ms, pruned ms; and where it was
    timed (``worker``: the fresh timing process; ``process``: this one)."""

    ratios: list[float]
    dense_ms: list[float]
    pruned_ms: list[float]
    timing: str


def measured_ratios(env: LayerPruneEnv, model: torch.nn.Module, *, in_worker: bool = True) -> MeasuredRatios:
    """Latency of ``model`` relative to the dense model on the env's measured device, in :data:`LATENCY_ROUNDS`
    rounds of one interleaved pass beside the dense model (:func:`~hardware_models.measure.ratios_beside_dense`),
    timed in a fresh worker process (in this process with ``in_worker=False``). The model's ratio is the median of
    the rounds'.

    One such measurement can miss the ratio by several percent here (5 in a row of one resnet56 plan: 0.63-0.68),
    and the host drifts over minutes, so each round times both models in turn.
    """
    if env.measured is None:
        raise PruneGymError("expected an environment on a device measured on this host; got one without")
    taken = ratios_beside_dense(
        env.measured, env.engine.model, [model], env.engine.input_shape, rounds=LATENCY_ROUNDS, in_worker=in_worker
    )
    return MeasuredRatios(
        taken.ratios[0], taken.dense_ms, taken.model_ms[0], "worker" if taken.in_worker else "process"
    )


def measured_verdict(record: Mapping[str, Any]) -> dict[str, Any]:
    """A finished model's measured latency ratio and whether it is within its budget, from its record.

    The ratio is the mean of the model's unselected measurements: the final one (``latency_ratio_final``) and, where
    the budget check ran, its confirming measurement of the plan it kept (``latency_ratio_confirmed``, before
    fine-tuning, same architecture), minutes earlier. The check's own reading of that plan is not one of them: the
    check stops at the first reading inside its band, so that reading is biased low. Fine-tuning does not change a
    model's speed (its weights measured as fast as fresh ones, side by side), but the host's relative speed of two
    models drifts over minutes: a plan's 15-round median repeats within 0.3% over a minute, yet the check's reading
    and the final measurement of the same architecture differed by -1.9% to +6.9% in the resnet56 benchmark at 0.7.

    >>> measured_verdict({"budget": 0.7, "latency_ratio_confirmed": 0.69, "latency_ratio_final": 0.72})
    {'latency_ratio_measured': 0.705, 'budget_met_measured': False}

    Returns:
        ``latency_ratio_measured`` and ``budget_met_measured``.
    """
    if "latency_ratio_final" not in record:
        raise PruneGymError(f"expected a record with a final measured latency ratio; got keys {sorted(record)}")
    ratio = statistics.fmean(record[k] for k in ("latency_ratio_confirmed", "latency_ratio_final") if k in record)
    return {"latency_ratio_measured": ratio, "budget_met_measured": ratio <= record["budget"]}


class _Measured(NamedTuple):
    """A plan the budget check measured: its pruned model's median ratio to dense and how far it was moved."""

    plan: PruningPlan
    ratio: float
    moved: float
    model: torch.nn.Module


def meet_measured_budget(env: LayerPruneEnv, plan: PruningPlan) -> tuple[PruningPlan, dict[str, Any]]:
    """Measure a channel plan's pruned model before fine-tuning and move it into its budget's band by measurement
    (NetAdapt checks its proposals by measurement too): :func:`meet_measured_budgets` of one plan.

    A plan measured over the budget is thinned, one measured under ``CHECK_WIDEN_BELOW`` of it widened: every group
    moved the same fraction of the way to ``max_sparsity`` or to the dense width
    (:func:`~pruning_core.baselines.retargeted_plan`) by as much as the measurement says the table mispriced it, aiming
    at ``CHECK_AIM`` of the budget; then measured again, at most :data:`CHECK_STEPS` times. Of the plans measured, the
    widest one within the budget is kept (the thinnest when none is).

    A search picks the plans its latency table prices lowest, table errors included: the plans it returns measure
    above what the table predicts more often than random variants do (a DQN plan for resnet56 at 0.7 measured 0.79
    of dense), and a table can over-price a plan as well (uniform-l1 at 0.7 measured 0.63). Every method is checked
    alike. Returns the plan to fine-tune and what the check did: ``thinned_by`` is the fraction moved, negative when
    widened.
    """
    return meet_measured_budgets({"plan": (env, plan)})["plan"]


def _widths(env: LayerPruneEnv, plan: PruningPlan) -> dict[str, int]:
    return {name: len(channels) for name, channels in env.engine.kept_channels(plan).items()}


class _Check:
    """One plan's budget check in progress: the plans measured so far and the next one to measure."""

    def __init__(self, env: LayerPruneEnv, plan: PruningPlan) -> None:
        self.env, self.plan, self.problem = env, plan, env.budget_problem()
        self.tried: list[_Measured] = []
        self.next: PruningPlan | None = plan
        self.moved = 0.0

    def read(self, model: torch.nn.Module, ratio: float) -> None:
        """Record the reading of ``self.next`` and choose the plan to measure after it, if any."""
        assert self.next is not None
        self.tried.append(_Measured(self.next, ratio, self.moved, model))
        budget, candidate = self.env.budget, None
        outside = ratio > budget or ratio < budget * CHECK_WIDEN_BELOW
        at_end = (ratio > budget and self.moved >= 1.0) or (ratio < budget and self.moved <= -1.0)
        if outside and not at_end and len(self.tried) <= CHECK_STEPS:  # at_end: every group at its limit
            widths = _widths(self.env, self.next)
            aimed, moved = _aimed(self.problem, self.plan, self.problem.cost_of(widths), ratio, budget)
            if _widths(self.env, aimed) != widths:  # else rounded to the same widths: as close as it gets
                candidate, self.moved = aimed, moved
        self.next = candidate

    def chosen(self) -> _Measured:
        within = [t for t in self.tried if t.ratio <= self.env.budget]
        return max(within, key=lambda t: t.ratio) if within else min(self.tried, key=lambda t: t.ratio)


def meet_measured_budgets(
    cells: Mapping[str, tuple[LayerPruneEnv, PruningPlan]],
) -> dict[str, tuple[PruningPlan, dict[str, Any]]]:
    """The measured budget check (see :func:`meet_measured_budget`) of several plans at once, each reading taken in
    one interleaved pass with the others' (:func:`~hardware_models.measure.ratios_beside_dense`,
    :data:`LATENCY_ROUNDS` rounds): plans checked minutes or hours apart meet different yardsticks on a host whose
    relative speed of two models drifts (the same resnet56 plan read 0.498 of dense in one benchmark cell's check and
    0.395 in another's), so a benchmark checks its methods' plans for a budget together.

    Args:
        cells: Per name, an environment (all on the same measured device and dense model) and its channel plan.

    Returns:
        Per name, the plan to fine-tune and what its check did (``check_ratios``, ``thinned_by``,
        ``latency_ratio_confirmed``: one more reading of the kept plan, all kept plans together).
    """
    envs = [env for env, _ in cells.values()]
    if not envs or any(env.measured is None for env in envs):
        raise PruneGymError("expected an environment on a device measured on this host; got none, or one without")
    first = envs[0]

    def where(env: LayerPruneEnv) -> tuple[Any, ...]:
        assert env.measured is not None
        return env.measured.device, env.measured.runtime, env.measured.threads, env.engine.input_shape

    for env in envs[1:]:  # every plan is timed beside the first environment's dense model, on its device
        if where(env) != where(first):
            raise PruneGymError(
                f"expected plans on one measured device, runtime, thread count and input shape; got {where(first)} "
                f"and {where(env)}"
            )
    checks = {name: _Check(env, plan) for name, (env, plan) in cells.items()}

    def read_together(models: dict[str, torch.nn.Module]) -> dict[str, float]:
        assert first.measured is not None
        per_model = ratios_beside_dense(
            first.measured, first.engine.model, list(models.values()), first.engine.input_shape, rounds=LATENCY_ROUNDS
        ).ratios
        return {name: statistics.median(read) for name, read in zip(models, per_model, strict=True)}

    while pending := {name: c for name, c in checks.items() if c.next is not None}:
        models = {name: c.env.engine.apply(c.next).model for name, c in pending.items() if c.next is not None}
        for name, ratio in read_together(models).items():
            checks[name].read(models[name], ratio)
    chosen = {name: c.chosen() for name, c in checks.items()}
    # the reading that chose a plan is biased low (see measured_verdict): one more, for the verdict
    confirmed = read_together({name: t.model for name, t in chosen.items()})
    return {
        name: (
            t.plan,
            {
                "latency_ratio_before_check": checks[name].tried[0].ratio,
                "latency_ratio_after_check": t.ratio,
                "thinned_by": t.moved,
                "check_steps": len(checks[name].tried) - 1,
                "check_ratios": [m.ratio for m in checks[name].tried],
                "latency_ratio_confirmed": confirmed[name],
                "checked_with": len(cells),  # plans checked together
            },
        )
        for name, t in chosen.items()
    }


def _aimed(
    problem: BudgetProblem, plan: PruningPlan, predicted: float, ratio: float, budget: float
) -> tuple[PruningPlan, float]:
    """The budget check's next plan: ``plan`` retargeted where a measurement says the band lies, the table's
    ``predicted`` cost of a plan measured at ``ratio`` of dense scaled to :data:`CHECK_AIM` of ``budget``."""
    return retargeted_plan(problem, plan, predicted * budget * CHECK_AIM / ratio)


def replay_check(env: LayerPruneEnv, plan: PruningPlan, check: Mapping[str, Any]) -> PruningPlan:
    """The plan a budget check kept, rebuilt from the readings its record saved (``check_ratios``): given them, the
    check is deterministic. For records written before reports kept the checked plan's sparsity.

    Raises:
        PruneGymError: The record has no check, or the replay does not move the plan by the recorded ``thinned_by``
            (the table or the plan differs from the ones the check ran with).
    """
    if "check_ratios" not in check:
        raise PruneGymError(f"expected a record with the budget check's readings; got keys {sorted(check)}")
    problem = env.budget_problem()
    ratios = list(check["check_ratios"])
    chosen = ratios.index(check["latency_ratio_after_check"])
    groups = problem.engine.groups

    def predicted(candidate: PruningPlan) -> float:
        sparsity, step = candidate.sparsity, candidate.round_to
        return problem.cost_of({g.name: group_kept(g, sparsity.get(g.name, 0.0), step) for g in groups})

    kept, moved = plan, 0.0
    for ratio in ratios[:chosen]:
        kept, moved = _aimed(problem, plan, predicted(kept), ratio, env.budget)
    if abs(moved - check["thinned_by"]) > 1e-9:
        raise PruneGymError(f"expected the replayed check to move the plan by {check['thinned_by']}; got {moved}")
    return kept


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


def apply_policy(
    policy: SavedPolicy | str | os.PathLike[str],
    target: Target,
    *,
    finetune: TrainConfig,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    **env_settings: Any,
) -> MethodResult:
    """Apply a learned policy to a model (one it may never have seen), then finish its plan as every method's is.

    The policy runs deterministically over the model's groups; where its settings ask for sensitivity probes they are
    paid first (with dynamic skipping, the skip probes too). The record's ``evaluations`` is what the new model cost:
    the probes and the policy's one plan.

    Args:
        policy: A saved policy or its run folder.
        target: The model to prune and the budget it must meet.
        finetune: The fine-tuning recipe (see :func:`pruning_core.finetune.finetune_recipe`).
        out: Folder for the pruned model and ``report.json`` (None: nothing saved).
        progress: Show progress bars.
        executor: Where the plan is fine-tuned (None: here; see :func:`finish_plan`).
        **env_settings: Further :func:`~envs.factory.make_env` settings (scoring recipe, calibration).

    Raises:
        IncompatiblePolicyError: The model's observation or action spaces differ from the policy's.
    """
    from agents.policy_io import load_policy
    from envs.factory import make_env

    if not isinstance(policy, SavedPolicy):
        policy = load_policy(policy)
    env = make_env(target, **{"progress": progress, **env_settings, **policy.action_settings()})
    plan, _ = plan_from_policy(policy, env)
    probes = env.probe_evaluations
    return finish_plan(
        "policy",
        env,
        plan,
        env.scorer.dataset,
        finetune=finetune,
        out=out,
        base_model=target.model,
        evaluations=probes + 1,
        progress=progress,
        executor=executor,
    )


@dataclass(frozen=True)
class MethodResult:
    """One method's pruned model and figures, as reported by ``apply``, ``baseline`` and ``demo``."""

    method: str
    record: MethodRecord
    """Its figures (``report.json`` holds them with the plan and the per-group widths)."""
    folder: Path | None
    """Where the pruned model was saved (None: not saved)."""


def _gated_fields(
    env: LayerPruneEnv, kept: Mapping[str, int], exec_rate: Mapping[str, float], top1: float | None, *, latency: bool
) -> dict[str, Any]:
    """A gated model's record fields: its test top-1, the blocks' execution rates, and on a latency budget the
    latency the latency model expects with each gated block weighted by its rate (none without gates)."""
    if not exec_rate:
        return {}
    expected = env.budget_model.expected(env.engine.graph, kept, exec_rate) if latency else None
    return {"test_top1_gated": top1, "exec_rate_test": dict(exec_rate), "latency_ms_expected": expected}


def _measured_fields(env: LayerPruneEnv, model: torch.nn.Module, check: Mapping[str, Any]) -> dict[str, Any]:
    """The record fields of a pruned model measured on this host beside the dense model (:func:`measured_ratios`)
    and, on a latency budget, judged by the measurement (:func:`measured_verdict`, with the budget check's
    confirming reading in ``check``, if any)."""
    final = measured_ratios(env, model)
    ratio = statistics.median(final.ratios)
    fields: dict[str, Any] = {
        "latency_timing": final.timing,
        "latency_ms_measured": statistics.median(final.pruned_ms),
        "dense_latency_ms_measured": statistics.median(final.dense_ms),
        "latency_ratios_measured": tuple(final.ratios),
        "latency_ratio_final": ratio,
    }
    if env.budget_model.is_latency:  # a MACs or parameter budget is not judged by latency
        fields.update(measured_verdict({**check, "budget": env.budget, "latency_ratio_final": ratio}))
    else:
        fields["latency_ratio_measured"] = ratio
    return fields


def needs_check(env: LayerPruneEnv, plan: PruningPlan) -> bool:
    """Whether a plan is checked by measurement before fine-tuning: a static channel plan under a latency budget on
    a device this host measures."""
    static = plan.granularity is Granularity.CHANNEL and not plan.skip_thresholds
    return env.measured is not None and static and env.budget_model.is_latency


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
    check_budget: bool = True,
    checked: tuple[PruningPlan, Mapping[str, Any]] | None = None,
    finetuned: PrunedModel | None = None,
    executor: Executor | None = None,
) -> MethodResult:
    """Apply a plan, recalibrate, fine-tune, measure; save the pruned model and ``report.json`` under ``out``.

    On a measured device a static channel plan is first checked by measurement and thinned or widened into its
    budget's band (:func:`meet_measured_budget`, with ``check_budget``; see :func:`needs_check`), unless ``checked``
    gives the plan a check already kept and what it did (:func:`meet_measured_budgets`, several plans checked
    together); the record says what the check did. ``finetuned``: the plan (the checked one, where ``checked`` is
    given) already applied, recalibrated and fine-tuned with ``finetune`` and ``bn_batches`` (by an executor,
    :meth:`~pruning_core.executor.Executor.finetune`); it is measured and recorded, not made again. Otherwise the
    plan is fine-tuned by ``executor`` (None: here), and measured here once it is done.

    Raises:
        PruneGymError: ``finetuned`` was made from another plan.

    Returns:
        The method's :class:`~agents.record.MethodRecord` (``report.json`` holds its :meth:`~MethodRecord.to_dict`
        with the plan and the per-group widths) and the folder of the pruned model.
    """
    engine = env.engine
    check: dict[str, Any] = {}
    if checked is not None:
        plan, check = checked[0], dict(checked[1])
    elif check_budget and needs_check(env, plan):
        plan, check = meet_measured_budget(env, plan)
    if finetuned is None and executor is None:
        pruned = prune_and_finetune(engine, plan, dataset, bn_batches=bn_batches, config=finetune, progress=progress)
    elif finetuned is None:
        (made,) = executor.finetune([FinetuneJob(method, engine, plan, dataset, finetune, bn_batches)])
        pruned = made.pruned
    elif finetuned.plan.to_json() != plan.to_json():
        raise PruneGymError(
            f"expected a fine-tuned model of the plan to finish, {plan.to_json()[:60]}...; got one of "
            f"{finetuned.plan.to_json()[:60]}..."
        )
    else:
        pruned = finetuned
    exec_rate: dict[str, float] = {}
    if plan.skip_thresholds and env.scorer.gates is not None:
        pruned.model = env.scorer.gates.fit(pruned.model, pruned.kept_channels, dict(plan.skip_thresholds))
        pruned.accuracy["test_gated"] = evaluate(pruned.model, dataset, "test").top1
        exec_rate = {name: block.execution_rate() for name, block in gated_blocks(pruned.model)}
    kept = {name: len(idxs) for name, idxs in pruned.kept_channels.items()}
    predicted = env.budget_model.total(engine.graph, kept)
    latency = env.budget_model.is_latency  # else a MACs or parameter count: no latency predicted, none judged
    accuracy = pruned.accuracy
    measured = _measured_fields(env, pruned.model, dict(check)) if env.measured is not None else {}
    record = MethodRecord(
        method=method,
        budget=env.budget,
        device=getattr(env.budget_model, "device", type(env.budget_model).__name__),
        budget_met=predicted <= env.budget * env.dense_cost * (1 + 1e-9),  # the budget, not the aim below it
        macs=pruned.cost.macs,
        params=pruned.cost.params,
        dense_macs=pruned.base_cost.macs,
        dense_params=pruned.base_cost.params,
        val_top1_pruned=accuracy["val_pruned"],
        test_top1_pruned=accuracy["test_pruned"],
        val_top1=accuracy["val_bn"],
        test_top1_bn=accuracy["test_bn"],
        test_top1_finetuned=accuracy.get("test_finetuned", accuracy["test_bn"]),
        val_top1_finetuned=accuracy.get("val_finetuned"),
        search_seconds=search_seconds,
        evaluations=evaluations,
        bn_recalibration="augmented",  # the *_bn accuracies' batches (see pruning_core.engine.recalibrate_bn)
        sparsity=dict(plan.sparsity),  # the plan fine-tuned: after the check, where one ran
        latency_ms_predicted=predicted if latency else None,
        dense_latency_ms_predicted=env.dense_cost if latency else None,
        **_gated_fields(env, kept, exec_rate, accuracy.get("test_gated"), latency=latency),
        **{name: tuple(value) if name == "check_ratios" else value for name, value in check.items()},
        **measured,
    )
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
            **record.to_dict(),
            **({"measured_over_expected": record.measured_over_expected} if record.measured_over_expected else {}),
            "plan": plan.to_dict(),
            "groups": describe(pruned, engine.graph),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_bytes(Path(out) / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    return MethodResult(method, record, folder)
