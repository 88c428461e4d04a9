"""Every torchvision classifier is pruned at 0.3 and 0.6, runs, reloads with the same outputs and exports to ONNX,
or is refused in one line (issue 33). Slow: one model per test, random weights, the smallest input it runs at."""

from __future__ import annotations

import os
import re

import pytest
import torchvision

from tests.pruning_core.zoo_check import assert_pruned_or_refused

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


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKED)
def test_every_torchvision_classifier_is_pruned_or_refused_in_one_line(name, tmp_path):
    assert_pruned_or_refused(f"tv:{name}", tmp_path)
