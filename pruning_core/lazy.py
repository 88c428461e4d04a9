"""Names a package exports from its modules, imported on first use (PEP 562): the package's ``__init__`` stays
free of heavy imports (torch, stable-baselines3) until something needs them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, modules: Mapping[str, tuple[str, ...]], public: list[str]
) -> tuple[dict[str, str], Callable[[str], object], Callable[[], list[str]]]:
    """The module behind each lazily exported name, and the package's ``__getattr__`` and ``__dir__``.

    Args:
        package: The package's ``__name__``.
        modules: Each module of the package (relative name) and the public names it provides.
        public: The package's ``__all__``.

    >>> module_of, getattr_, _ = lazy_exports("pruning_core", {"plan": ("PruningPlan",)}, ["PruningPlan"])
    >>> module_of, getattr_("PruningPlan").__name__
    ({'PruningPlan': 'plan'}, 'PruningPlan')
    """
    module_of = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # the next lookup finds it without this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return module_of, __getattr__, __dir__
