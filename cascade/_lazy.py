"""Lazy package exports (PEP 562): a name's module is imported when the name is first used.

Serving processes import ``cascade`` and its packages for a few names; the training stack
(scikit-learn, pandas, skl2onnx) must not come with them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, lazy: Mapping[str, str], exported: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``lazy`` maps a name to its module.

    Example::

        _LAZY = {"build_zoo": "cascade.zoo.build"}
        __getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
    """

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # the next lookup finds it directly
        return value

    def __dir__() -> list[str]:
        return sorted(exported)

    return __getattr__, __dir__
