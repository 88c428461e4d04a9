"""Where a search's candidate plans are scored: in this process (``local``, the default) or on Ray workers (``ray``).

A search hands its scorer a batch of plans it can propose without seeing their scores (greedy-lut: a round's
candidates; random-search and tpe: a few proposals, see :mod:`pruning_core.search`), and
:meth:`~pruning_core.scoring.PlanScorer.score_all` hands the plans it has not scored before to an executor. Results
come back in the order the plans were given, and the scorer caches and logs them in that order, so a search decides
exactly as it does with the local executor: same plan, same scores, same number of evaluations.

Ray is imported only when a Ray executor first scores something: ``import pruning_core`` and the local executor
never start a Ray process. Each Ray worker is an actor that builds the scorer once, from its recipe
(:class:`~pruning_core.scoring.ScorerRecipe`: the dense model, its val images and BN batches' source, put in Ray's
object store once), then scores one plan per call: apply, BN recalibration, the short fine-tune, val accuracy.
Latency is never measured on a worker; budgets are judged on the driver by the search's cost model.

Each evaluation is handed back as soon as it arrives (``arrived``, which the scorer uses to log it), not only when
the search reaches it in order: a driver killed mid-search loses only the evaluations in flight, and the search run
again takes back the rest from its log (:meth:`~pruning_core.scoring.PlanScorer.logging_to`).

Faults: a worker that dies is restarted by Ray (its scorer built again from the recipe), and the plan it held is
scored again on it; each retry is recorded in :attr:`RayExecutor.retried`. Scoring is deterministic, so the search
finishes with the plan an undisturbed run finds.

An executor also fine-tunes plans (:meth:`Executor.finetune`, :class:`FinetuneJob`: a benchmark's cells, a
baseline's or an applied policy's plan): the local executor one after the other as they are asked for, the Ray
executor all at once as Ray tasks (Ray retries a task whose worker died). Either way nothing runs by the time a
fine-tuned model is handed back, so that the caller measures its latency alone.

Any other work goes through :meth:`Executor.submit`, which hands back a :class:`Pending` result: the local executor
runs the call when its result is first asked for (so work runs in the order the caller asks, as without executors),
the Ray executor starts it at once as a Ray task (a benchmark's agent searches, side by side). The tasks see the
driver's ``PRUNEGYM_*`` environment variables (data folders), and read and write files where the driver does: on a
cluster of several machines, those paths must be on storage every node sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from pruning_core.errors import PruneGymError

if TYPE_CHECKING:
    from torch import nn

    from pruning_core.data import ImageDataset
    from pruning_core.engine import PrunedModel, PruningEngine
    from pruning_core.plan import PruningPlan
    from pruning_core.scoring import Evaluation, PlanScorer, ScorerRecipe
    from pruning_core.training import TrainConfig

MAX_RESTARTS = 3
"""Times a Ray worker is restarted after it dies, and times a plan it held is scored again."""

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Arrived = Callable[[int, "Evaluation"], None]
"""Called with a plan's index and its evaluation as soon as the evaluation is made (in any order)."""


@dataclass(frozen=True)
class Retry:
    """A plan scored again because the worker that held it died."""

    plan: str
    """The plan (its JSON)."""
    index: int
    """Its place in the batch it came in."""
    worker: int
    """The worker that held it (and scores it again once Ray has restarted it)."""
    attempt: int
    """1 for the first retry."""
    error: str
    """What Ray reported (the exception's type)."""


@dataclass(frozen=True)
class FinetuneJob:
    """One plan to apply, recalibrate and fine-tune (:func:`~pruning_core.finetune.prune_and_finetune`): a benchmark
    cell's finish before it is measured."""

    name: str
    """What the caller calls it (a benchmark's method)."""
    engine: PruningEngine
    """The dense model's engine."""
    plan: PruningPlan
    dataset: ImageDataset
    """Recalibration, fine-tuning and the accuracies' data."""
    config: TrainConfig | None
    """The fine-tune (None: BN recalibration alone)."""
    bn_batches: int = 20


Finished = Callable[[str, "Finetuned"], None]
"""Called with a job's name and its fine-tuned model as soon as it is made (in any order)."""


@dataclass
class Finetuned:
    """A job's fine-tuned model and what making it took where it ran."""

    pruned: PrunedModel
    seconds: float
    """Wall seconds of the apply, the recalibration, the fine-tune and the accuracies."""
    cpu_seconds: float
    """CPU seconds of the process that made it (all its threads)."""


def run_job(job: FinetuneJob, *, progress: bool = True) -> Finetuned:
    """A job done in this process."""
    import time

    from pruning_core.finetune import prune_and_finetune

    start = (time.perf_counter(), time.process_time())
    pruned = prune_and_finetune(
        job.engine, job.plan, job.dataset, bn_batches=job.bn_batches, config=job.config, progress=progress
    )
    return Finetuned(pruned, time.perf_counter() - start[0], time.process_time() - start[1])


@dataclass(frozen=True)
class _EngineRecipe:
    """What a :class:`~pruning_core.engine.PruningEngine` is made of besides its data, to make an identical one on a
    Ray worker."""

    model: nn.Module
    input_shape: tuple[int, ...]
    calibration_batches: int
    calibration_batch_size: int

    @classmethod
    def of(cls, engine: PruningEngine) -> _EngineRecipe:
        return cls(engine.model, engine.input_shape, engine.calibration_batches, engine.calibration_batch_size)

    def build(self, dataset: ImageDataset | None) -> PruningEngine:
        from pruning_core.engine import PruningEngine

        return PruningEngine(
            self.model,
            self.input_shape,
            dataset=dataset,
            calibration_batches=self.calibration_batches,
            calibration_batch_size=self.calibration_batch_size,
        )


def _remote_job(
    recipe: _EngineRecipe,
    engine_data: ImageDataset | None,
    data: ImageDataset,
    job: tuple[str, str, TrainConfig | None, int],
    threads: int,
) -> Finetuned:
    """A Ray task's body: a job (its name, plan JSON, fine-tune and BN batches) on an engine made from ``recipe``
    (the model and the data come as object references, stored once: each task reads its own copy of them)."""
    import torch

    from pruning_core.plan import PruningPlan

    torch.set_num_threads(threads)
    name, plan, config, bn_batches = job
    engine = recipe.build(engine_data)
    return run_job(FinetuneJob(name, engine, PruningPlan.from_json(plan), data, config, bn_batches), progress=False)


class Pending(Protocol[T_co]):
    """A call handed to :meth:`Executor.submit`, whose result is asked for later."""

    def result(self) -> T_co:
        """The call's return value (waiting for it, or making it now with the local executor); what it raised is
        raised here."""
        ...


class _Deferred(Generic[T]):
    """The local executor's pending call: made the first time its result is asked for."""

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._call: tuple[Callable[..., T], tuple[Any, ...]] | None = (fn, args)
        self._value: T | None = None

    def result(self) -> T:
        if self._call is not None:
            fn, args = self._call
            self._value, self._call = fn(*args), None
        return self._value  # type: ignore[return-value]


def _call(fn: Callable[..., T], *args: Any) -> T:
    """A Ray task's body for :meth:`RayExecutor.submit` (``fn`` may be any callable, a builtin included)."""
    return fn(*args)


class _RayPending(Generic[T]):
    """A Ray task's result; a :class:`~pruning_core.errors.PruneGymError` raised in the task is raised as it is (its
    one line, without Ray's remote traceback)."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def result(self) -> T:
        import ray
        from ray.exceptions import RayTaskError

        try:
            return ray.get(self.ref)  # type: ignore[no-any-return]
        except RayTaskError as exc:
            if isinstance(exc.cause, PruneGymError):
                raise exc.cause from None
            raise


@runtime_checkable
class Executor(Protocol):
    """Scores plans afresh for a :class:`~pruning_core.scoring.PlanScorer` (which keeps the cache and the log)."""

    @property
    def batch_size(self) -> int:
        """Plans a search hands over at once where it can propose them without seeing scores (1: each scored as it
        is proposed, as before executors existed)."""
        ...

    def evaluate(
        self, scorer: PlanScorer, plans: Sequence[PruningPlan], arrived: Arrived | None = None
    ) -> Iterator[Evaluation]:
        """Each plan scored afresh by ``scorer``'s recipe, yielded in the order given; ``arrived`` is also called
        with each as soon as it is made."""
        ...

    @property
    def remote_cpu_seconds(self) -> float:
        """CPU seconds its evaluations took outside this process so far (0 for the local executor)."""
        ...

    @property
    def remote(self) -> bool:
        """Whether its work runs outside this process (where nothing may be timed)."""
        ...

    def submit(self, fn: Callable[..., T], *args: Any, cpus: int | None = None) -> Pending[T]:
        """``fn(*args)``, whose result is asked for later: run then (local) or started now on a worker of ``cpus``
        CPUs (Ray; None: the executor's threads), retried where its worker dies. ``fn`` must be importable where it
        runs (a module's function), and time nothing."""
        ...

    def release_workers(self) -> None:
        """Stop its idle scoring workers (nothing for the local executor): before plans are timed here."""
        ...

    def finetune(self, jobs: Sequence[FinetuneJob], finished: Finished | None = None) -> Iterator[Finetuned]:
        """Each job's fine-tuned model, yielded in the order given; ``finished`` is also called with each as soon as
        it is made. Nothing else runs by the time a model is yielded, so that the caller can measure it alone."""
        ...

    def close(self) -> None:
        """Release its workers (nothing for the local executor)."""
        ...


class LocalExecutor:
    """Scores each plan in this process when the search asks for it: the default, and the behaviour before
    executors existed (a search killed mid-batch loses only the evaluation in flight)."""

    batch_size = 1
    remote_cpu_seconds = 0.0
    remote = False

    def evaluate(
        self, scorer: PlanScorer, plans: Sequence[PruningPlan], arrived: Arrived | None = None
    ) -> Iterator[Evaluation]:
        for index, plan in enumerate(plans):
            evaluation = scorer.score_afresh(plan)
            if arrived is not None:
                arrived(index, evaluation)
            yield evaluation

    def finetune(self, jobs: Sequence[FinetuneJob], finished: Finished | None = None) -> Iterator[Finetuned]:
        """Each job done when the caller asks for it: one fine-tune, then the caller's measurement, then the next."""
        for job in jobs:
            made = run_job(job)
            if finished is not None:
                finished(job.name, made)
            yield made

    def submit(self, fn: Callable[..., T], *args: Any, cpus: int | None = None) -> Pending[T]:
        return _Deferred(fn, args)

    def release_workers(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScoringWorker:
    """A Ray worker's state: one scorer built from a recipe, scoring one plan per call (the actor's class; Ray's
    decorator is applied by :class:`RayExecutor`, so that this module does not import Ray).

    Args:
        recipe: What the scorer is made of (passed as an object reference: Ray resolves it once per worker start).
        threads: Torch threads of this worker.
    """

    def __init__(self, recipe: ScorerRecipe, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.scorer = recipe.build()

    def score(self, plan_json: str) -> Evaluation:
        from pruning_core.plan import PruningPlan

        return self.scorer.score_afresh(PruningPlan.from_json(plan_json))

    def pid(self) -> int:
        """The worker's process id (a restarted worker has a new one)."""
        return os.getpid()

    def node(self) -> str:
        """The Ray node the worker runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()


class RayExecutor:
    """Scores plans on Ray actors, each holding the dense model and its data once (see the module's docstring).

    Ray starts when the executor first scores: joined at ``address`` if given, else a local instance (``num_cpus``:
    ``workers * threads``, or every core when ``workers`` is None); an instance already started in this process
    (``ray.init`` by the caller) is used as it is. The workers are made for one scorer and made again when another
    scorer comes (one per budget in a benchmark).

    Args:
        workers: Actors (None: the cluster's CPUs divided by ``threads``).
        address: A running Ray cluster to join (``ray start --head`` prints it), or None.
        threads: Torch threads (and Ray CPUs) per worker.
        batch_size: Plans random-search and tpe hand over at once (None: 4 per worker).
        max_restarts: Restarts of a dead worker, and retries of each plan it held.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        address: str | None = None,
        threads: int = 1,
        batch_size: int | None = None,
        max_restarts: int = MAX_RESTARTS,
    ) -> None:
        if workers is not None and workers < 1:
            raise PruneGymError(f"Ray workers must be >= 1; got {workers}")
        if threads < 1:
            raise PruneGymError(f"threads per Ray worker must be >= 1; got {threads}")
        self.workers = workers
        self.address = address
        self.threads = threads
        self.max_restarts = max_restarts
        self._batch_size = batch_size
        self.remote_cpu_seconds = 0.0
        self.actors: list[Any] = []
        """The workers of the current scorer (Ray actor handles)."""
        self.retried: list[Retry] = []
        """The plans scored again because their worker died, in the order the deaths were seen."""
        self._scorer: PlanScorer | None = None
        self._recipe: Any = None
        self._started = False

    @property
    def batch_size(self) -> int:
        """Plans random-search and tpe hand over at once: as asked, else 4 per worker."""
        return self._batch_size if self._batch_size is not None else 4 * (self.workers or 1)

    def start(self, scorer: PlanScorer) -> None:
        """Start Ray and ``scorer``'s workers now and wait until each has built its scorer (otherwise done when the
        first plan comes): to time the start apart from the search."""
        import ray

        self._workers_for(scorer)
        ray.get([actor.pid.remote() for actor in self.actors])

    def evaluate(
        self, scorer: PlanScorer, plans: Sequence[PruningPlan], arrived: Arrived | None = None
    ) -> Iterator[Evaluation]:
        """Hand the first plans to the workers now, each later one to the next worker free; yield the results in the
        order of ``plans`` (``arrived`` gets each as it comes)."""
        if not plans:
            return iter(())
        self._workers_for(scorer)
        batch = _Batch([plan.to_json() for plan in plans], list(self.actors), self, arrived)
        batch.submit()
        return self._gather(batch)

    def finetune(self, jobs: Sequence[FinetuneJob], finished: Finished | None = None) -> Iterator[Finetuned]:
        """Every job as a Ray task at once (``threads`` CPUs each; Ray retries a task whose worker died); each
        model handed to ``finished`` as it arrives, and all yielded, in order, once the last has arrived: no
        fine-tune runs while the caller measures. The scoring workers are released first (their CPUs go to the
        tasks; the next search starts its own)."""
        if not jobs:
            return iter(())
        ray = self.connect()
        self.check_fits()
        self.release_workers()
        stored: dict[int, Any] = {}  # one copy of each dense model and of each dataset in the object store

        def put(key: object, value: object) -> Any:
            if id(key) not in stored:
                stored[id(key)] = ray.put(value)
            return stored[id(key)]

        task = ray.remote(_remote_job).options(num_cpus=self.threads, max_retries=self.max_restarts)
        running = {}
        for index, job in enumerate(jobs):
            recipe = put(job.engine, _EngineRecipe.of(job.engine))
            engine_data, data = put(job.engine.dataset, job.engine.dataset), put(job.dataset, job.dataset)
            args = (job.name, job.plan.to_json(), job.config, job.bn_batches)
            running[task.remote(recipe, engine_data, data, args, self.threads)] = index
        done: dict[int, Finetuned] = {}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            index = running.pop(ready[0])
            done[index] = ray.get(ready[0])
            if finished is not None:
                finished(jobs[index].name, done[index])
        return iter([done[index] for index in range(len(jobs))])

    remote = True

    def submit(self, fn: Callable[..., T], *args: Any, cpus: int | None = None) -> Pending[T]:
        """Start ``fn(*args)`` now as a Ray task of ``cpus`` CPUs (None: ``threads``), with the driver's
        ``PRUNEGYM_*`` environment variables; Ray runs it again (up to ``max_restarts`` times) if its worker dies."""
        ray = self.connect()
        cpus = self.threads if cpus is None else cpus
        self.check_fits(cpus)
        variables = {name: value for name, value in os.environ.items() if name.startswith("PRUNEGYM_")}
        task = ray.remote(_call).options(
            num_cpus=cpus, max_retries=self.max_restarts, runtime_env={"env_vars": variables} if variables else None
        )
        return _RayPending(task.remote(fn, *args))

    def check_fits(self, cpus: int | None = None) -> None:
        """Refuse work that no Ray node could place: a worker of ``cpus`` CPUs (None: ``threads``) on a cluster whose
        largest node has fewer (it would wait for ever).

        Raises:
            PruneGymError: No node has ``cpus`` CPUs.
        """
        import ray

        cpus = self.threads if cpus is None else cpus
        largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
        if largest < cpus:
            raise PruneGymError(
                f"expected a Ray node with at least {cpus} CPUs for one worker; got at most {largest:g}"
            )

    def _gather(self, batch: _Batch) -> Iterator[Evaluation]:
        for index in range(len(batch.plans)):
            evaluation = batch.result(index)
            self.remote_cpu_seconds += evaluation.cpu_seconds
            yield evaluation

    def _workers_for(self, scorer: PlanScorer) -> None:
        """Start Ray and this scorer's workers unless they run already."""
        if scorer is self._scorer:
            return
        ray = self.connect()
        self.check_fits()
        self.release_workers()
        if self.workers is None:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads)
        self._recipe = ray.put(scorer.recipe())  # once; each worker reads it when it starts (or restarts)
        # Ray restarts a dead worker; the plan it held is handed to it again by _Batch, which records the retry
        actor = ray.remote(ScoringWorker).options(num_cpus=self.threads, max_restarts=self.max_restarts)
        self.actors = [actor.remote(self._recipe, self.threads) for _ in range(self.workers)]
        self._scorer = scorer

    def connect(self) -> Any:
        """Ray, started as the executor says (see the class) unless this process has started it already."""
        import ray

        if not ray.is_initialized():
            if self.address is not None:
                ray.init(address=self.address, log_to_driver=False)
            else:
                cpus = self.workers * self.threads if self.workers is not None else os.cpu_count()
                # "local": a new instance of this process's own, even where `ray start` runs a cluster here
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            self._started = True
        return ray

    def release_workers(self) -> None:
        """Stop the scoring workers (their CPUs go back to Ray; the next search starts its own)."""
        if self.actors:
            import ray

            for actor in self.actors:
                ray.kill(actor)
        self.actors, self._scorer, self._recipe = [], None, None

    def close(self) -> None:
        """Stop the workers, and Ray where this executor started it."""
        self.release_workers()
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Batch:
    """Plans scored by a pool of workers, each plan given to the next worker free (a greedy round's candidates
    differ in cost), results kept until asked for in order; a plan whose worker died is given to it again once Ray
    has restarted it."""

    def __init__(self, plans: list[str], workers: list[Any], executor: RayExecutor, arrived: Arrived | None) -> None:
        self.plans = plans
        self.workers = workers
        self.idle = list(workers)
        self.executor = executor
        self.arrived = arrived
        self.queued = list(range(len(plans)))[::-1]
        self.running: dict[Any, tuple[int, Any]] = {}  # task -> (plan index, worker)
        self.done: dict[int, Evaluation] = {}
        self.attempts: dict[int, int] = {}

    def submit(self) -> None:
        """Give queued plans to the idle workers."""
        while self.idle and self.queued:
            index, worker = self.queued.pop(), self.idle.pop()
            self.running[worker.score.remote(self.plans[index])] = (index, worker)

    def result(self, index: int) -> Evaluation:
        """Plan ``index``'s evaluation, waiting for it while the workers go on with the rest."""
        import ray
        from ray.exceptions import RayActorError

        while index not in self.done:
            ready, _ = ray.wait(list(self.running), num_returns=1)
            finished, worker = self.running.pop(ready[0])
            try:
                evaluation = ray.get(ready[0])
            except RayActorError as exc:  # the worker died holding the plan: Ray restarts it, the plan goes again
                attempt = self.attempts[finished] = self.attempts.get(finished, 0) + 1
                if attempt > self.executor.max_restarts:
                    raise PruneGymError(
                        f"expected a plan to be scored within {self.executor.max_restarts} retries; its worker died "
                        f"{attempt} times ({type(exc).__name__})"
                    ) from exc
                retry = Retry(self.plans[finished], finished, self.workers.index(worker), attempt, type(exc).__name__)
                self.executor.retried.append(retry)
                _await_restart(worker)
                self.running[worker.score.remote(self.plans[finished])] = (finished, worker)
                continue
            self.done[finished] = evaluation
            if self.arrived is not None:
                self.arrived(finished, evaluation)
            self.idle.append(worker)
            self.submit()
        return self.done.pop(index)


RESTART_SECONDS = 300.0
"""How long a dead worker is waited for (Ray restarting it, its scorer built again) before the search gives up."""


def _await_restart(worker: Any) -> None:
    """Wait until Ray has restarted ``worker`` (calls made while it restarts fail, and are not retries)."""
    import time

    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    deadline = time.monotonic() + RESTART_SECONDS
    while True:
        try:
            ray.get(worker.pid.remote(), timeout=max(deadline - time.monotonic(), 0.0))
            return
        except (RayActorError, GetTimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise PruneGymError(
                    f"expected a dead Ray worker back within {RESTART_SECONDS:g} s; got {type(exc).__name__}"
                ) from exc
            time.sleep(0.2)


EXECUTORS: dict[str, type[LocalExecutor] | type[RayExecutor]] = {"local": LocalExecutor, "ray": RayExecutor}
"""The executors by name (``--executor``)."""


def make_executor(
    name: str = "local", *, address: str | None = None, workers: int | None = None, threads: int = 1
) -> LocalExecutor | RayExecutor:
    """The executor called ``name``; ``address``, ``workers`` and ``threads`` are the Ray executor's (a Ray address
    or worker count with the local executor is refused: it would be silently ignored).

    >>> type(make_executor()).__name__
    'LocalExecutor'
    """
    if name not in EXECUTORS:
        raise PruneGymError(f"executor must be one of {', '.join(EXECUTORS)}; got {name!r}")
    if name == "local":
        if address is not None or workers is not None:
            raise PruneGymError(f"a Ray address or worker count needs executor 'ray'; got executor {name!r}")
        return LocalExecutor()
    return RayExecutor(address=address, workers=workers, threads=threads)
