"""Names a package loads on first use (PEP 562): importing a light module of the package (the decode pool,
the errors, the command line's options) then imports nothing heavy, torch included."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """The package's `__getattr__`: `exports` maps a name to the module (relative to `package`) holding it."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    return __getattr__


def lazy_names(by_module: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """{module: names} -> {name: module}, the form `lazy_exports` takes."""
    return {name: module for module, names in by_module.items() for name in names}
