"""Every torchvision classifier is pruned at 0.3 and 0.6, runs, reloads with the same outputs and exports to ONNX,
or is refused in one line (issue 33). Slow: one model per test, random weights, the smallest input it runs at."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor

import pytest
import torchvision

from pruning_core.zoo import SPARSITIES, check_model, record, zoo_table

TORCHVISION = torchvision.models.list_models(module=torchvision.models)


def smallest_of_each_family(names: list[str]) -> list[str]:
    """The model with the fewest parameters of each family (resnet, resnext, regnet_x, shufflenet_v2, vit, ...), from
    torchvision's weight metadata (nothing is downloaded)."""
    smallest: dict[str, tuple[int, str]] = {}
    for name in names:
        family = re.match(r"[a-z]+(_v\d|_[xy])?", name)
        size = next(iter(torchvision.models.get_model_weights(name))).meta["num_params"]
        key = family.group(0) if family else name
        smallest[key] = min(smallest.get(key, (size, name)), (size, name))
    return sorted(name for _, name in smallest.values())


# The whole list takes over an hour here (regnet_y_128gf, vit_h_14, ...): `make test` checks each family's smallest
# model, PRUNEGYM_ZOO=all every model (benchmarks/zoo_torchvision.md was made so).
CHECKED = TORCHVISION if os.environ.get("PRUNEGYM_ZOO") == "all" else smallest_of_each_family(TORCHVISION)
TABLE = os.environ.get("PRUNEGYM_ZOO_TABLE")  # when set, each model's row goes into this markdown table


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKED)
def test_every_torchvision_classifier_is_pruned_or_refused_in_one_line(name, tmp_path):
    # each model in a fresh process: one long-lived process ran out of memory at vit_h_14 after 70 models
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(check_model, f"tv:{name}", tmp_path).result()
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
    assert f"| tv:{name} |" in zoo_table([result])
