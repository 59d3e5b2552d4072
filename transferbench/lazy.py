"""Packages whose public names are imported on first use (PEP 562), so that importing a package, or a light module
inside it, does not pull in torch, pandas or matplotlib: ``transferbench --help`` and the listings stay fast.

A package's ``__init__`` names its public API once, by the submodule that defines each name::

    lazy_package(__name__, {".plan": ("Plan", "plan_sweep"), ".sweep": ("load_sweep",)})

and keeps the same names in a ``TYPE_CHECKING`` block for type checkers and IDEs.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterable, Mapping


class _LazyPackage(types.ModuleType):
    """A package module whose public names resolve on first use; ``_lazy_exports`` maps each to its submodule."""

    _lazy_exports: dict[str, str]

    def __getattr__(self, name: str) -> object:
        where = self.__dict__.get("_lazy_exports", {})
        if name not in where:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], self.__name__), name)
        self.__dict__[name] = value  # cached: later look-ups are plain attribute reads
        return value

    def __setattr__(self, name: str, value: object) -> None:
        # the import system binds every imported submodule on its package; a public name spelled as its submodule
        # (report.collect, the function and the module) stays the function, as an eager `from .collect import
        # collect` in __init__ left it
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_lazy_exports", {}):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("_lazy_exports", {})))


def lazy_package(package: str, exports: Mapping[str, Iterable[str]]) -> None:
    """Make the package ``package`` (its ``__name__``, called from its ``__init__``) resolve each name of
    ``exports`` (a submodule, relative as ``.plan`` or absolute, mapped to the names it defines) on first use."""
    module = sys.modules[package]
    listed = [(name, submodule) for submodule, names in exports.items() for name in names]
    where = dict(listed)
    duplicates = sorted({name for name, _ in listed if sum(n == name for n, _ in listed) > 1})
    if duplicates:
        raise ValueError(f"{package}: {', '.join(duplicates)} exported by more than one submodule")
    module.__class__ = _LazyPackage
    module.__dict__["_lazy_exports"] = where
