"""Skip gates and gated blocks: a small gate per residual block decides, per input, whether the block runs.

A gate reads the block's input (global average pooling, one linear layer, a sigmoid) and scores how much the input
needs the block (BlockDrop, CVPR 2018; SkipNet, ECCV 2018; the reference article's gated convolution). At inference
a block whose gate score is below its threshold is not executed: its output is its input (the identity shortcut).
With batch size 1 the block is skipped outright; with larger batches only the inputs that need it go through it.
A threshold of 0 never skips.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from pruning_core.engine import replace_submodule
from pruning_core.errors import PlanError
from pruning_core.graph import skippable_blocks


class SkipGate(nn.Module):
    """Global average pooling, a linear layer and a sigmoid: one score in (0, 1) per input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.constant_(self.fc.bias, 3.0)  # starts by executing every block (sigmoid(3) = 0.95)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x.mean(dim=(2, 3)))).squeeze(1)


class GatedBlock(nn.Module):
    """A residual block with an identity shortcut, wrapped with a skip gate.

    In eval mode the gate decides on its logit against the threshold's logit (the same decision as score against
    threshold, without the sigmoid), a threshold of 0 does not run the gate at all (unless a search is recording the
    gates, see :func:`search_thresholds`), and the pooling and linear layer are folded into one dot product with the
    whole input: at batch 1 on a CPU the gate's per-operation overhead is what dynamic skipping has to win back.

    Args:
        block: The block; ``block(x)`` must equal ``x`` when its residual branch is zero.
        channels: Channels of the block's input.
        threshold: Inputs whose gate score is below this skip the block (0: never skip; 1: always skip).
    """

    def __init__(self, block: nn.Module, channels: int, threshold: float = 0.0) -> None:
        super().__init__()
        self.block = block
        self.gate = SkipGate(channels)
        self.threshold = float(threshold)
        self._counts = [0, 0]  # inputs that ran the block, and inputs seen, since the last reset (eval mode)
        self.last_scores: torch.Tensor | None = None  # gate scores of the last training batch
        self._folded: tuple[Any, ...] | None = None  # the gate folded for inputs of one shape (eval; see _fold)
        self._log: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per batch: gate logits, ran (record_gates)
        self._every = False  # training: run the block for every input, gate not asked (_every_block_runs)
        self.register_load_state_dict_post_hook(_unfold_after_load)

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = float(value)
        self._cut = _logit(self._threshold)

    # The counters live in a list: nn.Module.__setattr__ costs microseconds per call, which at batch 1 counts.
    @property
    def executed(self) -> int:
        """Inputs that ran the block since the last reset (eval mode)."""
        return self._counts[0]

    @executed.setter
    def executed(self, value: int) -> None:
        self._counts[0] = value

    @property
    def seen(self) -> int:
        """Inputs the block saw since the last reset (eval mode)."""
        return self._counts[1]

    @seen.setter
    def seen(self, value: int) -> None:
        self._counts[1] = value

    def force(self, run: bool) -> None:
        """Ask the gate as usual but then always run (or always skip) the block, until the threshold is set again:
        to time the parts of a model. Only for a block whose threshold is above 0 (one at 0 asks no gate)."""
        self._cut = -math.inf if run else math.inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if self._every:
                return self.block(x)
            scores = self.gate(x)
            self.last_scores = scores
            hard = (scores >= 0.5).float()
            mask = (hard + scores - scores.detach()).view(-1, 1, 1, 1)  # straight-through estimator
            return mask * self.block(x) + (1 - mask) * x
        n = int(x.shape[0])
        counts = self._counts
        counts[1] += n
        log = self._log
        if self._threshold <= 0.0 and log is None:  # never skips: no need to ask the gate
            counts[0] += n
            return self.block(x)
        folded = self._folded
        if (
            folded is None
            or x.shape[1:] != folded[0]
            or folded[1]._version != folded[2]  # the gate's weights changed in place
            or folded[3]._version != folded[4]
        ):
            folded = self._fold(x)
        flat, bias = folded[5], folded[6]
        if n == 1 and log is None:
            if torch.dot(x.reshape(-1), flat).item() + bias >= self._cut:
                counts[0] += 1
                return self.block(x)
            return x
        logits = x.reshape(n, -1) @ flat + bias
        run = logits >= self._cut if self._threshold > 0.0 else torch.ones_like(logits, dtype=torch.bool)
        if log is not None:
            log.append((logits, run))
        count = int(run.sum())
        counts[0] += count
        if count == n:
            return self.block(x)
        if count == 0:
            return x
        out = x.clone()
        out[run] = self.block(x[run])
        return out

    def _fold(self, x: torch.Tensor) -> tuple[Any, ...]:
        """Fold the gate's pooling and linear layer into one vector over inputs shaped like ``x``.

        ``fc(mean over H, W of x) == dot(x flattened, w repeated H*W times / (H*W)) + b``: one operation instead of
        a pooling, a linear layer and a reshape: 5.4 instead of 23.3 us per gate at batch 1 on this host (median over
        resnet56's 25 gates, ``python -m scripts.bench_gate_cost``). The fold is kept until the input's shape
        changes, the gate's weights change in place (their version counters move), the module changes mode, device
        or dtype, or a state dict is loaded.
        """
        weight, bias = self.gate.fc.weight, self.gate.fc.bias
        _, h, w = x.shape[1:]
        flat = (weight.detach()[0] / (h * w)).repeat_interleave(h * w).to(x.dtype).contiguous()
        self._folded = (x.shape[1:], weight, weight._version, bias, bias._version, flat, float(bias.detach()[0]))
        return self._folded

    def _unfold(self) -> None:
        self._folded = None

    def train(self, mode: bool = True) -> GatedBlock:
        self._unfold()
        return super().train(mode)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> GatedBlock:
        self._unfold()
        return super()._apply(fn, recurse)

    def execution_rate(self) -> float:
        return self.executed / max(1, self.seen)

    def reset_counters(self) -> None:
        self.executed = 0
        self.seen = 0


def _unfold_after_load(module: GatedBlock, incompatible_keys: object) -> None:
    """A loaded state dict may have replaced the gate's tensors: fold again on the next call (a named function, so
    a model with gates still pickles)."""
    module._unfold()


def _block_channels(block: nn.Module) -> int:
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    raise PlanError("expected a residual block with a convolution")


def add_gates(model: nn.Module, blocks: list[str] | None = None) -> nn.Module:
    """A copy of ``model`` with every skippable block (or the named ones) wrapped in a :class:`GatedBlock`."""
    model = copy.deepcopy(model)
    names = skippable_blocks(model) if blocks is None else blocks
    for name in names:
        block = model.get_submodule(name)
        if isinstance(block, nn.Identity):
            continue  # removed by layer pruning
        replace_submodule(model, name, GatedBlock(block, _block_channels(block)))
    return model


def gated_blocks(model: nn.Module) -> Iterator[tuple[str, GatedBlock]]:
    for name, module in model.named_modules():
        if isinstance(module, GatedBlock):
            yield name, module


def set_thresholds(model: nn.Module, thresholds: dict[str, float]) -> None:
    """Set each named gated block's threshold (blocks not named keep theirs)."""
    blocks = dict(gated_blocks(model))
    unknown = sorted(set(thresholds) - set(blocks))
    if unknown:
        raise PlanError(f"thresholds name blocks without gates: {unknown[:4]}; gated blocks are {list(blocks)[:4]}")
    for name, value in thresholds.items():
        if not 0.0 <= value <= 1.0:
            raise PlanError(f"threshold for {name} must be in [0, 1]; got {value:g}")
        blocks[name].threshold = float(value)


def _logit(threshold: float) -> float:
    """The gate logit a block's input must reach to run the block at ``threshold``: sigmoid(z) >= t <=> z >= logit(t).

    >>> _logit(0.5), _logit(0.0), _logit(1.0)
    (0.0, -inf, inf)
    """
    if threshold <= 0.0:
        return -math.inf
    if threshold >= 1.0:
        return math.inf
    return math.log(threshold / (1.0 - threshold))
