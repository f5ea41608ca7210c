"""Package namespaces whose names are imported from their modules on first use (PEP 562).

The command line imports several packages for every command, and ``loretta-ds --help`` should not
wait for torch or datasets: a package lists which module holds each public name, and a name's
module is imported only when the name is first read.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_names(package: str, where: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], object]]:
    """(``__all__``, ``__getattr__``) for ``package``: each name in ``where[module]`` is read from
    ``package.module`` the first time it is asked for, then kept in the package's namespace."""
    module_of = {name: module for module, names in where.items() for name in names}

    def __getattr__(name: str):
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module_of[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return sorted(module_of), __getattr__
