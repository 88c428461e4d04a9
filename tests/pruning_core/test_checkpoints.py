from __future__ import annotations

import re
from pathlib import Path

import pytest

from pruning_core.checkpoint import load_checkpoint, sha256

CHECKPOINTS = sorted(Path("checkpoints").glob("*.pt"))


def test_every_committed_checkpoint_has_a_card():
    assert {p.stem for p in CHECKPOINTS} >= {"small_cnn_digits", "resnet20_cifar10", "resnet56_cifar10"}
    assert all(p.with_suffix(".md").exists() for p in CHECKPOINTS)


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.stem)
def test_card_matches_its_checkpoint(path):
    card = path.with_suffix(".md").read_text()
    assert re.search(r"sha256 `([0-9a-f]{64})`", card).group(1) == sha256(path)
    checkpoint = load_checkpoint(path)  # weights only, no pickled objects
    top1 = float(re.search(r"Test top-1: \*\*([0-9.]+)\*\*", card).group(1))
    assert checkpoint.meta["test_top1"] == pytest.approx(top1, abs=1e-4)
    assert path.stem == f"{checkpoint.meta['model']}_{checkpoint.meta['dataset']}"
    checkpoint.build()  # the weights fit the architecture the metadata names
