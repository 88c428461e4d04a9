"""A representative set of timm models (``TIMM_MODELS``: grouped, depthwise and squeeze-excitation families and two
hybrids) is pruned at 0.3 and 0.6, runs, reloads with the same outputs and exports to ONNX, or is refused in one line
(issue 33). Slow: one model per test, each in a fresh process, random weights, the smallest input it runs at."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from pruning_core.zoo import SPARSITIES, TIMM_MODELS, check_model, record, zoo_table

TABLE = os.environ.get("PRUNEGYM_ZOO_TABLE")  # when set, each model's row goes into this markdown table
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None, reason="timm is not installed (pip install 'prunegym[timm]')"
)


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_are_pruned_or_refused_in_one_line(name, tmp_path):
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(check_model, name, tmp_path).result()
    if TABLE:
        record(TABLE, result)
    if result.refused is not None:
        assert "\n" not in result.refused and result.refused
        return
    assert result.groups >= 1
    assert set(result.macs_kept) == set(SPARSITIES)
    assert all(0 < kept < 1 for kept in result.macs_kept.values())
    assert result.macs_kept[0.6] < result.macs_kept[0.3]
    assert result.reload_diff <= 1e-5
    assert all(":" in entry and "\n" not in entry for entry in result.left_dense)
    if importlib.util.find_spec("onnx") is None:
        assert result.onnx.startswith("skipped")
    else:
        assert result.onnx_ok, result.onnx
    assert f"| {name} |" in zoo_table([result])


def test_the_timm_set_is_at_least_a_dozen_families():
    assert len(TIMM_MODELS) >= 12 and all(name.startswith("timm:") for name in TIMM_MODELS)
