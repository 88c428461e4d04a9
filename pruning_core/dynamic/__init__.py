"""Dynamic skipping: a small gate per residual block decides, per input, whether the block runs.

A gate reads the block's input (global average pooling, one linear layer, a sigmoid) and scores how much the input
needs the block (BlockDrop, CVPR 2018; SkipNet, ECCV 2018; the reference article's gated convolution). At inference
a block whose gate score is below its threshold is not executed: its output is its input (the identity shortcut).
With batch size 1 the block is skipped outright; with larger batches only the inputs that need it go through it.
A threshold of 0 never skips.

Gates are trained once per base model with the backbone frozen: the forward pass uses the hard decision
(score >= 0.5) and the backward pass the score's gradient (straight-through estimator), with a penalty on the mean
execution rate. Optionally the backbone is then fine-tuned jointly with the gates, so that the blocks that still run
learn to do without the ones that are skipped (BlockDrop's joint fine-tuning stage).

One module per concern, every public name but the probes' re-exported here:

- :mod:`~pruning_core.dynamic.gates`: the gate and the gated block, adding gates to a model, setting thresholds;
- :mod:`~pruning_core.dynamic.gate_training`: training the gates (and optionally the backbone with them);
- :mod:`~pruning_core.dynamic.thresholds`: the greedy per-block threshold search;
- :mod:`~pruning_core.dynamic.trained`: trained gates carried from the dense model to its pruned variants;
- :mod:`~pruning_core.dynamic.timing`: per-image timing, execution rates, expected latency and the profile;
- :mod:`~pruning_core.dynamic.probes`: the skip probes an agent observes (imported from there: they use the
  search's scorer, which imports this package).
"""

from __future__ import annotations

from pruning_core.dynamic.gate_training import GateTrainingReport, train_gates
from pruning_core.dynamic.gate_training import _gate_loss as _gate_loss  # for the tests of the loss
from pruning_core.dynamic.gates import GatedBlock, SkipGate, add_gates, gated_blocks, set_thresholds
from pruning_core.dynamic.thresholds import DEFAULT_SEARCH_LEVELS, ThresholdStep, search_thresholds
from pruning_core.dynamic.timing import (
    DynamicParts,
    DynamicProfile,
    execution_rates,
    expected_latency,
    profile_from_rows,
    time_models_per_image,
    time_per_image,
)
from pruning_core.dynamic.trained import TrainedGates

__all__ = [
    "DEFAULT_SEARCH_LEVELS",
    "DynamicParts",
    "DynamicProfile",
    "GateTrainingReport",
    "GatedBlock",
    "SkipGate",
    "ThresholdStep",
    "TrainedGates",
    "add_gates",
    "execution_rates",
    "expected_latency",
    "gated_blocks",
    "profile_from_rows",
    "search_thresholds",
    "set_thresholds",
    "time_models_per_image",
    "time_per_image",
    "train_gates",
]
