"""A representative set of timm models (``TIMM_MODELS``: grouped, depthwise and squeeze-excitation families and two
hybrids) is pruned at 0.3 and 0.6, runs, reloads with the same outputs and exports to ONNX, or is refused in one line
(issue 33). Slow: one model per test, each in a fresh process, random weights, the smallest input it runs at."""

from __future__ import annotations

import importlib.util

import pytest

from pruning_core.zoo import TIMM_MODELS
from tests.pruning_core.zoo_check import assert_pruned_or_refused

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None, reason="timm is not installed (pip install 'prunegym[timm]')"
)


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_are_pruned_or_refused_in_one_line(name, tmp_path):
    assert_pruned_or_refused(name, tmp_path)


def test_the_timm_set_is_at_least_a_dozen_families():
    assert len(TIMM_MODELS) >= 12 and all(name.startswith("timm:") for name in TIMM_MODELS)
