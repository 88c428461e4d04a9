"""Build ``PruneGym/LayerPrune-v0`` from a :class:`~envs.target.Target` (model, checkpoint, data, device, budget)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from envs.layer_prune import LayerPruneEnv
from envs.target import BUDGET_METRICS, Target
from hardware_models.base import LatencyModel
from hardware_models.lut import BUILD_METHOD, DEFAULT_GRANULE, LookupTable, build_lut
from hardware_models.measure import MEASURE_MIN_SECONDS, MEASURED_DEVICES, default_threads, measurer_for
from hardware_models.registry import get_latency_model
from pruning_core.checkpoint import load_checkpoint, load_torch, save_torch, sha256
from pruning_core.data import ImageDataset, cache_dir
from pruning_core.dynamic import TrainedGates, add_gates, train_gates
from pruning_core.dynamic.probes import SkipSensitivity, cached_skip_sensitivity
from pruning_core.engine import PruningEngine
from pruning_core.errors import PruneGymError
from pruning_core.graph import ModelGraph
from pruning_core.metrics import LayerwiseCost, MacsCost, ParamsCost
from pruning_core.models import model_slug
from pruning_core.scoring import DEFAULT_FINETUNE_STEPS, PlanScorer, ScoreConfig
from pruning_core.sensitivity import Sensitivity, cached_sensitivity
from pruning_core.training import resolve_bf16


def cached_lut(graph: ModelGraph, device: str, model_name: str, *, progress: bool = True) -> LookupTable:
    """The host lookup table for this model and device, built once and cached under the user cache directory."""
    threads = default_threads()
    # the channel step and the build method are part of the key: tables built otherwise are not reused
    key = hashlib.sha1(
        f"{model_name}{graph.input_shape}{torch.__version__}{os.uname().nodename}g{DEFAULT_GRANULE}w"
        f"m{BUILD_METHOD}".encode()
    ).hexdigest()
    path = cache_dir() / "luts" / f"{device}-{model_slug(model_name)}-t{threads}-{key[:10]}.json"
    if path.exists():
        return LookupTable.load(path)
    lut = build_lut(
        graph,
        device=device,
        threads=threads,
        granule=DEFAULT_GRANULE,
        progress=progress,
        model_name=model_name,
    )
    lut.save(path)
    return lut


def budget_model_for(
    metric: str,
    device: str,
    graph: ModelGraph,
    model_name: str,
    *,
    progress: bool = True,
    table: LookupTable | None = None,
) -> tuple[LayerwiseCost, LatencyModel | None]:
    """The layer-wise cost the budget is judged on, and the measured latency model of the device (if any); on a
    device measured on this host, ``table`` instead of this host's cached lookup table (one built elsewhere)."""
    if metric not in BUDGET_METRICS:
        raise PruneGymError(f"budget_metric must be one of {', '.join(BUDGET_METRICS)}; got {metric!r}")
    measured: LatencyModel | None = None
    if device in MEASURED_DEVICES:
        measured = measurer_for(device, min_seconds=MEASURE_MIN_SECONDS)
    if metric == "macs":
        return MacsCost(), measured
    if metric == "params":
        return ParamsCost(), measured
    if device in MEASURED_DEVICES:
        return (table if table is not None else cached_lut(graph, device, model_name, progress=progress)), measured
    latency = get_latency_model(device)
    if not isinstance(latency, LayerwiseCost):
        raise PruneGymError(f"device {device!r} cannot predict per layer; use a lookup table (lut:PATH)")
    return latency, measured


def trained_gates(
    engine: PruningEngine, dataset: ImageDataset, checkpoint: Path, *, epochs: int = 2, progress: bool = True
) -> TrainedGates:
    """Skip gates for the dense model, trained once per checkpoint and cached (tensors only)."""
    key = sha256(checkpoint)[:16]
    path = cache_dir() / "gates" / f"{key}-e{epochs}.pt"
    gated = add_gates(engine.model)
    if path.exists():
        gated.load_state_dict(load_torch(path))
    else:
        train_gates(gated, dataset, epochs=epochs, progress=progress)
        save_torch(path, gated.state_dict())
    return TrainedGates.from_model(gated, engine.graph)


def probed_sensitivity(
    scorer: PlanScorer,
    cost: LayerwiseCost,
    *,
    model: str,
    checkpoint: Path,
    device: str,
    budget: float,
    max_sparsity: float,
    criterion: str,
    progress: bool = True,
) -> Sensitivity:
    """The sensitivity probes of the dense model at ``budget``'s uniform sparsity, made once per model, checkpoint,
    device (and its cost model), budget and scoring recipe, and cached (resumable) under the user cache directory."""
    from pruning_core.baselines import BudgetProblem

    engine = scorer.engine
    dense = cost.total(engine.graph)
    problem = BudgetProblem(engine, cost, budget * dense, max_sparsity)
    meta = getattr(cost, "meta", {})
    inputs = {
        "model": model,
        "checkpoint_sha256": sha256(checkpoint),
        "device": device,
        "cost_model": {
            "type": type(cost).__name__,
            "built": meta.get("built"),
            "granule": cost.granule,
            **({"correction": meta["correction"]["points"]} if "correction" in meta else {}),
        },
        "budget": budget,
        "max_sparsity": max_sparsity,
        "criterion": criterion,
    }
    key = hashlib.sha1(repr(sorted(inputs.items())).encode()).hexdigest()[:12]
    path = cache_dir() / "sensitivity" / f"{model_slug(model)}-{device.replace(':', '_').replace('/', '_')}-{key}.json"
    return cached_sensitivity(path, problem, scorer, inputs, criterion=criterion, progress=progress)


def probed_skipping(
    scorer: PlanScorer, *, model: str, checkpoint: Path, gate_epochs: int, progress: bool = True
) -> SkipSensitivity:
    """The skip probes of the dense model with its trained gates (:mod:`pruning_core.dynamic.probes`), made once per
    model, checkpoint, gates and scoring recipe, and cached (resumable) under the user cache directory."""
    inputs = {"model": model, "checkpoint_sha256": sha256(checkpoint), "gate_epochs": gate_epochs}
    key = hashlib.sha1(repr(sorted(inputs.items())).encode()).hexdigest()[:12]
    path = cache_dir() / "skip_probes" / f"{model_slug(model)}-{key}.json"
    return cached_skip_sensitivity(path, scorer, inputs, progress=progress)


def make_env(
    target: Target | None = None,
    *,
    model: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    data: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    device: str | None = None,
    budget: float | None = None,
    budget_metric: str | None = None,
    input_size: tuple[int, int, int] | None = None,
    reward: str = "accuracy",
    action_mode: str = "continuous",
    max_sparsity: float = 0.9,
    val_images: int = 1000,
    bn_batches: int = 10,
    finetune_steps: int = DEFAULT_FINETUNE_STEPS,
    score_bf16: bool | None = None,
    criterion: str = "l1",
    measure_final: bool = False,
    dynamic_skip: bool = False,
    gate_epochs: int = 2,
    sensitivity: bool = False,
    calibrate_latency: bool | str | os.PathLike[str] | Mapping[str, Any] = False,
    latency_table: LookupTable | None = None,
    seed: int = 0,
    render_mode: str | None = None,
    dataset: ImageDataset | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> LayerPruneEnv:
    """Build the environment from names; every bad argument fails here, not mid-episode.

    The target is given whole (``target``) or by its fields (``model`` to ``budget_metric``), not both; a field
    left out takes :class:`~envs.target.Target`'s default.

    Args:
        target: The model, checkpoint, data, device and budget.
        model: Model name of the checkpoint (checked against it; default ``small_cnn``).
        checkpoint: Dense checkpoint (default: the committed ``checkpoints/<model>_<data>.pt``).
        data: Dataset name (default ``digits``).
        data_root: Dataset folder (ImageFolder datasets).
        device: Target device (``host-cpu``, the default, ``host-cpu-ort``, ``cuda``, an analytic profile,
            ``lut:PATH``).
        budget: Fraction of the dense model's cost to reach, in (0, 1] (default 0.5).
        budget_metric: ``latency`` on the device (the default), ``macs`` or ``params``.
        input_size: ``(C, H, W)`` the model takes, checked against the data (default: the data's).
        reward: ``accuracy``, ``lagrangian`` or ``amc-flops``.
        action_mode: ``continuous`` or ``discrete``.
        max_sparsity: Largest sparsity of one group.
        val_images: Val images a plan is scored on.
        bn_batches: Training batches of BN recalibration in the score.
        finetune_steps: SGD steps of the score's short fine-tune (0: adaptive BN alone; the default was chosen by
            measurement, see :data:`pruning_core.scoring.DEFAULT_FINETUNE_STEPS`).
        score_bf16: Recalibrate and evaluate under bfloat16 autocast; ``None`` turns it on where the CPU runs
            bfloat16 natively (AMX, AVX512-BF16), where it is about twice as fast.
        criterion: Channel importance criterion of the plans.
        measure_final: Measure the final plan's latency on a measured device.
        dynamic_skip: Add a gate threshold per residual block to each action (gates trained once and cached).
        gate_epochs: Epochs of gate training when the gates are not cached yet.
        sensitivity: Probe every group (two plans each, cached: :func:`probed_sensitivity`) and give the env the
            probes: three more observation features, and the sensitivity plan as the ``scaled`` mapping's prior.
            Probed at ``budget``, or at the middle of a ``budget_range``. With ``dynamic_skip``, also skip each
            gated block for half of val (one plan per block, cached: :func:`probed_skipping`): four more features.
        calibrate_latency: On a measured device with a latency budget, time a few plans beside the dense model now
            and correct the lookup table's relative prediction with them
            (:func:`~hardware_models.correction.calibrate_cost`, recorded in ``env.budget_model.meta``), so that a
            table built on another day or host does not bend the search's budget. A path: the correction saved
            there (for the same table and budget) is reused, else made and saved there, so that several
            environments of one run share it. A mapping: such a file's contents, used as they are (nothing timed).
        latency_table: On a device measured on the host that made it, the lookup table made there (by
            :func:`cached_lut`), used here instead of this host's: an environment on a Ray worker prices plans with
            the driver's table and times nothing.
        seed: Seed recorded for reproducibility (episodes themselves are deterministic).
        render_mode: ``ansi`` or ``rgb_array``.
        dataset: An already loaded dataset (saves reloading it per environment).
        progress: Show progress bars while building caches.
        **kwargs: Passed to :class:`LayerPruneEnv` (``levels``, ``lagrange``).
    """
    named: dict[str, Any] = {"model": model, "checkpoint": checkpoint, "data": data, "data_root": data_root}
    named |= {"device": device, "budget": budget, "budget_metric": budget_metric, "input_size": input_size}
    given = {name: value for name, value in named.items() if value is not None}
    if target is None:
        target = Target(**given)
    elif given:
        raise PruneGymError(f"expected the target whole or by its fields, not both; got target and {', '.join(given)}")
    model, data, device, budget = target.model, target.data, target.device, target.budget
    ckpt_path = target.checkpoint_path
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.meta["model"] != model:
        raise PruneGymError(f"model is {model} but the checkpoint holds {ckpt.meta['model']}")
    dataset = dataset if dataset is not None else target.load_dataset(progress=progress)
    if list(dataset.classes) != list(ckpt.meta["classes"]):
        raise PruneGymError(f"checkpoint classes {ckpt.meta['classes'][:5]} differ from the dataset's")
    engine = PruningEngine(ckpt.build(run_code=model), dataset.input_shape, dataset=dataset)
    cost, measured = budget_model_for(
        target.budget_metric, device, engine.graph, model, progress=progress, table=latency_table
    )
    if calibrate_latency is not False and measured is not None and target.budget_metric == "latency":
        from hardware_models.correction import load_or_calibrate

        budget_range = kwargs.get("budget_range")
        cost = load_or_calibrate(
            None if calibrate_latency is True else calibrate_latency,
            cost,
            engine,
            measured,  # type: ignore[arg-type]
            budget=budget if budget_range is None else sum(budget_range) / 2,
            max_sparsity=max_sparsity,
        )
    gates = trained_gates(engine, dataset, ckpt_path, epochs=gate_epochs, progress=progress) if dynamic_skip else None
    config = ScoreConfig(
        val_images=val_images, bn_batches=bn_batches, finetune_steps=finetune_steps, bf16=resolve_bf16(score_bf16)
    )
    scorer = PlanScorer(engine, dataset, config, gates=gates)
    probes = None
    if sensitivity:
        budget_range = kwargs.get("budget_range")
        probes = probed_sensitivity(
            scorer,
            cost,
            model=model,
            checkpoint=ckpt_path,
            device=device,
            budget=budget if budget_range is None else sum(budget_range) / 2,
            max_sparsity=max_sparsity,
            criterion=criterion,
            progress=progress,
        )
    skip_probes = None
    if sensitivity and dynamic_skip:
        skip_probes = probed_skipping(
            scorer, model=model, checkpoint=ckpt_path, gate_epochs=gate_epochs, progress=progress
        )
    env = LayerPruneEnv(
        scorer,
        cost,
        budget=budget,
        reward=reward,
        action_mode=action_mode,
        max_sparsity=max_sparsity,
        criterion=criterion,
        measured=measured,
        measure_final=measure_final,
        dynamic_skip=dynamic_skip,
        sensitivity=probes,
        skip_sensitivity=skip_probes,
        render_mode=render_mode,
        **kwargs,
    )
    env.spec_kwargs = {
        "model": model,
        "data": data,
        "device": device,
        "budget": budget,  # type: ignore[attr-defined]
        "budget_metric": target.budget_metric,
        "seed": seed,
    }
    return env
