"""The record of one pruned model: what ``finish_plan`` reports, ``report.json`` holds and ``results.json`` lists.

One set of field names from the method that made the model to the benchmark's files: :meth:`MethodRecord.to_dict`
is the JSON layout (a field that is None is left out), :meth:`MethodRecord.from_dict` reads it back, and records
written before the fields had these names too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from pruning_core.errors import PruneGymError


@dataclass(frozen=True)
class MethodRecord:
    """One method's pruned model: its cost, accuracies, search effort and, where they ran, the measured budget
    check, the measured latency and the benchmark's bookkeeping. Accuracies are top-1 fractions.

    >>> record = MethodRecord(
    ...     method="uniform-l1", budget=0.5, device="pixel-a76", budget_met=True, macs=500, params=50,
    ...     dense_macs=1000, dense_params=100, val_top1_pruned=0.2, test_top1_pruned=0.2, val_top1=0.8,
    ...     test_top1_bn=0.79, test_top1_finetuned=0.9, search_seconds=0.1, evaluations=0,
    ...     bn_recalibration="augmented", sparsity={"conv1": 0.5}, latency_ms_predicted=1.0,
    ... )
    >>> record.to_dict()["test_top1_finetuned"], "seed" in record.to_dict()
    (0.9, False)
    >>> MethodRecord.from_dict(record.to_dict()) == record
    True
    """

    method: str
    """The method that made the plan (``uniform-l1``, ``ppo``, ``policy`` for an applied policy, ...)."""
    budget: float
    """The budget, a fraction of the dense model's cost under the budget metric (latency on the device)."""
    device: str
    """The device whose latency model priced the plan (the cost model's class under a MACs or parameter budget)."""
    budget_met: bool
    """Whether the budget model prices the pruned model within the budget."""
    macs: int
    """MACs (batch 1) of the pruned model's conv and linear layers."""
    params: int
    """Parameters of the pruned model."""
    dense_macs: int
    """MACs of the dense model."""
    dense_params: int
    """Parameters of the dense model."""
    val_top1_pruned: float
    """Val top-1 right after pruning."""
    test_top1_pruned: float
    """Test top-1 right after pruning."""
    val_top1: float
    """Val top-1 after BatchNorm recalibration: what the searches score."""
    test_top1_bn: float
    """Test top-1 after BatchNorm recalibration."""
    test_top1_finetuned: float
    """Test top-1 of the model delivered: after fine-tuning, or after BatchNorm recalibration where it was not
    fine-tuned (``val_top1_finetuned`` is then None)."""
    search_seconds: float
    """Wall seconds the method took to make its plan."""
    evaluations: int
    """Candidate plans the method scored (sensitivity probes included)."""
    bn_recalibration: str
    """The batches of the BatchNorm recalibration: ``augmented`` training batches, or ``clean`` in older records."""
    sparsity: dict[str, float]
    """Per group, the sparsity of the plan fine-tuned (after the measured budget check, where one ran)."""
    val_top1_finetuned: float | None = None
    """Val top-1 of the best fine-tuning epoch (None: not fine-tuned)."""
    latency_ms_predicted: float | None = None
    """The latency model's prediction for the pruned model on the device, ms (None under a MACs or parameter
    budget)."""
    dense_latency_ms_predicted: float | None = None
    """The latency model's prediction for the dense model, ms (None under a MACs or parameter budget)."""
    test_top1_gated: float | None = None
    """Test top-1 with the plan's skip gates (None: no gates)."""
    exec_rate_test: dict[str, float] | None = None
    """Per gated block, the fraction of test images that execute it."""
    latency_ms_expected: float | None = None
    """The latency model's prediction with each gated block weighted by its execution rate, ms."""
    latency_ratio_before_check: float | None = None
    """Measured budget check: the searched plan's latency over the dense model's, before the check moved it."""
    latency_ratio_after_check: float | None = None
    """Measured budget check: the reading of the plan it kept."""
    thinned_by: float | None = None
    """Measured budget check: the fraction of the way to the thinnest plan the plan moved (negative: widened)."""
    check_steps: int | None = None
    """Measured budget check: the plans tried after the searched one."""
    check_ratios: tuple[float, ...] | None = None
    """Measured budget check: the reading of every plan it tried, in order."""
    latency_ratio_confirmed: float | None = None
    """Measured budget check: one more reading of the plan it kept, all kept plans together."""
    checked_with: int | None = None
    """Measured budget check: how many plans were checked together."""
    latency_timing: str | None = None
    """Where the final latency was timed: ``worker`` (a fresh timing process) or ``process`` (this one)."""
    latency_ms_measured: float | None = None
    """The pruned model's measured latency on this host, ms (median of the rounds)."""
    dense_latency_ms_measured: float | None = None
    """The dense model's latency, timed beside it, ms."""
    latency_ratios_measured: tuple[float, ...] | None = None
    """The pruned model's latency over the dense model's, one per interleaved round."""
    latency_ratio_final: float | None = None
    """The median of ``latency_ratios_measured``."""
    latency_ratio_measured: float | None = None
    """The verdict's ratio: the mean of ``latency_ratio_final`` and ``latency_ratio_confirmed`` where there is one
    (see :func:`agents.apply.measured_verdict`)."""
    budget_met_measured: bool | None = None
    """Whether ``latency_ratio_measured`` is within the budget (None under a MACs or parameter budget)."""
    seed: int | None = None
    """Benchmark: the seed of the search and of the fine-tuning."""
    sparsity_searched: dict[str, float] | None = None
    """Benchmark: the plan the method searched, before the measured budget check."""
    search_cpu_seconds: float | None = None
    """Benchmark: the search's CPU seconds (all threads)."""
    finish_seconds: float | None = None
    """Benchmark: wall seconds of pruning, BatchNorm recalibration, fine-tuning and measuring."""
    finish_cpu_seconds: float | None = None
    """Benchmark: CPU seconds of the same."""
    search_reused: bool | None = None
    """Benchmark: whether the plan came from an earlier search (``plans/``, or a record finished again)."""
    finished: str | None = None
    """Benchmark: when the record was finished (``YYYY-MM-DDTHH:MM:SS``)."""
    rerank: dict[str, Any] | None = None
    """Benchmark: the search's finalists scored again with a short fine-tune
    (:meth:`~pruning_core.finalists.Reranked.to_dict`: ``picked``, ``search_scores``, ``scores``, ``evaluations``,
    ``seconds``; the last two are included in ``evaluations`` and ``search_seconds``)."""

    @property
    def latency_ratio_expected(self) -> float | None:
        """A gated model's latency relative to dense as its latency model expects it at its blocks' execution rates
        (None: no gates, or not a latency budget)."""
        if self.latency_ms_expected is None or not self.dense_latency_ms_predicted:
            return None
        return self.latency_ms_expected / self.dense_latency_ms_predicted

    @property
    def measured_over_expected(self) -> float | None:
        """A gated model's measured latency ratio to dense over :attr:`latency_ratio_expected` (1: the expectation
        holds; None: no gates, not measured, or not a latency budget)."""
        expected = self.latency_ratio_expected
        if expected is None or self.latency_ratio_final is None:
            return None
        return round(self.latency_ratio_final / expected, 12)

    def to_dict(self) -> dict[str, Any]:
        """The record as ``report.json`` and ``results.json`` hold it: every field that is not None."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple | dict):  # copies, as JSON has them: a list, an object
                value = list(value) if isinstance(value, tuple) else dict(value)
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodRecord:
        """A record read back from :meth:`to_dict`'s layout, or from the layout written before the fields had these
        names (``val_bn``, ``test_finetuned``, ``cost_predicted``, ...; the benchmark's records held both).

        Raises:
            PruneGymError: A key is unknown, or a field that every record has is missing.
        """
        data = dict(data)
        for old, new in _OLD_NAMES.items():
            if old in data:
                value = data.pop(old)
                latency = old not in _OLD_COSTS or data.get("device") not in _COST_DEVICES
                if new not in data and latency:
                    data[new] = value
        if "test_top1_finetuned" not in data and "test_top1_bn" in data:  # not fine-tuned: the BN model delivered
            data["test_top1_finetuned"] = data["test_top1_bn"]
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PruneGymError(f"record has unknown keys {unknown}; expected some of {sorted(known)}")
        missing = [name for name, f in known.items() if f.default is MISSING and name not in data]
        if missing:
            raise PruneGymError(f"expected a record with {missing}; got keys {sorted(data)}")
        values: dict[str, Any] = {k: tuple(v) if k in _SEQUENCES and v is not None else v for k, v in data.items()}
        return cls(**values)


_SEQUENCES = ("check_ratios", "latency_ratios_measured")
_OLD_NAMES = {
    "val_pruned": "val_top1_pruned",
    "test_pruned": "test_top1_pruned",
    "val_bn": "val_top1",
    "test_bn": "test_top1_bn",
    "val_finetuned": "val_top1_finetuned",
    "test_finetuned": "test_top1_finetuned",
    "test_gated": "test_top1_gated",
    "cost_predicted": "latency_ms_predicted",
    "dense_cost_predicted": "dense_latency_ms_predicted",
    "cost_expected": "latency_ms_expected",
}
"""Names records had before this layout, and theirs in it."""
_OLD_COSTS = ("cost_predicted", "dense_cost_predicted", "cost_expected")
_COST_DEVICES = ("MacsCost", "ParamsCost")
"""The ``device`` of an old record under a MACs or parameter budget, whose ``cost_*`` keys are no latency."""
