from __future__ import annotations

import pytest
import torch

from pruning_core.checkpoint import load_checkpoint
from pruning_core.errors import CheckpointError
from pruning_core.finetune import finetune_model, finetune_recipe


class Killed(Exception):
    pass


class KilledAtEpoch:
    """A dataset whose training batches stop coming at the given epoch, as when the process is killed there."""

    def __init__(self, dataset, epoch: int) -> None:
        self._dataset, self._epoch, self._calls = dataset, epoch, 0

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def batches(self, split, *args, **kwargs):
        if split == "train":
            self._calls += 1
            if self._calls > self._epoch:
                raise Killed
        return self._dataset.batches(split, *args, **kwargs)


def _model() -> torch.nn.Module:
    return load_checkpoint("checkpoints/small_cnn_digits.pt").build()


def test_interrupted_fine_tuning_resumes_where_it_stopped(digits, tmp_path):
    config = finetune_recipe(3, lr=0.05, bf16=False)
    reference = _model()
    reference_top1 = finetune_model(reference, digits, config, progress=False)
    path = tmp_path / "ft.resume"
    model = _model()
    with pytest.raises(Killed):
        finetune_model(model, KilledAtEpoch(digits, 2), config, progress=False, resume=path)
    assert path.is_file()  # two epochs saved
    with pytest.raises(CheckpointError, match="a fine-tuning run with other settings: expected"):
        finetune_model(_model(), digits, finetune_recipe(4, lr=0.05, bf16=False), progress=False, resume=path)
    resumed = _model()
    assert finetune_model(resumed, KilledAtEpoch(digits, 1), config, progress=False, resume=path) == reference_top1
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    # a completed run returns its result at once; another starting model is refused
    assert finetune_model(_model(), KilledAtEpoch(digits, 0), config, progress=False, resume=path) == reference_top1
    other = _model()
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    with pytest.raises(CheckpointError, match="other settings"):
        finetune_model(other, digits, config, progress=False, resume=path)
