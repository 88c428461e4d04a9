"""Training an agent per target device with stable-baselines3, as it is; the search keeps its best plan.

The product of a search is twofold (AMC keeps the best episode): the trained policy and the best plan found. Both are
written to the run folder after every episode, atomically, with the resolved configuration, so a killed run loses at
most the episode in flight and ``resume=True`` continues it.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from agents.policy_io import save_policy
from envs.layer_prune import ACTION_MAPPINGS, DEFAULT_LEVELS, checked_aim, checked_budget_range
from envs.target import Target
from hardware_models.measure import MEASURED_DEVICES
from pruning_core.data import atomic_write_bytes
from pruning_core.errors import CheckpointError, PruneGymError
from pruning_core.executor import Executor, RayExecutor
from pruning_core.finalists import Finalists
from pruning_core.models import model_slug
from pruning_core.plan import PruningPlan
from pruning_core.scoring import DEFAULT_FINETUNE_STEPS

TARGET_FIELDS = tuple(f.name for f in fields(Target))


@dataclass(frozen=True)
class AlgoSpec:
    """How one stable-baselines3 algorithm is used here."""

    cls: type[BaseAlgorithm]
    action_mode: str
    off_policy: bool


ALGOS: dict[str, AlgoSpec] = {
    "dqn": AlgoSpec(DQN, "discrete", True),
    "ppo": AlgoSpec(PPO, "continuous", False),
    "sac": AlgoSpec(SAC, "continuous", True),
    "td3": AlgoSpec(TD3, "continuous", True),
    "ddpg": AlgoSpec(DDPG, "continuous", True),
}


FINALISTS_KEPT = 16
"""Best distinct plans within the budget a search at one budget keeps (``SearchState.finalists``), for a re-rank by a
costlier score (:mod:`pruning_core.finalists`)."""

DQN_EXPLORATION_FRACTION = 0.5
"""Share of a DQN search over which its epsilon falls linearly from 1 to 0.05 (SB3's ``exploration_fraction``), counted
in the search's own steps: a search that explores at random to its end never exploits what it learned."""


@dataclass(frozen=True)
class TrainRunConfig:
    """Everything that defines a search run; saved as ``config.json`` in the run folder."""

    target: Target = field(default_factory=Target)
    """The model, its checkpoint and data, the device and the budget there (``budget`` unused with
    ``budget_range``)."""
    budget_range: tuple[float, float] | None = None
    """Draw each episode's budget uniformly from ``(low, high)`` instead: a policy for any budget in the range, to
    apply to new models. Plans at different budgets do not compare, so such a run keeps no best plan."""
    reward: str = "accuracy"
    """accuracy, lagrangian or amc-flops."""
    algo: str = "ppo"
    """dqn, ppo, sac, td3 or ddpg."""
    episodes: int = 100
    """Episodes in all, warm-up included."""
    warmup_episodes: int = 25
    """Random episodes before learning (off-policy algorithms; AMC used 100 of 400-800)."""
    seed: int = 0
    """Seed of the agent and of the environments."""
    n_envs: int = 1
    """Environments in parallel: processes (SubprocVecEnv) when > 1, or Ray actors (``train_agent``'s executor)."""
    val_images: int = 1000
    """Val images a plan is scored on."""
    bn_batches: int = 10
    """BN recalibration batches in the score."""
    finetune_steps: int = DEFAULT_FINETUNE_STEPS
    """Short fine-tune steps in the score."""
    max_sparsity: float = 0.9
    """Largest sparsity of one group."""
    criterion: str = "l1"
    """Channel importance criterion."""
    dynamic_skip: bool = False
    """Also decide a gate threshold per residual block (dynamic skipping)."""
    centre_on_uniform: bool = False
    """Centre the action range on the uniform sparsity that meets the episode's budget."""
    sensitivity: bool = False
    """Probe every group first (two plans each, counted in the run's evaluations) and give the policy what they
    measure: three observation features, and the sensitivity plan as the ``scaled`` mapping's starting point. With
    ``dynamic_skip``, each gated block is also skipped for half of val (one plan each): four more features."""
    action_mapping: str = "clip"
    """``clip`` (AMC's clipping towards the budget) or ``scaled`` (shifts from the prior plan, the whole plan then
    moved to the budget; see ``LayerPruneEnv``)."""
    calibrate_latency: bool | str = False
    """On a measured device, correct the lookup table by timing a few plans beside the dense model before the search
    (a path: the correction saved there is shared; see ``make_env``)."""
    episodes_per_update: int = 4
    """PPO: episodes per rollout (per update of the policy)."""
    learning_rate: float | None = None
    """PPO's learning rate (None: 3e-4)."""
    levels: int = DEFAULT_LEVELS
    """Sparsity levels of a discrete agent's action (DQN), from 0 to ``max_sparsity``; centred on uniform, 3 levels are
    keep, uniform and thinnest."""
    action_std: float | None = None
    """Initial exploration of the continuous algorithms, in units of the action range [-1, 1]: the policy's standard
    deviation (PPO; SAC's before its tanh squashing, so roughly) or the action noise (TD3, DDPG). None: 1.0 for PPO
    and SAC (Stable-Baselines3's default), 0.5 for TD3 and DDPG (AMC's wide noise). Centred on uniform, a narrower
    start (0.3-0.5) searches near that plan."""
    aim: float = 1.0
    """The fraction of the budget every episode's plan aims at (see ``LayerPruneEnv``): below 1 where the plan is then
    checked by measurement, which aims at :data:`agents.apply.CHECK_AIM` of the budget."""

    def __post_init__(self) -> None:
        if isinstance(self.target, dict):  # read back from config.json
            object.__setattr__(self, "target", Target(**self.target))
        if not isinstance(self.target, Target):
            raise PruneGymError(f"target must be an envs.Target; got {type(self.target).__name__}")
        if self.algo not in ALGOS:
            raise PruneGymError(f"algo must be one of {', '.join(ALGOS)}; got {self.algo!r}")
        if self.episodes < 1 or self.n_envs < 1:
            raise PruneGymError(f"episodes and n_envs must be >= 1; got {self.episodes}, {self.n_envs}")
        if self.action_std is not None and not self.action_std > 0:
            raise PruneGymError(f"action_std must be > 0; got {self.action_std}")
        if self.action_std is not None and ALGOS[self.algo].action_mode != "continuous":
            raise PruneGymError(f"action_std applies to continuous algorithms; got algo {self.algo!r}")
        if self.levels < 2:
            raise PruneGymError(f"levels must be >= 2; got {self.levels}")
        if self.action_mapping not in ACTION_MAPPINGS:
            raise PruneGymError(
                f"action_mapping must be one of {', '.join(ACTION_MAPPINGS)}; got {self.action_mapping!r}"
            )
        checked_aim(self.aim)
        if self.episodes_per_update < 1:
            raise PruneGymError(f"episodes_per_update must be >= 1; got {self.episodes_per_update}")
        if self.levels != DEFAULT_LEVELS and ALGOS[self.algo].action_mode != "discrete":
            raise PruneGymError(f"levels applies to discrete algorithms; got algo {self.algo!r}")
        if self.budget_range is not None:  # a list when read back from config.json
            object.__setattr__(self, "budget_range", checked_budget_range(self.budget_range))

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainRunConfig:
        """The configuration saved in a run's ``config.json`` (a setting added since takes its default; runs saved
        before the target was one field keep its parts at the top level)."""
        saved = dict(saved)
        flat = {name: saved.pop(name) for name in TARGET_FIELDS if name in saved}
        if flat:
            saved["target"] = Target(**flat)
        return cls(**saved)

    def env_kwargs(self) -> dict[str, Any]:
        return {
            **self.target.as_kwargs(),
            "reward": self.reward,
            "action_mode": ALGOS[self.algo].action_mode,
            "max_sparsity": self.max_sparsity,
            "val_images": self.val_images,
            "bn_batches": self.bn_batches,
            "finetune_steps": self.finetune_steps,
            "criterion": self.criterion,
            "dynamic_skip": self.dynamic_skip,
            "centre_on_uniform": self.centre_on_uniform,
            "levels": self.levels,
            "sensitivity": self.sensitivity,
            "action_mapping": self.action_mapping,
            "calibrate_latency": self.calibrate_latency,
            **({"budget_range": self.budget_range} if self.budget_range is not None else {}),
            **({"aim": self.aim} if self.aim != 1.0 else {}),
        }


def _check_same_run(run: Path, saved: TrainRunConfig, given: TrainRunConfig) -> None:
    """Refuse to resume a run started with another configuration than ``given`` (its episode total aside).

    Raises:
        PruneGymError: A setting differs, for example the scoring recipe or DQN's levels.
    """
    for name in (f.name for f in fields(TrainRunConfig) if f.name != "episodes"):
        if getattr(saved, name) != getattr(given, name):
            raise PruneGymError(
                f"expected the run in {run} to have been started with {name}={getattr(given, name)!r}; "
                f"got {name}={getattr(saved, name)!r} (choose another folder)"
            )


def run_name(config: TrainRunConfig) -> str:
    """``{model}__{device}__{algo}__seed{seed}__{timestamp}``."""
    device = config.target.device.replace("/", "_").replace(":", "_")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{model_slug(config.target.model)}__{device}__{config.algo}__seed{config.seed}__{stamp}"


@dataclass
class SearchState:
    """Progress of a search, saved after every episode."""

    episodes: int = 0
    best_reward: float = -float("inf")
    best_top1: float = 0.0
    best_episode: int = -1
    best_plan: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time spent searching, summed over resumed runs (pauses of the process included)."""
    cpu_seconds: float = 0.0
    """CPU time of this process spent searching (all its threads), summed over resumed runs; a paused process adds
    none. Environments in subprocesses (``n_envs > 1``) are not counted."""
    probe_evaluations: int = 0
    """Plans scored before the first episode: the sensitivity probes (and skip probes with dynamic skipping) and,
    with the ``scaled`` mapping at one budget, the prior plan (the first candidate for the best plan)."""
    finalists: list[list[Any]] = field(default_factory=list)
    """At one budget, the ``FINALISTS_KEPT`` best distinct plans that met it, by reward, best first:
    ``[[reward, plan JSON], ...]`` (:meth:`Finalists.to_list`; the prior plan among them)."""

    def kept_finalists(self) -> Finalists:
        """:attr:`finalists` as a :class:`~pruning_core.finalists.Finalists`."""
        return Finalists.from_list(FINALISTS_KEPT, self.finalists)

    def offer(self, plan: str, reward: float) -> None:
        """Offer a plan that met the budget to :attr:`finalists`."""
        kept = self.kept_finalists()
        kept.offer(plan, reward)
        self.finalists = kept.to_list()

    @property
    def evaluations(self) -> int:
        """Every plan the search scored: its episodes and what it scored before them."""
        return self.episodes + self.probe_evaluations


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def _save_via_file(path: Path, save: Callable[[io.BufferedIOBase], None]) -> None:
    """Run an SB3 ``save(file)`` into a temporary file renamed onto ``path`` (SB3 takes open files as well as paths)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            save(handle)

    atomic_write_bytes(path, write)


class SearchCallback(BaseCallback):
    """Per episode: log to TensorBoard, keep the best plan, save the run, stop at the episode budget."""

    def __init__(
        self,
        run: Path,
        config: TrainRunConfig,
        state: SearchState,
        group_names: list[str],
        on_episode: Callable[[SearchState], None] | None = None,
    ) -> None:
        super().__init__()
        self.run, self.config, self.state, self.group_names = run, config, state, group_names
        self.on_episode = on_episode
        self._clock = (time.perf_counter(), time.process_time())

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "top1" not in info:
                continue
            self._record(info)
            if self.state.episodes >= self.config.episodes:
                return False
        return True

    def _record(self, info: dict[str, Any]) -> None:
        state = self.state
        state.episodes += 1
        wall, cpu = time.perf_counter(), time.process_time()
        state.seconds += wall - self._clock[0]
        state.cpu_seconds += cpu - self._clock[1]
        self._clock = (wall, cpu)
        reward = float(info["reward"])
        plan = json.loads(info["plan"])
        row = {
            "episode": state.episodes,
            "reward": reward,
            "top1": info["top1"],
            "cost_ratio": info["cost_ratio"],
            "macs": info["macs"],
            "budget": info["budget"],
            "budget_met": float(info["budget_met"]),
            "seconds": state.seconds,
        }
        state.history.append(row)
        if self.config.budget_range is None:  # plans at different budgets do not compare: no best plan then
            if reward > state.best_reward:
                state.best_reward, state.best_top1 = reward, float(info["top1"])
                state.best_episode, state.best_plan = state.episodes, info["plan"]
                _write_json(self.run / "best_plan.json", plan)
            if info["budget_met"]:
                state.offer(info["plan"], reward)
            self.logger.record("accuracy/best_val_top1", state.best_top1)
        for key, value in (
            ("episode/reward", reward),
            ("accuracy/val_top1", info["top1"]),
            ("latency/budget", info["budget"]),
            ("latency/cost_ratio", info["cost_ratio"]),
            ("latency/budget_met", float(info["budget_met"])),
            ("prune/macs", info["macs"]),
            ("prune/params", info["params"]),
        ):
            self.logger.record(key, value)
        for name in self.group_names:
            self.logger.record(f"prune/sparsity/{name}", plan["sparsity"].get(name, 0.0))
        self.logger.dump(state.episodes)
        # SB3 writes in place; through a temporary file and a rename, a kill mid-save leaves the last episode's files
        _save_via_file(self.run / "model.zip", self.model.save)
        if ALGOS[self.config.algo].off_policy:
            _save_via_file(self.run / "replay_buffer.pkl", self.model.save_replay_buffer)  # type: ignore[attr-defined]
        save_policy(self.run, self.model, algo=self.config.algo, env_settings=self.config.env_kwargs())
        _write_json(self.run / "search_state.json", asdict(state))
        if self.on_episode is not None:
            self.on_episode(state)


def _make_vec_env(config: TrainRunConfig, settings: dict[str, Any], executor: Executor | None, threads: int) -> VecEnv:
    """The run's environments: Ray actors with a Ray executor (:class:`~agents.ray_envs.RayVecEnv`), else processes
    (``SubprocVecEnv``) when there are several, else this process. Each environment runs with ``threads`` torch
    threads, so that a seed gives the same episodes wherever its environments run."""
    from stable_baselines3.common.monitor import Monitor

    from envs.factory import make_env

    def factory(rank: int) -> Callable[[], Any]:
        def build() -> Any:
            torch.set_num_threads(threads)
            env = Monitor(make_env(**settings, seed=config.seed + rank))
            env.reset(seed=config.seed + rank)
            return env

        return build

    builders = [factory(i) for i in range(config.n_envs)]
    if isinstance(executor, RayExecutor):
        from agents.ray_envs import RayVecEnv

        return RayVecEnv(builders, executor)
    return SubprocVecEnv(builders) if config.n_envs > 1 else DummyVecEnv(builders)


def _new_model(config: TrainRunConfig, env: VecEnv, steps_per_episode: int, run: Path) -> BaseAlgorithm:
    spec = ALGOS[config.algo]
    kwargs: dict[str, Any] = {
        "seed": config.seed,
        "verbose": 0,
        "tensorboard_log": None,
        "device": "cpu",
        "policy_kwargs": {"net_arch": [64, 64]},
    }
    if spec.off_policy:
        kwargs.update(
            learning_starts=config.warmup_episodes * steps_per_episode,
            # the whole search fits (no transition is evicted) and no more: the buffer is saved after every episode
            # for resuming, and a preallocated 100,000 transitions made that file about 19 MB
            buffer_size=min(100_000, (config.episodes + 10) * steps_per_episode),
            batch_size=64,
            train_freq=1,
            gradient_steps=1,
            learning_rate=1e-3,
        )
    if config.algo == "dqn":
        kwargs.update(
            exploration_fraction=DQN_EXPLORATION_FRACTION,
            exploration_final_eps=0.05,
            target_update_interval=max(1, steps_per_episode * 5),
        )
    if config.algo in ("td3", "ddpg"):
        sigma = 0.5 if config.action_std is None else config.action_std  # AMC: wide noise
        kwargs["action_noise"] = NormalActionNoise(np.zeros(1), sigma * np.ones(1))
    if config.algo in ("ppo", "sac") and config.action_std is not None:
        kwargs["policy_kwargs"]["log_std_init"] = float(np.log(config.action_std))
    if config.algo == "ppo":
        n_steps = max(steps_per_episode * config.episodes_per_update // config.n_envs, 8)
        kwargs.update(
            n_steps=n_steps,
            # the largest divisor of the rollout not above 64 (SB3 warns of a truncated last mini-batch otherwise)
            batch_size=max(d for d in range(1, 65) if (n_steps * config.n_envs) % d == 0),
            n_epochs=10,
            learning_rate=3e-4 if config.learning_rate is None else config.learning_rate,
            gamma=1.0,
            ent_coef=0.01,
        )
    return spec.cls("MlpPolicy", env, **kwargs)


@dataclass(frozen=True)
class RunResult:
    """What a finished (or stopped) search produced."""

    run: Path
    state: SearchState
    seconds: float

    def state_plan(self) -> PruningPlan:
        """The best plan the search found."""
        if self.state.best_plan is None:
            raise PruneGymError(
                f"run {self.run} has no best plan: it has not finished an episode, or it was trained over a budget "
                "range (it keeps a policy: apply it at a budget)"
            )
        return PruningPlan.from_json(self.state.best_plan)


def train_agent(
    config: TrainRunConfig | None,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    episodes: int | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    env_settings: dict[str, Any] | None = None,
) -> RunResult:
    """Train an agent until ``config.episodes`` episodes have been scored.

    Args:
        config: The run's configuration. On resume the saved one is used; one given as well must match it in
            everything but ``episodes``.
        out: Run folder.
        resume: Continue the run in ``out`` from its last saved episode (loads SB3's zip: trusted runs only).
        episodes: On resume, a new episode total (default: the saved one).
        progress: Show a progress bar over episodes with the best accuracy so far.
        executor: Where the environments run: a :class:`~pruning_core.executor.RayExecutor` puts each on a Ray actor
            (``executor.threads`` torch threads each); None or the local executor, in processes of this machine
            (torch's threads of this process each). The caller closes it. The same seed and threads give the same
            episodes either way.
        env_settings: The environments' settings as :func:`prepare_env_settings` made them for this run elsewhere
            (this process on a Ray worker: the lookup table and correction made by the driver, nothing timed
            here); None: made here.
    """
    from stable_baselines3.common.logger import configure
    from tqdm import tqdm

    run = Path(out)
    state = SearchState()
    if resume:
        saved = run / "config.json"
        if not saved.is_file() or not (run / "model.zip").is_file():
            raise CheckpointError(f"nothing to resume in {run}: config.json or model.zip is missing")
        saved_config = TrainRunConfig.from_dict(json.loads(saved.read_text()))
        if config is not None:
            _check_same_run(run, saved_config, config)
        config = saved_config
        if episodes is not None:
            config = replace(config, episodes=episodes)
            _write_json(saved, asdict(config))
        state = SearchState(**json.loads((run / "search_state.json").read_text()))
        if state.episodes >= config.episodes:  # complete: no environment to build, no empty log to open
            return RunResult(run, state, 0.0)
    else:
        if config is None:
            raise PruneGymError("a new run needs a configuration")
        if (run / "model.zip").exists():
            raise PruneGymError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
        run.mkdir(parents=True, exist_ok=True)
        _write_json(run / "config.json", asdict(config))
    threads = executor.threads if isinstance(executor, RayExecutor) else torch.get_num_threads()
    if env_settings is None:
        elsewhere = (executor is not None and executor.remote) or config.n_envs > 1
        env_settings = prepare_env_settings(config, run, progress=progress) if elsewhere else config.env_kwargs()
    env = _make_vec_env(config, env_settings, executor, threads)
    steps_per_episode = len(env.get_attr("groups")[0])
    group_names = [g.name for g in env.get_attr("groups")[0]]
    if resume:
        model = ALGOS[config.algo].cls.load(run / "model.zip", env=env, device="cpu")
        if ALGOS[config.algo].off_policy and (run / "replay_buffer.pkl").exists():
            model.load_replay_buffer(run / "replay_buffer.pkl")  # type: ignore[attr-defined]
    else:
        model = _new_model(config, env, steps_per_episode, run)
        _score_before_episodes(run, config, env, state)
    if resume:
        _keep_progress_log(run / "tb", state.episodes)
    model.set_logger(configure(str(run / "tb"), ["tensorboard", "csv"]))
    if not resume:
        _log_hparams(run, config)
    bar = tqdm(
        total=config.episodes,
        initial=state.episodes,
        desc=f"{config.algo} search",
        unit="episode",
        disable=not progress,
    )

    def update_bar(st: SearchState) -> None:
        bar.update(1)
        if config.budget_range is None:
            bar.set_postfix(best_val_top1=f"{st.best_top1:.4f}", at=st.best_episode)
        else:  # no best plan over a budget range: show the last episode
            bar.set_postfix(val_top1=f"{st.history[-1]['top1']:.4f}", budget=f"{st.history[-1]['budget']:.2f}")

    callback = SearchCallback(run, config, state, group_names, on_episode=update_bar)
    start = time.perf_counter()
    remaining = config.episodes - state.episodes
    try:
        if remaining > 0:
            # Episodes are counted by the callback, which stops training. The step total is the search's own (with
            # two episodes to spare): DQN's exploration decays over a fraction of it, and a resume adds the steps
            # done.
            model.learn(
                total_timesteps=(remaining + 2 * config.n_envs) * steps_per_episode,
                callback=callback,
                reset_num_timesteps=not resume,
                progress_bar=False,
            )
    finally:  # the environments' processes or Ray actors go, also when the search fails or is interrupted
        bar.close()
        env.close()
    return RunResult(run, state, time.perf_counter() - start)


def prepare_env_settings(
    config: TrainRunConfig, run: str | os.PathLike[str], *, progress: bool = False
) -> dict[str, Any]:
    """The settings (``make_env``'s) of a run's environments that run elsewhere: in other processes, on Ray actors or
    in a Ray task, possibly on other machines. Latency is measured in this process alone: on a device measured on
    this host, the lookup table is made (or read) here and handed to them, and so is the correction when the run
    corrects the table by timing plans (made here first, saved in the run folder or at the path the run names):
    they time nothing, side by side or on other nodes."""
    run = Path(run)
    settings = config.env_kwargs()
    target = config.target
    if target.device not in MEASURED_DEVICES or target.budget_metric != "latency":
        return settings
    from envs.factory import make_env
    from hardware_models.correction import CorrectedCost

    shared = run / "latency_correction.shared.json" if config.calibrate_latency is True else config.calibrate_latency
    here = {**settings, "sensitivity": False, "dynamic_skip": False, "progress": progress}
    if config.calibrate_latency is not False:
        here["calibrate_latency"] = str(shared)
    cost = make_env(**here).budget_model
    settings["latency_table"] = cost.base if isinstance(cost, CorrectedCost) else cost
    if config.calibrate_latency is not False:
        settings["calibrate_latency"] = json.loads(Path(shared).read_text())
    return settings


def _score_before_episodes(run: Path, config: TrainRunConfig, env: VecEnv, state: SearchState) -> None:
    """Count the probes the environment made, record the latency table's correction (if any), and with the
    ``scaled`` mapping at one budget score its prior plan and keep it as the best so far: a search that starts from a
    plan returns no worse a plan."""
    state.probe_evaluations = int(env.get_attr("probe_evaluations")[0])
    correction = getattr(env.get_attr("budget_model")[0], "correction", None)
    if correction is not None:  # the table was corrected by timings before the search: recorded with the run
        _write_json(run / "latency_correction.json", correction())
    if config.action_mapping != "scaled" or config.budget_range is not None or config.dynamic_skip:
        return
    if config.reward not in ("residual", "accuracy", "lagrangian"):  # amc-flops: the prior's reward needs its MACs
        return
    prior = env.get_attr("prior_plan")[0]
    top1 = float(env.env_method("prior_top1", indices=[0])[0])
    state.probe_evaluations += 1
    state.best_reward = 0.0 if config.reward == "residual" else top1
    state.best_top1, state.best_episode, state.best_plan = top1, 0, prior.to_json()
    state.offer(prior.to_json(), state.best_reward)  # made to meet the budget
    _write_json(run / "best_plan.json", json.loads(prior.to_json()))


def _keep_progress_log(tb: Path, episodes: int) -> Path | None:
    """Move SB3's ``progress.csv`` aside before a resume opens it again: its CSV logger truncates the file it opens.

    The resumed segment is then logged to ``progress.csv``. An empty log is left where it is.

    Args:
        tb: The run's log folder.
        episodes: Episodes of the saved search state, named in the kept log's file name (the log may also hold rows
            of episodes after the last saved state, which the resume runs again).

    Returns:
        Where the log so far was kept (``progress.upto-episode-N.csv``, or ``.1``, ``.2``... where a run was
        resumed more than once at the same episode), or None where there was nothing to keep.
    """
    log = tb / "progress.csv"
    if not log.is_file() or log.stat().st_size == 0:
        return None
    kept, n = tb / f"progress.upto-episode-{episodes}.csv", 0
    while kept.exists():
        n += 1
        kept = tb / f"progress.upto-episode-{episodes}.{n}.csv"
    log.rename(kept)
    return kept


def _log_hparams(run: Path, config: TrainRunConfig) -> None:
    """Hyper-parameters once, as a Markdown table in TensorBoard (CleanRL's habit)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "tb"))
    table = "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(config).items())
    writer.add_text("hyperparameters", table)
    writer.close()


def best_plan(run: str | os.PathLike[str]) -> PruningPlan:
    """The best plan a run found."""
    return PruningPlan.load(Path(run) / "best_plan.json")
