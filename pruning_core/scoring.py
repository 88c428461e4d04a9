"""The search's accuracy estimate of a plan: apply it, recalibrate BatchNorm, optionally a short fine-tune, evaluate
on part of the ``val`` split. The agent and every search baseline score candidates with this one function, so they
are compared on equal terms. Scores of identical plans are cached.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pruning_core.data import ImageDataset, atomic_write_bytes
from pruning_core.dynamic import TrainedGates, gated_blocks
from pruning_core.engine import PrunedModel, PruningEngine, recalibrate_bn
from pruning_core.errors import PlanError, PruneGymError
from pruning_core.plan import PruningPlan
from pruning_core.training import TrainConfig, distill_loss, evaluate

if TYPE_CHECKING:
    from pruning_core.executor import Executor

DEFAULT_FINETUNE_STEPS = 50
"""SGD steps of the score's short fine-tune unless told otherwise, chosen by measurement (``scripts/score_correlation``,
resnet20 on CIFAR-10 at 0.5 of dense host-CPU latency, 20 random plans at the budget): Spearman correlation with val
accuracy after 2 fine-tuning epochs -0.16 for adaptive BN alone (its scores sat at chance), 0.51 with 50 steps, 0.32
with 50 distilled steps; 0.6 s, 4.6 s and 8.3 s a plan on one thread.

Measured again after BatchNorm recalibration moved to augmented batches (:func:`~pruning_core.engine.recalibrate_bn`),
same script and setting, 2 threads: 0.66 for adaptive BN alone, 0.67 with 50 steps, 0.68 distilled; 0.5 s, 4.0 s and
6.0 s a plan. With 20 plans these three do not differ measurably (a 95% interval is about +-0.3), so adaptive BN alone
(``finetune_steps=0``, ``prunegym train --finetune-steps 0``) now ranks plans about as well for an eighth of the cost.
The default stays at 50 until a larger comparison on more models settles it: scores cached or logged under one
recipe are not reused under another.

On resnet56 at 0.7 of dense latency (one seed, 2 fine-tuning epochs; ``prunegym benchmark --finetune-steps 0`` against
the headline benchmark's 50-step cells) greedy-lut scored by adaptive BN alone found a plan that reached 0.878
against 0.867, in 16 minutes instead of 144. The agents did not gain: 400 episodes scored by BN alone reached
0.849-0.854, 100 such episodes 0.837-0.840, against 0.855-0.859 for 100 episodes with 50 steps. Both benchmark
scripts search with ``--finetune-steps 0``; how many episodes the agents then need is open.

Among good plans only the short fine-tune ranks them (``python -m scripts.score_correlation --records``, the 72 plans
the resnet56 benchmark fine-tuned, against their test top-1 after 2 epochs): over the better half at 0.7 of dense
latency, Spearman 0.536 for adaptive BN alone, 0.668 on 5,000 val images and 0.891 with 50 steps (2.9, 9.1 and 17.5 s
a plan, 2 threads)."""


@dataclass(frozen=True)
class ScoreConfig:
    """How a candidate plan is scored."""

    val_images: int = 1000
    """Images of the val split evaluated (the first ones, always the same)."""
    bn_batches: int = 10
    """Training batches for adaptive BatchNorm recalibration (EagleEye)."""
    bn_batch_size: int = 64
    """Images per recalibration batch."""
    finetune_steps: int = DEFAULT_FINETUNE_STEPS
    """SGD steps of a short fine-tune after recalibration (0: adaptive BN alone; see ``DEFAULT_FINETUNE_STEPS``)."""
    finetune_lr: float = 0.01
    """Peak learning rate of the short fine-tune (SGD with momentum, cosine decay over its steps)."""
    finetune_batch_size: int = 64
    """Images per short fine-tune step."""
    distill: float = 0.0
    """Weight of distillation from the dense model in the short fine-tune."""
    bf16: bool = False
    """Recalibrate and evaluate under bfloat16 autocast (faster on CPUs with AMX; scores shift slightly)."""
    channels_last: bool = False
    """Score in the channels-last memory format (same arithmetic). Off by default: pruned widths leave oneDNN's
    channels-last kernels off their blocked path, and the short fine-tune dominates a score. Measured here
    (``python -m scripts.bench_inner_loop --model resnet56 --sparsity S --finetune-steps 50 --runs 3
    [--channels-last]``, 2 threads, bf16, medians): a score took 13.0 s contiguous against 20.6 s channels-last for
    random plans around S = 0.3, 11.8 against 18.2 s around 0.5; only evaluation was faster channels-last (0.75
    against 1.06 s)."""

    def __post_init__(self) -> None:
        if self.val_images < 1:
            raise PruneGymError(f"val_images must be >= 1; got {self.val_images}")
        if self.bn_batches < 0 or self.finetune_steps < 0:
            raise PruneGymError(
                f"bn_batches and finetune_steps must be >= 0; got {self.bn_batches}, {self.finetune_steps}"
            )


@dataclass(frozen=True)
class Score:
    """The outcome of scoring one plan."""

    top1: float
    macs: int
    params: int
    seconds: float
    cached: bool
    """Scored before by this scorer, or remembered (a sensitivity probe), and not paid for again. A score read back
    from the log of an interrupted run of the same search is not cached: it is one of that search's evaluations
    (unless that run had not paid for it either)."""
    exec_rate: dict[str, float] = field(default_factory=dict)
    """Dynamic skipping: fraction of the scored images that executed each gated block."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in ``apply``, ``adapt`` (recalibration, short fine-tune) and ``evaluate``."""


@dataclass(frozen=True)
class Evaluation:
    """One plan scored afresh (no cache, no log), wherever it ran: the score and the CPU seconds it took there."""

    score: Score
    cpu_seconds: float


@dataclass(frozen=True)
class ScorerRecipe:
    """What a :class:`PlanScorer` is made of, to make an identical one in another process (a Ray worker's): the
    dense model, the data its scores read, the scoring recipe and the gates. Its splits are cut to what scores read
    (the first ``val_images`` of val, no test images), so that it is small to send once to every worker."""

    model: nn.Module
    input_shape: tuple[int, ...]
    dataset: ImageDataset
    config: ScoreConfig
    gates: TrainedGates | None
    calibration_batches: int
    calibration_batch_size: int

    def build(self) -> PlanScorer:
        """A scorer that gives every plan the score the original gives it (with the same torch threads)."""
        engine = PruningEngine(
            self.model,
            self.input_shape,
            dataset=self.dataset,
            calibration_batches=self.calibration_batches,
            calibration_batch_size=self.calibration_batch_size,
        )
        return PlanScorer(engine, self.dataset, self.config, gates=self.gates)


_SCORE_ROW_KEYS = {"plan", "top1", "macs", "params", "seconds", "cpu_seconds", "exec_rate"}


@dataclass
class ScoreLog:
    """A search's scores, logged as they are made (see :meth:`PlanScorer.logging_to`)."""

    path: Path
    saved: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Rows an earlier run logged, by plan, not yet asked for again."""
    logged: set[str] = field(default_factory=set)
    """Plans logged by this run, or taken back from an earlier one."""
    carried_seconds: float = 0.0
    """Wall seconds that the scores taken back and asked for again had taken when they were made."""
    carried_cpu_seconds: float = 0.0
    """Their CPU seconds (all threads)."""

    def append(self, plan: str, score: Score, *, seconds: float, cpu_seconds: float) -> None:
        """Add one plan's score, paid ``seconds`` (wall) and ``cpu_seconds`` by this search."""
        row = {"plan": plan, "top1": score.top1, "macs": score.macs, "params": score.params, "seconds": seconds}
        row.update(cpu_seconds=cpu_seconds, exec_rate=score.exec_rate)
        with self.path.open("a") as log:
            log.write(json.dumps(row) + "\n")
        self.logged.add(plan)


class PlanScorer:
    """Scores plans on the val split with a fixed recipe, caching by the plan's canonical JSON.

    Args:
        engine: The dense model's engine.
        dataset: Source of recalibration/fine-tune batches (train) and of the score (val).
        config: Scoring recipe.
        gates: Trained dynamic-skip gates; plans with skip thresholds are scored with them in place.
    """

    def __init__(
        self,
        engine: PruningEngine,
        dataset: ImageDataset,
        config: ScoreConfig | None = None,
        gates: TrainedGates | None = None,
    ) -> None:
        self.engine = engine
        self.dataset = dataset
        self.config = config or ScoreConfig()
        self.gates = gates
        self._cache: dict[str, Score] = {}
        self._log: ScoreLog | None = None
        self.evaluations = 0

    def prune_and_adapt(self, plan: PruningPlan, timings: dict[str, float] | None = None) -> PrunedModel:
        """Apply ``plan`` and run the recipe's recalibration and short fine-tune (no evaluation).

        Args:
            plan: The plan to apply.
            timings: When given, receives the seconds spent in ``apply`` and in ``adapt`` (recalibration and
                short fine-tune).
        """
        cfg = self.config
        start = time.perf_counter()
        pruned = self.engine.apply(plan)
        if cfg.channels_last:
            pruned.model.to(memory_format=torch.channels_last)
        applied = time.perf_counter()
        if cfg.bn_batches > 0:
            with self._autocast():
                recalibrate_bn(pruned.model, self.dataset, batches=cfg.bn_batches, batch_size=cfg.bn_batch_size)
        if cfg.finetune_steps > 0:
            self._short_finetune(pruned)
        if timings is not None:
            timings.update(apply=applied - start, adapt=time.perf_counter() - applied)
        return pruned

    def score(self, plan: PruningPlan) -> Score:
        """Val top-1 of ``plan`` after the recipe (cached for identical plans)."""
        return self._score(plan, lambda: self.score_afresh(plan))

    def score_all(self, plans: Sequence[PruningPlan], *, executor: Executor | None = None) -> list[Score]:
        """The scores of ``plans``, in order, as :meth:`score` gives them one after the other (the same cache hits,
        log rows and ``evaluations``), the plans to score afresh handed to ``executor`` at once (None: scored here,
        one after the other). Each score is logged as soon as it comes back (from Ray workers, in any order) and cached
        as the search reaches it, in order.

        Args:
            plans: The plans, duplicates allowed (the second is a cache hit, as with :meth:`score`).
            executor: Where plans not scored before are scored (:mod:`pruning_core.executor`).
        """
        if executor is None:
            return [self.score(plan) for plan in plans]
        saved = self._log.saved if self._log is not None else {}
        fresh: dict[str, PruningPlan] = {}
        for plan in plans:
            key = plan.to_json()
            if key not in saved and key not in self._cache:
                fresh.setdefault(key, plan)
        keys = list(fresh)
        log = self._log

        def arrived(index: int, evaluation: Evaluation) -> None:  # logged now: a crash loses only what is in flight
            if log is not None:
                log.append(
                    keys[index], evaluation.score, seconds=evaluation.score.seconds, cpu_seconds=evaluation.cpu_seconds
                )

        results = iter(executor.evaluate(self, list(fresh.values()), arrived))
        # walking in order, a fresh plan is first met exactly where it comes in `fresh`: next() is its evaluation
        return [self._score(plan, lambda: next(results)) for plan in plans]

    def score_afresh(self, plan: PruningPlan) -> Evaluation:
        """Score ``plan`` by the recipe, neither cache nor log looked at or written (what an executor runs)."""
        start, cpu_start = time.perf_counter(), time.process_time()
        timings: dict[str, float] = {}
        pruned = self.prune_and_adapt(plan, timings)
        adapted = time.perf_counter()
        with self._autocast():
            model, rates = pruned.model, {}
            if plan.skip_thresholds:
                if self.gates is None:
                    raise PlanError("plan has skip thresholds but the scorer has no trained gates")
                model = self.gates.fit(model, pruned.kept_channels, dict(plan.skip_thresholds))
            top1 = evaluate(model, self.dataset, "val", limit=self.config.val_images).top1
        timings["evaluate"] = time.perf_counter() - adapted
        if plan.skip_thresholds:
            rates = {name: block.execution_rate() for name, block in gated_blocks(model)}
        score = Score(
            top1,
            pruned.cost.macs,
            pruned.cost.params,
            time.perf_counter() - start,
            cached=False,
            exec_rate=rates,
            timings=timings,
        )
        return Evaluation(score, time.process_time() - cpu_start)

    def recipe(self) -> ScorerRecipe:
        """What this scorer is made of, to build an identical one elsewhere (see :class:`ScorerRecipe`)."""
        data = self.dataset
        val = data.val
        val = type(val)(val.images[: self.config.val_images].clone(), val.labels[: self.config.val_images].clone())
        empty = type(val)(data.test.images[:0].clone(), data.test.labels[:0].clone())
        return ScorerRecipe(
            self.engine.model,
            self.engine.input_shape,
            replace(data, val=val, test=empty),
            self.config,
            self.gates,
            self.engine.calibration_batches,
            self.engine.calibration_batch_size,
        )

    def _score(self, plan: PruningPlan, score_afresh: Callable[[], Evaluation]) -> Score:
        """:meth:`score`, with ``score_afresh`` called for a plan neither logged by an earlier run nor cached."""
        key = plan.to_json()
        log = self._log
        if log is not None and key in log.saved and key in self._cache and log.saved[key]["seconds"] == 0.0:
            # remembered (a probe) and logged at no cost by an earlier run of this search: still not paid for
            log.saved.pop(key)
            log.logged.add(key)
            return replace(self._cache[key], seconds=0.0, cached=True, timings={})
        if log is not None and key in log.saved:  # scored by an earlier run of this search, which paid for it
            row = log.saved.pop(key)
            log.carried_seconds += row["seconds"]
            log.carried_cpu_seconds += row["cpu_seconds"]
            log.logged.add(key)
            carried = Score(
                row["top1"], row["macs"], row["params"], row["seconds"], cached=False, exec_rate=row["exec_rate"]
            )
            self._cache[key] = carried
            return replace(carried, seconds=0.0)  # its seconds are in the log's carried_seconds
        if key in self._cache:
            hit = self._cache[key]
            if log is not None and key not in log.logged:  # scored before the log began: logged at no cost
                log.append(key, hit, seconds=0.0, cpu_seconds=0.0)
            return replace(hit, seconds=0.0, cached=True, timings={})
        fresh = score_afresh()
        score = fresh.score
        self._cache[key] = score
        self.evaluations += 1
        if log is not None and key not in log.logged:  # an executor's evaluations are logged as they arrive
            log.append(key, score, seconds=score.seconds, cpu_seconds=fresh.cpu_seconds)
        return score

    def remember(self, plan: PruningPlan, top1: float) -> None:
        """Take ``top1`` as ``plan``'s score without scoring it (a score made earlier with this recipe, saved
        elsewhere, such as a sensitivity probe); a search that asks for the plan then pays nothing for it."""
        key = plan.to_json()
        if key not in self._cache:
            pruned = self.engine.apply(plan)
            self._cache[key] = Score(top1, pruned.cost.macs, pruned.cost.params, 0.0, cached=False)

    @contextlib.contextmanager
    def logging_to(self, path: str | os.PathLike[str], inputs: Mapping[str, Any]) -> Iterator[ScoreLog]:
        """Within the block, log every score to ``path`` as it is made, and take back the scores an earlier run
        logged there: a search interrupted and run again scores again only what it had not.

        The log is JSON lines: first what its scores depend on (``inputs``, the scoring recipe and whether gates are
        used), then one line per plan. A log made from other inputs is started afresh; a last line cut short by a
        crash, and anything after it, is dropped.

        Args:
            path: The log (created with its folders where missing).
            inputs: What else the scores depend on, JSON-serialisable (the model, its checkpoint, the data).

        Yields:
            The log, whose ``carried_seconds`` and ``carried_cpu_seconds`` add up, once the block is done, what the
            scores taken back and asked for again had cost when they were made.
        """
        if self._log is not None:
            raise PruneGymError(f"expected one score log at a time; already logging to {self._log.path}")
        try:
            header = json.dumps(
                {"inputs": inputs, "scoring": asdict(self.config), "gates": self.gates is not None}, sort_keys=True
            )
        except TypeError as exc:
            raise PruneGymError(f"expected JSON-serialisable score log inputs; got {exc}") from None
        path = Path(path)
        lines = path.read_text().splitlines() if path.exists() else []
        rows: list[dict[str, Any]] = []
        if lines and lines[0] == header:
            for line in lines[1:]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # cut short by a crash: nothing after it was written
                    break
                if not isinstance(row, dict) or not row.keys() >= _SCORE_ROW_KEYS:
                    break
                rows.append(row)
        text = "".join(line + "\n" for line in [header, *(json.dumps(row) for row in rows)])
        atomic_write_bytes(path, lambda tmp: tmp.write_text(text))
        self._log = ScoreLog(path, saved={row["plan"]: row for row in rows})
        try:
            yield self._log
        finally:
            self._log = None

    def _autocast(self) -> torch.autocast:
        """bfloat16 autocast when the recipe asks for it.

        Each region must end before the weights change: autocast keeps its bfloat16 copies of the weights until
        the outermost region exits, so a training step inside a longer region would not see its own updates.
        """
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.bf16)

    def _short_finetune(self, pruned: PrunedModel) -> None:
        cfg = self.config
        model = pruned.model
        teacher = self.engine.model if cfg.distill > 0 else None
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.finetune_lr, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        batches = self.dataset.batches(
            "train",
            cfg.finetune_batch_size,
            shuffle=True,
            augment=True,
            limit=cfg.finetune_steps * cfg.finetune_batch_size,
            generator=generator,
        )
        model.train()
        # cosine decay over the steps (the last ones settle, not jolt), as a one-epoch run of the training schedule
        schedule = TrainConfig(epochs=1, lr=cfg.finetune_lr, warmup_epochs=0)
        for step, (images, labels) in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr_at(step, cfg.finetune_steps, cfg.finetune_steps)
            with self._autocast():  # one region per step (see _autocast)
                logits = model(images).float()
                loss = F.cross_entropy(logits, labels)
                if teacher is not None:
                    with torch.no_grad():
                        soft = teacher(images).float()
                    loss = (1 - cfg.distill) * loss + cfg.distill * distill_loss(logits, soft, temperature=4.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
