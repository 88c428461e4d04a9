"""``PruneGym/LayerPrune-v0``: walk a model's prunable groups and choose each one's sparsity (AMC, ECCV 2018)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pruning_core.baselines import BudgetProblem, retargeted_plan, uniform_sparsity
from pruning_core.dynamic.probes import SkipSensitivity
from pruning_core.engine import group_kept, group_widths, widest_within
from pruning_core.errors import BudgetInfeasibleError, PruneGymError
from pruning_core.graph import LayerType
from pruning_core.metrics import LayerwiseCost
from pruning_core.plan import PruningPlan
from pruning_core.scoring import PlanScorer
from pruning_core.sensitivity import Sensitivity, sensitivity_plan

DEFAULT_LEVELS = 9
"""Sparsity levels of the discrete action (DQN's) unless told otherwise: 0 to ``max_sparsity`` in eighths."""

OBS_FEATURES = (
    "position",
    "is_conv",
    "is_depthwise",
    "is_linear",
    "log_in_channels",
    "log_out_channels",
    "kernel",
    "stride",
    "log_input_size",
    "macs_share",
    "params_share",
    "cost_share",
    "cost_removed",
    "cost_removable",
    "budget_left",
    "previous_action",
    "skippable",
    "importance_cv",
    "importance_min",
    "importance_q25",
    "importance_q75",
    "importance_max",
)

SENSITIVITY_FEATURES = ("sensitivity_drop", "sensitivity_per_cost", "sensitivity_rank")
"""Observation features added when the environment is given sensitivity probes (:mod:`pruning_core.sensitivity`)."""

SKIP_FEATURES = ("skip_score_q10", "skip_score_q50", "skip_score_q90", "skip_drop")
"""Observation features added when a dynamic-skip environment is given skip probes
(:mod:`pruning_core.dynamic.probes`)."""

ACTION_MAPPINGS = ("clip", "scaled")
"""How actions become a plan: ``clip`` (AMC: each action clipped so the rest can still meet the budget) or
``scaled`` (each action shifts its group's sparsity from the prior plan, and the whole plan is then moved to the
budget, as random-search's candidates are)."""


def checked_budget_range(budget_range: Any) -> tuple[float, float]:
    """``(low, high)`` as floats, from any pair (a JSON list too), with ``0 < low <= high <= 1``.

    Raises:
        PruneGymError: Not such a pair.
    """
    try:
        low, high = (float(b) for b in budget_range)
    except (TypeError, ValueError):
        low = high = math.nan
    if not 0 < low <= high <= 1:
        raise PruneGymError(f"budget_range must be (low, high) with 0 < low <= high <= 1; got {budget_range}")
    return low, high


def checked_aim(aim: float, name: str = "aim") -> float:
    """``aim`` (the fraction of the budget plans aim at) as a float in [0.5, 1].

    Raises:
        PruneGymError: Outside that range; the message names the setting ``name``.
    """
    if not 0.5 <= aim <= 1:
        raise PruneGymError(f"{name} must be a fraction of the budget in [0.5, 1]; got {aim:g}")
    return float(aim)


@dataclass(frozen=True)
class RewardContext:
    """What a reward function sees at the end of an episode."""

    top1: float
    cost_ratio: float
    """Budget-metric cost of the plan over the target."""
    macs: int
    prior_top1: float = 0.0
    """Val top-1 of the prior plan at the episode's budget (``residual`` reward)."""


@dataclass(frozen=True)
class RewardSpec:
    """A reward variant: its function, and whether actions are clipped to guarantee the budget."""

    fn: Callable[[RewardContext, float], float]
    clips_actions: bool
    description: str


REWARDS: dict[str, RewardSpec] = {
    "accuracy": RewardSpec(lambda c, lam: c.top1, True, "val top-1; the budget is met by action clipping (AMC)"),
    "lagrangian": RewardSpec(
        lambda c, lam: c.top1 - lam * max(0.0, c.cost_ratio - 1.0),
        False,
        "val top-1 - lambda * max(0, cost / target - 1); no clipping",
    ),
    "amc-flops": RewardSpec(
        lambda c, lam: -(1.0 - c.top1) * math.log(max(c.macs, 2)), True, "-error * log(MACs) (AMC's FLOPs reward)"
    ),
    "residual": RewardSpec(
        lambda c, lam: c.top1 - c.prior_top1,
        True,
        "val top-1 minus the prior plan's at the same budget: what the policy adds to the plan it starts from",
    ),
}


class LayerPruneEnv(gym.Env[np.ndarray, Any]):
    """Choose a sparsity for each prunable group of a model, one group per step.

    ## Description
    One episode walks the model's prunable groups (coupled channels: a residual stage is one group) in forward
    order. At the last group the plan is applied to a copy of the dense model with the engine's importance
    criterion, BatchNorm is recalibrated, and the plan is scored on the ``val`` split.

    ## Action Space
    ``continuous``: ``Box(-1, 1, (1,))``, mapped linearly to a sparsity in ``[0, max_sparsity]``.
    ``discrete``: ``Discrete(levels)``, sparsity ``i / (levels - 1) * max_sparsity``.
    With ``centre_on_uniform=True`` the middle of either range is instead the uniform sparsity that meets the
    episode's budget (the ``uniform-l1`` baseline's), linear from 0 to it and from it to ``max_sparsity``: a new
    policy starts near the strongest simple plan and learns where to depart from it, at any budget and on any model.
    The kept width is rounded to the budget model's channel step (``granule``: a latency table's profiled step, a
    quarter of the group at most), then clipped. ``max_sparsity`` defaults to 0.9 (AMC kept at least 20% of each
    layer; here per-layer overhead is so large at batch 1 that half the dense latency needs more).
    With ``dynamic_skip=True`` each action also picks the gate threshold of the group's residual block (groups inside
    a block with an identity shortcut): ``Box(-1, 1, (2,))`` (second component mapped to [0, 1]) or
    ``Discrete(levels x len(skip_levels))``. Blocks then run only for inputs whose gate score reaches the threshold;
    the reward uses the gated model's val accuracy and the expected cost (block costs weighted by their execution
    rates on val), and ``info["exec_rate"]`` reports the rates.
    With ``action_mapping="scaled"`` an action instead shifts its group's sparsity from the prior plan (the
    sensitivity plan where the environment has probes, else the uniform plan) by up to ``max_sparsity / 2`` either
    way, and at the episode's end the whole plan is moved to the budget, every group the same fraction of the way to
    ``max_sparsity`` or back to dense (:func:`~pruning_core.baselines.retargeted_plan`): every episode lands on the
    budget and no group is forced by clipping; the zero action is the prior plan.
    With ``action_mapping="clip"`` (the default) and a reward that clips actions (``accuracy``, ``amc-flops``,
    ``residual``), each action is raised to the least sparsity that still lets the remaining groups reach the budget
    at maximum sparsity, so every finished episode meets the budget as the budget model predicts it.
    ``info["sparsity"]`` is the action asked for, ``info["clipped"]`` the one applied.

    ## Observation Space
    ``Box(0, 1, (22,), float32)``, model-agnostic features of the current group:

    | index | feature | meaning |
    |---|---|---|
    | 0 | position | index of the group / (groups - 1) |
    | 1-3 | is_conv, is_depthwise, is_linear | root layer type (one-hot) |
    | 4-5 | log_in_channels, log_out_channels | log2(channels) / 12 |
    | 6 | kernel | kernel size / 7 |
    | 7 | stride | stride / 2 |
    | 8 | log_input_size | log2(input height) / 8 |
    | 9-10 | macs_share, params_share | share of the model's MACs / parameters in the layers the group touches |
    | 11 | cost_share | share of the budget metric (latency on the device, MACs or parameters) |
    | 12 | cost_removed | cost already removed by earlier decisions / dense cost (AMC "reduced") |
    | 13 | cost_removable | cost later groups could still remove at maximum sparsity / dense cost (AMC "rest") |
    | 14 | budget_left | cost still to remove to reach the budget / dense cost (0 when met) |
    | 15 | previous_action | sparsity applied to the previous group / max_sparsity |
    | 16 | skippable | 1 when the group sits inside a residual block with an identity shortcut |
    | 17-21 | importance_cv, _min, _q25, _q75, _max | channel-score statistics, each over the mean, / 4 |
    | 22 | sensitivity_drop | with probes: val lost with the group alone at the uniform sparsity / dense val |
    | 23 | sensitivity_per_cost | with probes: val lost per unit of cost saved / the largest among groups |
    | 24 | sensitivity_rank | with probes: rank of that rate among groups / (groups - 1), 0 cheapest to thin |
    | 25-27 | skip_score_q10, _q50, _q90 | with skip probes: the group's block's gate scores on val, these quantiles |
    | 28 | skip_drop | with skip probes: val lost, block alone skipped for its lowest-scoring half of val / dense val |

    The sensitivity features are there only when the environment is given ``sensitivity`` (``Box(0, 1, (25,))``
    then); the skip features (22-25 without sensitivity probes; 0 at groups outside a gated block) only when a
    dynamic-skip environment is given ``skip_sensitivity``: a threshold ``t`` skips the inputs whose gate score is
    below ``t``, so the quantiles say how often a threshold would skip the block, and ``skip_drop`` what skipping it
    costs.

    ## Rewards
    0 on every step but the last. Then, by ``reward``: ``accuracy`` (val top-1), ``lagrangian``
    (top-1 - lambda * max(0, cost / target - 1), no clipping), ``amc-flops`` (-error * log(MACs)), ``residual``
    (top-1 minus the prior plan's top-1 at the same budget, scored once per budget: the policy's gain over its start).

    ## Starting State
    The first group, nothing pruned. ``reset(seed=...)`` seeds the environment; episodes are deterministic given
    their budget. ``reset(options={"budget": B})`` sets the episode's budget. With ``budget_range=(low, high)`` each
    reset without that option draws the budget uniformly from the range, so one policy learns to answer any budget
    in it (the observation's ``budget_left`` says how much cost is still to remove): that is the policy to apply to
    new models and budgets.

    ## Episode End
    Terminates after the last group. ``info`` then holds ``plan`` (JSON), ``top1``, ``cost``, ``cost_ratio``,
    ``budget``, ``budget_met``, ``macs``, ``params`` and, with a measured device, ``latency_ms_measured``.

    ## Arguments
    ``scorer`` (the engine and the scoring recipe), ``budget_model`` (a layer-wise cost: a latency lookup table or
    analytic profile, MACs or parameters), ``budget`` (fraction of the dense cost, in (0, 1]), ``reward``,
    ``action_mode``, ``max_sparsity``, ``levels``, ``criterion``, ``lagrange``, ``measured`` (the device's measured
    latency model, if it has one), ``measure_final`` (measure each episode's final plan with it), ``budget_range``
    (draw each episode's budget from it), ``centre_on_uniform``, ``sensitivity`` (probes: observation features and
    the prior plan), ``skip_sensitivity`` (skip probes, with ``dynamic_skip``: observation features),
    ``action_mapping`` (``clip`` or ``scaled``), ``aim`` (the fraction of the budget every plan aims at, 1 by default;
    below 1 when plans are then checked by a noisy measurement that aims there too, so that they land inside its band:
    :data:`agents.apply.CHECK_AIM`), ``render_mode`` (``ansi`` or ``rgb_array``).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        scorer: PlanScorer,
        budget_model: LayerwiseCost,
        *,
        budget: float = 0.5,
        reward: str = "accuracy",
        action_mode: str = "continuous",
        max_sparsity: float = 0.9,
        levels: int = DEFAULT_LEVELS,
        criterion: str = "l1",
        lagrange: float = 2.0,
        measured: Any | None = None,
        measure_final: bool = False,
        dynamic_skip: bool = False,
        skip_levels: tuple[float, ...] = (0.0, 0.5, 0.7, 0.9),
        budget_range: tuple[float, float] | None = None,
        centre_on_uniform: bool = False,
        sensitivity: Sensitivity | None = None,
        skip_sensitivity: SkipSensitivity | None = None,
        action_mapping: str = "clip",
        aim: float = 1.0,
        render_mode: str | None = None,
    ) -> None:
        if not 0 < budget <= 1:
            raise PruneGymError(f"budget must be in (0, 1]; got {budget:g}")
        if reward not in REWARDS:
            raise PruneGymError(f"reward must be one of {', '.join(REWARDS)}; got {reward!r}")
        if action_mode not in ("continuous", "discrete"):
            raise PruneGymError(f"action_mode must be continuous or discrete; got {action_mode!r}")
        if not 0 < max_sparsity <= 0.95:
            raise PruneGymError(f"max_sparsity must be in (0, 0.95]; got {max_sparsity:g}")
        if levels < 2:
            raise PruneGymError(f"levels must be >= 2; got {levels}")
        if action_mapping not in ACTION_MAPPINGS:
            raise PruneGymError(f"action_mapping must be one of {', '.join(ACTION_MAPPINGS)}; got {action_mapping!r}")
        if action_mapping == "scaled" and centre_on_uniform:
            raise PruneGymError("centre_on_uniform applies to action_mapping 'clip'; 'scaled' starts from its prior")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise PruneGymError(f"render_mode must be ansi or rgb_array; got {render_mode!r}")
        self.scorer = scorer
        self.engine = scorer.engine
        self.graph = self.engine.graph
        self.groups = self.graph.groups
        self.budget_model = budget_model
        self.budget = budget
        self.aim = checked_aim(aim)
        self.reward_spec = REWARDS[reward]
        self.reward_name = reward
        self.action_mode = action_mode
        self.max_sparsity = max_sparsity
        self.levels = levels
        self.criterion = criterion
        self.lagrange = lagrange
        self.measured = measured
        if dynamic_skip and scorer.gates is None:
            raise PruneGymError("dynamic_skip needs trained gates in the scorer (make_env trains them)")
        if dynamic_skip and not self.graph.blocks:
            raise PruneGymError("dynamic_skip needs residual blocks with identity shortcuts; the model has none")
        if skip_sensitivity is not None and not dynamic_skip:
            raise PruneGymError("skip_sensitivity needs dynamic_skip=True (its features are about skipping blocks)")
        self.dynamic_skip = dynamic_skip
        self.skip_levels = tuple(skip_levels)
        self.skip_sensitivity = skip_sensitivity
        self.measure_final = measure_final and measured is not None
        self.render_mode = render_mode

        self._cost_memo: dict[tuple[str, int, int], float] = {}
        self._layers = list(self.graph.layer_channels())
        self._full = {g.name: g.channels for g in self.groups}
        # Kept widths are multiples of the budget model's granule (a lookup table's channel step; 1 for MACs).
        self.granule = budget_model.granule
        self._widths_allowed = {g.name: group_widths(g, self.granule, max_sparsity) for g in self.groups}
        self._minimum = {name: widths[0] for name, widths in self._widths_allowed.items()}
        self.dense_cost = self._cost(self._full)
        self._floor = self._cost(self._minimum)
        self.sensitivity = sensitivity
        self.action_mapping = action_mapping
        self._prior: dict[float, tuple[PruningPlan, float | None]] = {}
        self.centre_on_uniform = centre_on_uniform
        self.centre_sparsity = max_sparsity / 2
        """Sparsity in the middle of the action range: the budget's uniform sparsity when centred on uniform."""
        self.budget_range = None if budget_range is None else checked_budget_range(budget_range)
        if self.budget_range is not None:
            self._check_feasible(self.budget_range[0])
            low, high = self.budget_range
            budget = budget if low <= budget <= high else low  # until the first reset draws one
        self.set_budget(budget)
        self._affected = {
            g.name: [
                n
                for n in self._layers
                if self.graph.out_group.get(n) == g.name or g.name in self.graph.in_groups.get(n, {})
            ]
            for g in self.groups
        }
        self._static = self._static_features()

        # Dynamic skipping adds a second decision per step: the gate threshold of the group's residual block
        # (used at groups inside a skippable block; elsewhere there is no block to gate).
        if action_mode == "continuous":
            self.action_space: spaces.Space[Any] = spaces.Box(-1.0, 1.0, (2 if dynamic_skip else 1,), np.float32)
        else:
            self.action_space = spaces.Discrete(levels * (len(self.skip_levels) if dynamic_skip else 1))
        self.observation_space = spaces.Box(0.0, 1.0, (self._static.shape[1],), np.float32)
        self._step = 0
        self._kept: dict[str, int] = {}
        self._sparsity: dict[str, float] = {}
        self._previous = 0.0
        self._thresholds: dict[str, float] = {}
        self.last_info: dict[str, Any] = {}

    def _check_feasible(self, budget: float) -> None:
        if self._floor > budget * self.aim * self.dense_cost:
            raise BudgetInfeasibleError(
                f"budget {budget:g} is below what max_sparsity {self.max_sparsity:g} reaches "
                f"({self._floor / self.dense_cost:.3f} of the dense cost); raise the budget or max_sparsity"
            )

    def set_budget(self, budget: float) -> None:
        """Aim at ``budget`` (a fraction of the dense cost; the plan's cost at most ``aim`` of it) from the next
        decision on; normally set at reset."""
        if not 0 < budget <= 1:
            raise PruneGymError(f"budget must be in (0, 1]; got {budget:g}")
        self._check_feasible(budget)
        self.budget = float(budget)
        self.target = self.budget * self.aim * self.dense_cost
        if self.centre_on_uniform:
            self.centre_sparsity = uniform_sparsity(self.budget_problem())

    # Costs -------------------------------------------------------------------------------------------------------
    def _layer_cost(self, name: str, widths: dict[str, int]) -> float:
        c_in, c_out = self.graph.layer_width(name, widths)
        key = (name, c_in, c_out)
        if key not in self._cost_memo:
            self._cost_memo[key] = self.budget_model.layer_cost(self.graph, name, c_in, c_out)
        return self._cost_memo[key]

    def _cost(self, widths: dict[str, int]) -> float:
        return self.budget_model.combine(sum(self._layer_cost(n, widths) for n in self._layers))

    def _widths(self, rest: dict[str, int]) -> dict[str, int]:
        """Decided groups at their kept widths, the others from ``rest``."""
        return {**rest, **self._kept}

    def _static_features(self) -> np.ndarray:
        stats = self.engine.importance_stats(self.criterion)
        total_params = sum(self.graph.layers[n].params for n in self._layers)
        dense_layer = {n: self._layer_cost(n, self._full) for n in self._layers}
        total_layer = sum(dense_layer.values())
        rows = []
        for g in self.groups:
            s = stats[g.name]
            rows.append(
                [
                    g.index / max(1, len(self.groups) - 1),
                    float(g.layer_type is LayerType.CONV),
                    float(g.layer_type is LayerType.DEPTHWISE_CONV),
                    float(g.layer_type is LayerType.LINEAR),
                    math.log2(max(1, g.in_channels)) / 12,
                    math.log2(max(1, g.channels)) / 12,
                    g.kernel / 7,
                    g.stride / 2,
                    math.log2(max(1, g.input_hw[0])) / 8,
                    g.macs / self.graph.total_macs,
                    g.params / max(1, total_params),
                    sum(dense_layer[n] for n in self._affected[g.name]) / max(total_layer, 1e-12),
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    float(g.block is not None),
                    s.cv / 4,
                    s.min / 4,
                    s.q25 / 4,
                    s.q75 / 4,
                    s.max / 4,
                ]
            )
        if self.sensitivity is not None:
            missing = [g.name for g in self.groups if g.name not in self.sensitivity.probes]
            if missing:
                raise PruneGymError(f"expected sensitivity probes of every group; got none for {missing[:3]}")
            features = self.sensitivity.features()
            for row, g in zip(rows, self.groups, strict=True):
                row.extend(features[g.name])
        if self.skip_sensitivity is not None:
            skip = self.skip_sensitivity.features()
            missing = sorted({g.block for g in self.groups if g.block is not None} - set(skip))
            if missing:
                raise PruneGymError(f"expected skip probes of every gated block; got none for {missing[:3]}")
            for row, g in zip(rows, self.groups, strict=True):
                row.extend(skip[g.block] if g.block is not None else (0.0,) * len(SKIP_FEATURES))
        return np.clip(np.asarray(rows, dtype=np.float32), 0.0, 1.0)

    @property
    def probe_evaluations(self) -> int:
        """Plans scored to make the environment's probes: sensitivity, and skip probes with dynamic skipping."""
        return sum(p.evaluations for p in (self.sensitivity, self.skip_sensitivity) if p is not None)

    @property
    def prior_plan(self) -> PruningPlan:
        """The plan the ``scaled`` action mapping starts from at the current budget: the sensitivity plan where the
        environment has probes, else the uniform plan (cached per budget)."""
        if self.budget not in self._prior:
            problem = self.budget_problem()
            if self.sensitivity is not None:
                plan = sensitivity_plan(problem, self.sensitivity, criterion=self.criterion)
            else:
                sparsity = uniform_sparsity(problem)
                kept = self._filled({g.name: group_kept(g, sparsity, self.granule) for g in self.groups})
                plan = PruningPlan(
                    sparsity={g.name: 1 - kept[g.name] / g.channels for g in self.groups},
                    criterion=self.criterion,
                    round_to=self.granule,
                )
            self._prior[self.budget] = (plan, None)
        return self._prior[self.budget][0]

    def prior_top1(self) -> float:
        """Val top-1 of :attr:`prior_plan` (scored once per budget)."""
        plan = self.prior_plan
        top1 = self._prior[self.budget][1]
        if top1 is None:
            top1 = self.scorer.score(plan).top1
            self._prior[self.budget] = (plan, top1)
        return top1

    def _observation(self) -> np.ndarray:
        obs = self._static[min(self._step, len(self.groups) - 1)].copy()
        now = self._cost(self._widths(self._full))
        floor = self._cost(self._widths(self._minimum))
        obs[12] = (self.dense_cost - now) / self.dense_cost
        obs[13] = (now - floor) / self.dense_cost
        obs[14] = max(0.0, now - self.target) / self.dense_cost
        obs[15] = self._previous / self.max_sparsity
        return np.clip(obs, 0.0, 1.0)

    # Gymnasium API -----------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at the first group.

        Args:
            seed: Seed of the environment's generator (which draws the budget of a ``budget_range``).
            options: ``{"budget": B}`` sets this episode's budget; otherwise an environment with a
                ``budget_range`` draws it uniformly from the range, and one without keeps its budget.
        """
        super().reset(seed=seed)
        budget = (options or {}).get("budget")
        if budget is None and self.budget_range is not None:
            budget = float(self.np_random.uniform(*self.budget_range))
        if budget is not None:
            self.set_budget(float(budget))
        self._step = 0
        self._kept = {}
        self._sparsity = {}
        self._previous = 0.0
        self._thresholds = {}
        self.last_info = {}
        return self._observation(), {"group": self.groups[0].name, "budget": self.budget}

    def _sparsity_at(self, fraction: float) -> float:
        """Sparsity at ``fraction`` in [0, 1] of the action range: linear from 0 to :attr:`centre_sparsity` on the
        lower half and from it to ``max_sparsity`` on the upper half (one line when the centre is the midpoint)."""
        centre = self.centre_sparsity
        if fraction <= 0.5:
            return 2.0 * fraction * centre
        return centre + (2.0 * fraction - 1.0) * (self.max_sparsity - centre)

    def decode_action(self, action: Any) -> tuple[float, float]:
        """The sparsity an action asks for (before clipping, or before the ``scaled`` mapping moves the whole plan to
        the budget) and its skip threshold (0 without dynamic skip)."""
        if self.action_mode == "continuous":
            values = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
            threshold = (values[1] + 1.0) / 2.0 if self.dynamic_skip else 0.0
            return self._sparsity_from((values[0] + 1.0) / 2.0), float(threshold)
        index = int(np.asarray(action).reshape(-1)[0])
        if not 0 <= index < self.action_space.n:  # type: ignore[attr-defined]
            raise PruneGymError(f"discrete action must be in [0, {self.action_space.n - 1}]; got {index}")  # type: ignore[attr-defined]
        level, skip = divmod(index, len(self.skip_levels)) if self.dynamic_skip else (index, 0)
        return self._sparsity_from(level / (self.levels - 1)), self.skip_levels[skip] if self.dynamic_skip else 0.0

    def _sparsity_from(self, fraction: float) -> float:
        """The sparsity at ``fraction`` in [0, 1] of the action range, for the current group."""
        if self.action_mapping == "clip":
            return self._sparsity_at(fraction)
        group = self.groups[min(self._step, len(self.groups) - 1)]
        start = self.prior_plan.sparsity.get(group.name, 0.0)
        return float(np.clip(start + (2.0 * fraction - 1.0) * self.max_sparsity / 2, 0.0, self.max_sparsity))

    def action_to_sparsity(self, action: Any) -> float:
        """The sparsity an action asks for (before clipping)."""
        return self.decode_action(action)[0]

    def _clip(self, group: str, wanted: int) -> int:
        """Most channels the group may keep so the rest can still meet the budget at maximum sparsity."""
        widths = self._widths(self._minimum)
        fixed = sum(self._layer_cost(n, widths) for n in self._layers if n not in self._affected[group])

        def total(kept: int) -> float:
            widths[group] = kept
            return self.budget_model.combine(fixed + sum(self._layer_cost(n, widths) for n in self._affected[group]))

        return widest_within(self._widths_allowed[group], wanted, lambda kept: total(kept) <= self.target)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._step >= len(self.groups):
            raise PruneGymError("episode is over; call reset() first")
        group = self.groups[self._step]
        wanted_sparsity, threshold = self.decode_action(action)
        if self.dynamic_skip and group.block is not None:
            # The budget is clipped as if the block always ran: skipping can only lower the expected cost.
            self._thresholds[group.block] = threshold
        kept = group_kept(group, wanted_sparsity, self.granule)
        if self.reward_spec.clips_actions and self.action_mapping == "clip":
            kept = self._clip(group.name, kept)
        applied = 1.0 - kept / group.channels if kept < group.channels else 0.0
        self._kept[group.name] = kept
        self._sparsity[group.name] = applied
        self._previous = applied
        self._step += 1
        info: dict[str, Any] = {"group": group.name, "sparsity": wanted_sparsity, "clipped": applied, "kept": kept}
        if self.dynamic_skip and group.block is not None:
            info["skip_threshold"] = threshold
        if self._step < len(self.groups):
            return self._observation(), 0.0, False, False, info
        info.update(self._finish())
        self.last_info = info
        return self._observation(), float(info["reward"]), True, False, info

    def _finish(self) -> dict[str, Any]:
        moved = 0.0
        if self.action_mapping == "scaled":  # the whole plan moved to the budget
            final, moved = retargeted_plan(self.budget_problem(), self.plan, self.target)
            self._kept = self._filled(
                {g.name: group_kept(g, final.sparsity[g.name], self.granule) for g in self.groups}
            )
            self._sparsity = {g.name: 1.0 - self._kept[g.name] / g.channels for g in self.groups}
        plan = self.plan
        score = self.scorer.score(plan)
        cost = self.budget_model.expected(self.graph, self._kept, score.exec_rate)
        prior = self.prior_top1() if self.reward_name == "residual" else 0.0
        context = RewardContext(top1=score.top1, cost_ratio=cost / self.target, macs=score.macs, prior_top1=prior)
        info: dict[str, Any] = {
            "plan": plan.to_json(),
            "top1": score.top1,
            "cost": cost,
            "cost_ratio": cost / self.target,
            "dense_cost": self.dense_cost,
            "budget": self.budget,
            "budget_met": cost <= self.target * (1 + 1e-9),
            "macs": score.macs,
            "params": score.params,
            "score_seconds": score.seconds,
            "reward": self.reward_spec.fn(context, self.lagrange),
        }
        if self.action_mapping == "scaled":
            info["scaled_by"] = moved
        if self.reward_name == "residual":
            info["prior_top1"] = prior
        if self.dynamic_skip:
            info["exec_rate"] = score.exec_rate
            info["cost_static"] = self._cost(self._kept)
        if self.measure_final:
            pruned = self.engine.apply(plan)
            info["latency_ms_measured"] = self.measured.predict(pruned.model, self.graph.input_shape)
        return info

    def _filled(self, kept: dict[str, int]) -> dict[str, int]:
        """``kept`` with groups given their next wider width while the plan stays within the target, the cheapest
        step first: rounded widths leave a moved plan up to a step of a wide group under its target, budget it may
        spend."""
        kept = dict(kept)
        while True:
            now = self._cost(kept)
            steps = []
            for g in self.groups:
                wider = [w for w in self._widths_allowed[g.name] if w > kept[g.name]]
                if wider:
                    cost = self._cost({**kept, g.name: wider[0]})
                    if cost <= self.target * (1 + 1e-9):
                        steps.append((cost - now, g.index, g.name, wider[0]))
            if not steps:
                return kept
            _, _, name, width = min(steps)
            kept[name] = width

    def budget_problem(self, target: float | None = None) -> BudgetProblem:
        """The environment's budget as a problem for the heuristic baselines: same engine, cost, target and
        maximum sparsity (so the agent and the baselines play by the same rules)."""
        return BudgetProblem(
            self.engine, self.budget_model, self.target if target is None else target, self.max_sparsity
        )

    @property
    def plan(self) -> PruningPlan:
        """The plan decided so far."""
        return PruningPlan(
            sparsity=self._sparsity, criterion=self.criterion, skip_thresholds=self._thresholds, round_to=self.granule
        )

    def render(self) -> str | np.ndarray | None:  # type: ignore[override]
        if self.render_mode == "ansi":
            lines = [f"{'group':<28} {'channels':>8} {'kept':>6} {'sparsity':>8}"]
            for g in self.groups:
                kept = self._kept.get(g.name)
                lines.append(
                    f"{g.name:<28} {g.channels:>8} {kept if kept is not None else '-':>6} "
                    f"{self._sparsity.get(g.name, 0.0):>8.2f}"
                )
            return "\n".join(lines)
        if self.render_mode == "rgb_array":
            return self._draw()
        return None

    def _draw(self) -> np.ndarray:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(4, len(self.groups) * 0.25), 2.5), dpi=80)
        values = [self._sparsity.get(g.name, 0.0) for g in self.groups]
        ax.bar(range(len(values)), values, color="tab:blue")
        ax.set_ylim(0, 1)
        ax.set_xlabel("group")
        ax.set_ylabel("sparsity")
        fig.tight_layout()
        fig.canvas.draw()
        image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.close(fig)
        return image
