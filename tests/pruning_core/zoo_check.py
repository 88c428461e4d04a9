"""The zoo tests' one check of a model, shared by the torchvision and timm lists."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pruning_core.zoo import SPARSITIES, check_model, record, zoo_table

TABLE = os.environ.get("PRUNEGYM_ZOO_TABLE")  # when set, each model's row goes into this markdown table


def assert_pruned_or_refused(spec: str, tmp_path: Path) -> None:
    """Check ``spec`` in a fresh process (one long-lived process ran out of memory at vit_h_14 after 70 models): it is
    refused in one line, or pruned at every sparsity, reloaded with the same outputs and exported."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(check_model, spec, tmp_path).result()
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
    assert f"| {spec} |" in zoo_table([result])
