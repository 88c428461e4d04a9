"""stable-baselines3 agents trained per target device, policy application, and the benchmark of every method.

The public API is below, in ``__all__``. Each name is imported from its module on first use (PEP 562), so
``import agents`` does not import stable-baselines3 and torch (about 2 s) until something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pruning_core.lazy import lazy_exports

if TYPE_CHECKING:
    from agents.apply import MethodResult, apply_policy, finish_plan, meet_measured_budget, plan_from_policy
    from agents.benchmark import ALL_METHODS, BenchmarkConfig, rewrite_tables, run_benchmark
    from agents.compare import SEARCH_METHODS, YardstickConfig, YardstickRow, compare_searches
    from agents.dynamic import DynamicReport, DynamicReportConfig, run_dynamic_report
    from agents.dynamic_tables import write_dynamic_tables
    from agents.policy_io import SavedPolicy, load_policy, save_policy
    from agents.record import MethodRecord
    from agents.train import ALGOS, RunResult, SearchCallback, TrainRunConfig, best_plan, train_agent

_LAZY: dict[str, tuple[str, ...]] = {
    "apply": ("MethodResult", "apply_policy", "finish_plan", "meet_measured_budget", "plan_from_policy"),
    "benchmark": ("ALL_METHODS", "BenchmarkConfig", "rewrite_tables", "run_benchmark"),
    "compare": ("SEARCH_METHODS", "YardstickConfig", "YardstickRow", "compare_searches"),
    "dynamic": ("DynamicReport", "DynamicReportConfig", "run_dynamic_report"),
    "dynamic_tables": ("write_dynamic_tables",),
    "policy_io": ("SavedPolicy", "load_policy", "save_policy"),
    "record": ("MethodRecord",),
    "train": ("ALGOS", "RunResult", "SearchCallback", "TrainRunConfig", "best_plan", "train_agent"),
}
"""The module of this package behind each public name; imported on first use."""

__all__ = [
    "ALGOS",
    "ALL_METHODS",
    "SEARCH_METHODS",
    "BenchmarkConfig",
    "DynamicReport",
    "DynamicReportConfig",
    "MethodRecord",
    "MethodResult",
    "RunResult",
    "SavedPolicy",
    "SearchCallback",
    "TrainRunConfig",
    "YardstickConfig",
    "YardstickRow",
    "apply_policy",
    "best_plan",
    "compare_searches",
    "finish_plan",
    "load_policy",
    "meet_measured_budget",
    "plan_from_policy",
    "rewrite_tables",
    "run_benchmark",
    "run_dynamic_report",
    "save_policy",
    "train_agent",
    "write_dynamic_tables",
]


_MODULE_OF, __getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
