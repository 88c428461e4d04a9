"""The one pruning engine shared by the agent and every heuristic baseline.

The public API is below, in ``__all__``. Besides the errors, each name is imported from its module on first use
(PEP 562), so ``import pruning_core`` stays free of torch and Torch-Pruning (about 1.5 s) until something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pruning_core.errors import (
    BudgetInfeasibleError,
    CheckpointError,
    DataError,
    IncompatiblePolicyError,
    PlanError,
    PruneGymError,
    UnsupportedModelError,
)
from pruning_core.lazy import lazy_exports

if TYPE_CHECKING:
    from pruning_core.baselines import BASELINES, BudgetProblem, baseline_plan, global_plan, uniform_plan
    from pruning_core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from pruning_core.data import ImageDataset, load_dataset
    from pruning_core.dynamic import (
        DynamicParts,
        DynamicProfile,
        add_gates,
        gated_blocks,
        search_thresholds,
        set_thresholds,
        train_gates,
    )
    from pruning_core.engine import PrunedModel, PruningEngine, apply_plan, describe, recalibrate_bn
    from pruning_core.executor import Executor, LocalExecutor, RayExecutor, make_executor
    from pruning_core.export import ExportReport, export_onnx, quantize_int8
    from pruning_core.finalists import Finalists, Reranked, rerank, rerank_scorer
    from pruning_core.finetune import finetune_model, finetune_recipe, prune_and_finetune
    from pruning_core.graph import LayerType, ModelGraph, PrunableGroup, UnprunableLayer, build_dependency_graph
    from pruning_core.importance import CRITERIA, Criterion, make_criterion
    from pruning_core.metrics import LayerwiseCost, MacsCost, ModelCost, ParamsCost, count_cost
    from pruning_core.models import build_model, default_input_shape, model_names
    from pruning_core.plan import MAX_SPARSITY, Granularity, PruningPlan
    from pruning_core.scoring import PlanScorer, Score, ScoreConfig
    from pruning_core.search import SearchResult, greedy_search, random_search, tpe_search
    from pruning_core.sensitivity import Probe, Sensitivity, cached_sensitivity, probe_sensitivity, sensitivity_plan
    from pruning_core.serialize import LoadedPruned, load_pruned, save_pruned
    from pruning_core.training import EvalResult, TrainConfig, evaluate, pretrain

_LAZY: dict[str, tuple[str, ...]] = {
    "baselines": ("BASELINES", "BudgetProblem", "baseline_plan", "global_plan", "uniform_plan"),
    "checkpoint": ("Checkpoint", "load_checkpoint", "save_checkpoint"),
    "data": ("ImageDataset", "load_dataset"),
    "dynamic": (
        "DynamicParts",
        "DynamicProfile",
        "add_gates",
        "gated_blocks",
        "search_thresholds",
        "set_thresholds",
        "train_gates",
    ),
    "engine": ("PrunedModel", "PruningEngine", "apply_plan", "describe", "recalibrate_bn"),
    "executor": ("Executor", "LocalExecutor", "RayExecutor", "make_executor"),
    "export": ("ExportReport", "export_onnx", "quantize_int8"),
    "finalists": ("Finalists", "Reranked", "rerank", "rerank_scorer"),
    "finetune": ("finetune_model", "finetune_recipe", "prune_and_finetune"),
    "graph": ("LayerType", "ModelGraph", "PrunableGroup", "UnprunableLayer", "build_dependency_graph"),
    "importance": ("CRITERIA", "Criterion", "make_criterion"),
    "metrics": ("LayerwiseCost", "MacsCost", "ModelCost", "ParamsCost", "count_cost"),
    "models": ("build_model", "default_input_shape", "model_names"),
    "plan": ("MAX_SPARSITY", "Granularity", "PruningPlan"),
    "scoring": ("PlanScorer", "Score", "ScoreConfig"),
    "search": ("SearchResult", "greedy_search", "random_search", "tpe_search"),
    "sensitivity": ("Probe", "Sensitivity", "cached_sensitivity", "probe_sensitivity", "sensitivity_plan"),
    "serialize": ("LoadedPruned", "load_pruned", "save_pruned"),
    "training": ("EvalResult", "TrainConfig", "evaluate", "pretrain"),
}
"""The module of this package behind each public name but the errors; imported on first use."""

__all__ = [
    "BASELINES",
    "CRITERIA",
    "MAX_SPARSITY",
    "BudgetInfeasibleError",
    "BudgetProblem",
    "Checkpoint",
    "CheckpointError",
    "Criterion",
    "DataError",
    "DynamicParts",
    "DynamicProfile",
    "EvalResult",
    "Executor",
    "ExportReport",
    "Finalists",
    "Granularity",
    "ImageDataset",
    "IncompatiblePolicyError",
    "LayerType",
    "LayerwiseCost",
    "LoadedPruned",
    "LocalExecutor",
    "MacsCost",
    "ModelCost",
    "ModelGraph",
    "ParamsCost",
    "PlanError",
    "PlanScorer",
    "Probe",
    "PrunableGroup",
    "PruneGymError",
    "PrunedModel",
    "PruningEngine",
    "PruningPlan",
    "RayExecutor",
    "Reranked",
    "Score",
    "ScoreConfig",
    "SearchResult",
    "Sensitivity",
    "TrainConfig",
    "UnprunableLayer",
    "UnsupportedModelError",
    "add_gates",
    "apply_plan",
    "baseline_plan",
    "build_dependency_graph",
    "build_model",
    "cached_sensitivity",
    "count_cost",
    "default_input_shape",
    "describe",
    "evaluate",
    "export_onnx",
    "finetune_model",
    "finetune_recipe",
    "gated_blocks",
    "global_plan",
    "greedy_search",
    "load_checkpoint",
    "load_dataset",
    "load_pruned",
    "make_criterion",
    "make_executor",
    "model_names",
    "pretrain",
    "probe_sensitivity",
    "prune_and_finetune",
    "quantize_int8",
    "random_search",
    "recalibrate_bn",
    "rerank",
    "rerank_scorer",
    "save_checkpoint",
    "save_pruned",
    "search_thresholds",
    "sensitivity_plan",
    "set_thresholds",
    "tpe_search",
    "train_gates",
    "uniform_plan",
]


_MODULE_OF, __getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
