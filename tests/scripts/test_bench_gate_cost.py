import json

import pytest
import torch

from pruning_core.checkpoint import save_torch
from pruning_core.dynamic import add_gates
from pruning_core.engine import PruningEngine
from pruning_core.models import build_model
from pruning_core.plan import PruningPlan
from pruning_core.serialize import save_pruned
from scripts.bench_gate_cost import main


def test_gate_cost_is_timed_beside_the_static_model(tmp_path, capsys):
    torch.manual_seed(0)
    engine = PruningEngine(build_model("resnet20"), (3, 32, 32))
    pruned = engine.apply(PruningPlan.uniform(engine.group_names, 0.3))
    save_pruned(tmp_path / "static", pruned, base_model="resnet20", classes=[str(i) for i in range(10)])
    save_torch(tmp_path / "gates.pt", add_gates(pruned.model).state_dict())
    main(["--report", str(tmp_path), "--rounds", "2", "--calls", "1", "--out", str(tmp_path / "cost.json")])
    figures = json.loads((tmp_path / "cost.json").read_text())
    assert figures["gates"] == 7 and figures["static_ms"] > 0  # resnet20: 9 blocks, 2 downsampling
    assert figures["gates_asked_over_static"] > 0 and set(figures["median_gate_us"]) == {
        "pool_linear_item",
        "folded_dot_item",
    }
    assert "every gate asked and every block run" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="expected a dynamic report folder"):
        main(["--report", str(tmp_path / "none")])
