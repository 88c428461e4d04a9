"""Skip probes: what each gated block's gate says about val, and what skipping the block costs.

The dynamic counterpart of :mod:`pruning_core.sensitivity`. For each gated block of the dense model, with its trained
gate and the search's scorer (BN recalibration, val):

- the distribution of its gate scores on the scorer's val images (a threshold of ``t`` skips the inputs that score
  below ``t``, so the distribution says how many inputs a threshold skips);
- a probe: the block skipped, alone, for the share of val inputs its gate scores lowest (the easiest ones for this
  block), and the val accuracy that leaves.

A policy that chooses thresholds observes both (:class:`envs.layer_prune.LayerPruneEnv`): which blocks a threshold
would skip often, and which blocks cost accuracy when skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pruning_core.dynamic.gates import gated_blocks
from pruning_core.dynamic.thresholds import record_gates
from pruning_core.errors import PruneGymError
from pruning_core.plan import PruningPlan
from pruning_core.scoring import PlanScorer

SKIP_PROBE_SHARE = 0.5
"""The share of val inputs each skip probe skips its block for (those its gate scores lowest)."""

SCORE_QUANTILES = (0.1, 0.5, 0.9)
"""The quantiles of each block's gate scores on val that the probes record."""


@dataclass(frozen=True)
class SkipProbe:
    """One gated block: its gate's scores on val, and the block skipped alone for its lowest-scoring inputs."""

    quantiles: tuple[float, ...]
    """Gate scores on val at :data:`SCORE_QUANTILES`."""
    threshold: float
    """The threshold of the probe: inputs scoring below it skip the block."""
    exec_rate: float
    """Share of val inputs that ran the block in the probe."""
    top1: float
    """Val top-1 of the probe (the scorer's recipe)."""


@dataclass(frozen=True)
class SkipSensitivity:
    """Every gated block's skip probe, and the dense model's score on the same yardstick."""

    dense_top1: float
    share: float
    """The share of val inputs each probe was meant to skip."""
    probes: Mapping[str, SkipProbe]
    evaluations: int
    """Plans scored to make the probes (the dense one included)."""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    """What the probes depend on (model, checkpoint, gates, scoring recipe), for reuse."""

    def drop(self, block: str) -> float:
        """Val top-1 lost (>= 0) with ``block`` skipped for its probe's share of inputs."""
        return max(0.0, self.dense_top1 - self.probes[block].top1)

    def features(self) -> dict[str, tuple[float, ...]]:
        """Per block, in [0, 1]: the gate-score quantiles, then the probe's drop relative to dense.

        >>> s = SkipSensitivity(0.9, 0.5, {"b": SkipProbe((0.2, 0.6, 0.9), 0.6, 0.5, 0.81)}, 2)
        >>> tuple(round(x, 3) for x in s.features()["b"])
        (0.2, 0.6, 0.9, 0.1)
        """
        return {
            name: (*p.quantiles, min(1.0, self.drop(name) / max(self.dense_top1, 1e-9)))
            for name, p in self.probes.items()
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "dense_top1": self.dense_top1,
                "share": self.share,
                "probes": {name: asdict(p) for name, p in self.probes.items()},
                "evaluations": self.evaluations,
                "inputs": dict(self.inputs),
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SkipSensitivity:
        data = json.loads(text)
        probes = {n: SkipProbe(**{**p, "quantiles": tuple(p["quantiles"])}) for n, p in data["probes"].items()}
        return cls(data["dense_top1"], data["share"], probes, data["evaluations"], data.get("inputs", {}))


def gate_scores(scorer: PlanScorer) -> dict[str, torch.Tensor]:
    """Each gated block's gate score per val image the scorer reads, on the dense model after the scorer's recipe
    (recalibration, short fine-tune), with every block run (the scores a threshold is compared with).

    Raises:
        PruneGymError: The scorer has no trained gates.
    """
    if scorer.gates is None:
        raise PruneGymError("expected a scorer with trained gates (make_env(dynamic_skip=True) trains them); got none")
    pruned = scorer.prune_and_adapt(PruningPlan())
    pairs = list(scorer.dataset.batches("val", 256, limit=scorer.config.val_images))
    images, labels = torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])
    with torch.no_grad():  # not inference_mode: the scorer evaluates gates fitted the same way again
        gated = scorer.gates.fit(pruned.model, pruned.kept_channels, dict.fromkeys(scorer.gates.weights, 0.0))
        record = record_gates(gated, dict(gated_blocks(gated)), images, labels, torch.arange(len(labels)), 256)
    return {name: torch.sigmoid(z.float()) for name, z in record.logits.items()}


def skip_threshold(scores: torch.Tensor, share: float) -> float:
    """The threshold that skips the ``share`` of inputs scoring lowest: halfway between the last one skipped and the
    first one run (kept in (0, 1], so that it does skip).

    >>> skip_threshold(torch.tensor([0.9, 0.1, 0.5, 0.3]), 0.5)
    0.4
    """
    ordered = torch.sort(scores.flatten()).values
    k = min(len(ordered), max(1, round(share * len(ordered))))
    below, above = float(ordered[k - 1]), float(ordered[k]) if k < len(ordered) else 1.0
    return round(min(1.0, max(1e-6, (below + above) / 2)), 6)


def probe_skipping(
    scorer: PlanScorer,
    *,
    share: float = SKIP_PROBE_SHARE,
    inputs: Mapping[str, Any] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> SkipSensitivity:
    """Skip each gated block alone for the ``share`` of val inputs its gate scores lowest, and score the plan.

    Args:
        scorer: The search's scorer, with trained gates; its cache keeps the probes.
        share: The share of val inputs each probe skips its block for, in (0, 1).
        inputs: Recorded with the result (what the probes depend on).
        on_step: Called with (plans scored, plans to score) after each.

    Raises:
        PruneGymError: ``share`` is outside (0, 1), or the scorer has no trained gates.
    """
    if not 0.0 < share < 1.0:
        raise PruneGymError(f"expected a skip probe share in (0, 1); got {share:g}")
    scores = gate_scores(scorer)
    total, done, scored = 1 + len(scores), 0, 0

    def score(plan: PruningPlan) -> tuple[float, dict[str, float]]:
        nonlocal done, scored
        result = scorer.score(plan)
        done += 1
        scored += 0 if result.cached else 1
        if on_step is not None:
            on_step(done, total)
        return result.top1, result.exec_rate

    dense_top1, _ = score(PruningPlan())
    probes = {}
    for name, values in scores.items():
        threshold = skip_threshold(values, share)
        top1, rates = score(PruningPlan(skip_thresholds={name: threshold}))
        quantiles = tuple(round(float(torch.quantile(values, q)), 6) for q in SCORE_QUANTILES)
        probes[name] = SkipProbe(quantiles, threshold, rates[name], top1)
    return SkipSensitivity(dense_top1, share, probes, scored, dict(inputs or {}))


def cached_skip_sensitivity(
    path: str | os.PathLike[str],
    scorer: PlanScorer,
    inputs: Mapping[str, Any],
    *,
    share: float = SKIP_PROBE_SHARE,
    progress: bool = False,
) -> SkipSensitivity:
    """The skip probes of ``scorer``'s model, read from ``path`` when made there from the same ``inputs``, else made
    and saved. Every probe's score is logged as it is made (``path`` with ``.jsonl``), so probing interrupted and
    started again scores only what it had not. ``inputs`` must name what the scores depend on besides the scoring
    recipe, which is added: the model, its checkpoint and its gates.
    """
    path = Path(path)
    key = json.loads(json.dumps({**inputs, "scoring": asdict(scorer.config), "share": share}))
    if path.is_file():
        saved = SkipSensitivity.from_json(path.read_text())
        if saved.inputs == key:
            return saved
    from pruning_core.sensitivity import logged_probes

    return logged_probes(
        path,
        scorer,
        key,
        lambda on_step: probe_skipping(scorer, share=share, inputs=key, on_step=on_step),
        total=1 + len(scorer.gates.weights if scorer.gates else ()),
        desc="skip probes" if progress else None,
    )
