"""Each package's public API (its ``__all__``) resolves, and the lazy ones stay cheap to import."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest

PACKAGES = ["pruning_core", "hardware_models", "envs", "agents"]
LAZY_PACKAGES = ["pruning_core", "agents"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__)), "duplicates in __all__"
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing, f"{package}.__all__ names what it does not provide: {missing}"
    assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_names_come_from_the_module_named_and_match_the_type_checking_imports(package):
    module = importlib.import_module(package)
    for name, where in module._MODULE_OF.items():
        assert getattr(module, name) is getattr(importlib.import_module(f"{package}.{where}"), name)
    assert set(module._MODULE_OF) <= set(module.__all__)
    tree = ast.parse(Path(inspect.getfile(module)).read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    typed = {
        alias.name: node.module.removeprefix(f"{package}.")
        for node in guarded.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    assert typed == module._MODULE_OF


def test_unknown_names_raise_attribute_error():
    import pruning_core

    with pytest.raises(AttributeError, match="module 'pruning_core' has no attribute 'no_such_name'"):
        _ = pruning_core.no_such_name


def test_the_lazy_packages_import_neither_torch_nor_stable_baselines3_nor_ray():
    code = "import sys, pruning_core, agents; print(sorted({'torch', 'stable_baselines3', 'ray'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_importing_envs_registers_the_environment():
    import envs

    assert envs.ENV_ID == "PruneGym/LayerPrune-v0" and envs.ENV_ID in gymnasium.registry
    assert gymnasium.spec(envs.ENV_ID).entry_point == "envs.factory:make_env"
